"""Fault plans: fail a share of requests the way AWS does (throttling, 5xx, unprocessed items, latency).

Whether a request fails is drawn from the plan's seed, the request and how many times it was seen: the
same requests fail in every run, whatever the threads and processes sending them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import botocore.session

from devtools.local_aws.limits import AwsRequest

FAULT_KINDS = ("throttle", "server_error", "unprocessed", "latency")
WORKER_SERVICES = frozenset({"s3", "kms", "secretsmanager"})


@dataclass(frozen=True)
class FaultPlan:
    """Fail a share of requests the way AWS does, deterministically for a seed.

    Whether a request fails is a function of the seed, the request (method, path, body) and how many
    times that same request was seen before, not of arrival order: concurrent threads and processes
    do not change which requests fail, and a retry is a fresh draw.

    ``scope`` picks whose calls fail: ``worker`` (S3, KMS, Secrets Manager and DynamoDB calls on the
    ``worker_tables``), ``kcl`` (Kinesis, and DynamoDB calls on any other table: the KCL's lease
    tables), or ``all``. Kinds: ``throttle`` (DynamoDB ProvisionedThroughputExceeded/Throttling,
    Kinesis ProvisionedThroughputExceeded, S3 SlowDown, KMS Throttling), ``server_error`` (HTTP 500 or
    503), ``unprocessed`` (BatchWriteItem applies only part of the batch and returns the rest as
    UnprocessedItems), ``latency`` (the request succeeds after ``latency_ms``). ``ops`` narrows it to
    some operations (e.g. ``PutItem`` on ``worker_tables``: a crash between two writes of a commit).
    """

    rate: float
    scope: str = "worker"
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    latency_ms: int = 200
    worker_tables: frozenset[str] = frozenset()
    ops: frozenset[str] = frozenset()
    """Only these operations (empty: all)."""

    @classmethod
    def parse(cls, spec: str, worker_tables: Iterable[str] = ()) -> FaultPlan:
        """``rate=0.2,scope=worker,kinds=throttle+server_error,seed=7,latency_ms=100``"""
        fields_: dict[str, Any] = {"worker_tables": frozenset(worker_tables)}
        for part in filter(None, spec.split(",")):
            name, _, value = part.partition("=")
            if name == "kinds":
                fields_[name] = tuple(value.split("+"))
            elif name == "ops":
                fields_[name] = frozenset(value.split("+"))
            elif name in ("rate",):
                fields_[name] = float(value)
            elif name in ("seed", "latency_ms"):
                fields_[name] = int(value)
            else:
                fields_[name] = value
        plan = cls(**fields_)
        if (
            not 0 <= plan.rate <= 1
            or plan.scope not in ("worker", "kcl", "all")
            or set(plan.kinds) - set(FAULT_KINDS)
            or plan.ops - _operations()  # a typo would quietly inject nothing
        ):
            raise ValueError(f"bad fault spec {spec!r}")
        return plan

    def draw(self, request: AwsRequest, digest: bytes, occurrence: int) -> Fault | None:
        """The fault for the ``occurrence``-th sighting of the request with ``digest``, if any."""
        rng = random.Random(f"{self.seed}:{digest.hex()}:{occurrence}")  # str seeds hash the same everywhere
        if rng.random() >= self.rate:
            return None
        kinds = [k for k in self.kinds if k != "unprocessed" or request.operation == "BatchWriteItem"]
        if not kinds:
            return None
        return Fault(rng.choice(kinds), rng)

    def applies_to(self, request: AwsRequest) -> bool:
        if self.ops and request.operation not in self.ops:
            return False
        if self.scope == "all":
            return request.service != "unknown"
        if request.service == "dynamodb":
            return (bool(_tables_in(request.body) & self.worker_tables)) == (self.scope == "worker")
        if request.service == "kinesis":
            return self.scope == "kcl"
        return request.service in WORKER_SERVICES and self.scope == "worker"


@functools.cache
def _operations() -> frozenset[str]:
    """Every operation of the services the local AWS serves, from botocore's models."""
    session = botocore.session.get_session()
    return frozenset(
        name
        for service in ("dynamodb", "s3", "kms", "kinesis", "secretsmanager")
        for name in session.get_service_model(service).operation_names
    )


def _tables_in(body: bytes) -> set[str]:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return set()
    tables = set(payload.get("RequestItems", {}))
    for action in payload.get("TransactItems", ()):
        tables |= {item["TableName"] for item in action.values() if "TableName" in item}
    if "TableName" in payload:
        tables.add(payload["TableName"])
    return tables


_THROTTLE_CODES = {
    "dynamodb": ("ProvisionedThroughputExceededException", "ThrottlingException"),
    "kinesis": ("ProvisionedThroughputExceededException",),
    "kms": ("ThrottlingException",),
    "secretsmanager": ("ThrottlingException",),
}


class Fault(NamedTuple):
    kind: str
    rng: random.Random
    """Shapes the failure (which error code, which status), from the same draw."""


def error_response(service: str, kind: str, rng: random.Random) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status, headers and body of an injected failure, in the service's own error format."""
    if kind == "throttle":
        status = "503 Slow Down" if service == "s3" else "400 Bad Request"
        code = (
            "SlowDown"
            if service == "s3"
            else rng.choice(_THROTTLE_CODES.get(service, ("ThrottlingException",)))
        )
    else:
        status = rng.choice(("500 Internal Server Error", "503 Service Unavailable"))
        code = "InternalError" if status.startswith("500") else "ServiceUnavailable"
    if service == "s3":
        xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>"
        return status, [("Content-Type", "application/xml")], xml.encode()
    body = json.dumps({"__type": code, "message": "injected fault"}).encode()
    return status, [("Content-Type", "application/x-amz-json-1.0")], body


def request_digest(environ: dict[str, Any], body: bytes) -> bytes:
    """Identifies a request by method, path, query and body: a retry of it has the same digest."""
    identity = hashlib.blake2b(digest_size=16)
    for part in (
        environ["REQUEST_METHOD"],
        environ.get("PATH_INFO", ""),
        environ.get("QUERY_STRING", ""),
    ):
        identity.update(part.encode("latin-1") + b"\0")
    identity.update(body)
    return identity.digest()
