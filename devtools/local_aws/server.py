"""Embedded local AWS: moto's server app behind hypercorn, on loopback only.

The KCL's Kinesis client speaks HTTP/2 only; hypercorn serves HTTP/1.1 and h2c (prior knowledge) on one
port, so boto3, the Java KCL and curl all talk to the same in-process moto backends.

Requests pass through ``LocalAwsApp``, which serializes them (DynamoDB conditional writes must be atomic,
as they are on AWS), counts them per service and operation, refuses what AWS refuses for a documented limit
(``devtools.local_aws.limits``: moto alone accepts it, production would not), and tallies what writes store
per table and bucket (items, bytes, and DynamoDB write units as AWS bills them: the whole item, before or
after the write, whichever is larger), so a benchmark can report the cost of a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import io
import json
import math
import os
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import botocore.session

from devtools.local_aws.limits import (
    AwsRequest,
    KeySchema,
    KeySchemaOf,
    LimitExceeded,
    attribute_size,
    check,
    check_item_size,
    check_nesting,
    item_size,
)

__all__ = [  # names the limits module now defines, kept importable from here
    "AwsRequest",
    "attribute_size",
    "item_size",
]

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def identify(environ: dict[str, Any], body: bytes) -> AwsRequest:
    """Service and operation of a signed AWS request, from its headers (JSON APIs) or method (S3)."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/") if "Credential=" in auth else []
    service = scope[3] if len(scope) > 3 else "unknown"
    method, path = str(environ.get("REQUEST_METHOD", "?")), str(environ.get("PATH_INFO", ""))
    if target:
        return AwsRequest(service, target.rsplit(".", 1)[-1], body, method, path)
    if service == "s3":
        return AwsRequest(service, _s3_operation(environ), body, method, path)
    return AwsRequest(service, method, body, method, path)


def _s3_operation(environ: dict[str, Any]) -> str:
    method = str(environ.get("REQUEST_METHOD", "GET"))
    query = str(environ.get("QUERY_STRING", ""))
    has_key = "/" in environ.get("PATH_INFO", "/").lstrip("/")
    if "tagging" in query:
        return {"PUT": "PutObjectTagging", "GET": "GetObjectTagging"}.get(method, "DeleteObjectTagging")
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if not has_key:
        return {"GET": "ListObjectsV2", "PUT": "CreateBucket", "HEAD": "HeadBucket"}.get(method, method)
    return {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, method
    )


@dataclass(slots=True)
class Written:
    """What write requests stored in one table or bucket, and what AWS would bill for it."""

    requests: int = 0
    items: int = 0
    bytes: int = 0
    """DynamoDB: the billed size of each item (by DynamoDB's rules, the whole item before or after the write,
    whichever is larger); S3: object bodies."""
    units: int = 0
    """DynamoDB: write capacity units as AWS bills them (``write_units``); S3: PUT requests."""


DYNAMODB_WRITE_UNIT = 1024
DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"})
"""The writes billed per item. TransactWriteItems (AWS bills it double) is not: nothing of ours sends it."""


def write_units(before: int, after: int) -> int:
    """What DynamoDB bills one item written: the larger of its whole size before and after the write,
    one unit per started KB, at least one (a delete of nothing and a failed condition included)."""
    return max(1, math.ceil(max(before, after) / DYNAMODB_WRITE_UNIT))


def written_keys(request: AwsRequest, key_schema: KeySchemaOf) -> list[tuple[str, dict[str, Any]]]:
    """(table, key) of every item a DynamoDB write request may change; [] for other requests and for
    tables that do not exist (moto refuses those, and AWS bills nothing for them)."""
    if request.service != "dynamodb" or request.operation not in DYNAMODB_WRITES:
        return []
    payload = json.loads(request.body or b"{}")
    named: list[tuple[str, dict[str, Any]]] = []
    if request.operation == "PutItem":
        named.append((payload.get("TableName", ""), payload.get("Item", {})))
    elif request.operation in ("UpdateItem", "DeleteItem"):
        named.append((payload.get("TableName", ""), payload.get("Key", {})))
    for table, writes in payload.get("RequestItems", {}).items():
        for write in writes:
            named.append(
                (
                    table,
                    write["PutRequest"]["Item"] if "PutRequest" in write else write["DeleteRequest"]["Key"],
                )
            )
    keys = []
    for table, item in named:
        schema = key_schema(table)
        if schema is not None:
            keys.append((table, {name: item[name] for name in schema if name is not None and name in item}))
    return keys


def written_items(request: AwsRequest, environ: dict[str, Any]) -> list[tuple[str, int]]:
    """(bucket, bytes) of the object an S3 PutObject stores; [] for other requests. DynamoDB writes are
    billed from the stored items before and after (``LocalAwsApp``), which a request alone cannot tell."""
    if request.service == "s3" and request.operation == "PutObject":
        bucket = urllib.parse.unquote(str(environ.get("PATH_INFO", "/"))).lstrip("/").split("/", 1)[0]
        decoded = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH")  # aws-chunked bodies carry framing
        return [(bucket, int(decoded) if decoded else len(request.body))]
    return []


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


def _error_response(service: str, kind: str, rng: random.Random) -> tuple[str, list[tuple[str, str]], bytes]:
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


def _refusal_response(refusal: LimitExceeded) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status, headers and body of a refused request, in the service's own error format."""
    status = f"{refusal.status} Bad Request"
    request_id = [("x-amzn-RequestId", str(uuid.uuid4()))]
    if refusal.service == "s3":
        xml = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{refusal.code}</Code>"
            f"<Message>{refusal.message}</Message></Error>"
        )
        return status, [("Content-Type", "application/xml"), *request_id], xml.encode()
    content_type = (
        "application/x-amz-json-1.1" if refusal.service == "kinesis" else "application/x-amz-json-1.0"
    )
    body = json.dumps({"__type": refusal.code, "message": refusal.message}).encode()
    return status, [("Content-Type", content_type), *request_id], body


def _no_tables(_table: str) -> KeySchema | None:
    return None


class StoredItems:
    """The items moto holds for one request's account and region: read to bill a write by the whole item
    before and after it, and written only to undo an update DynamoDB would have refused. Use it only
    while holding ``LocalAwsApp``'s lock: requests are serialized, so nothing changes in between."""

    def __init__(self, environ: dict[str, Any]) -> None:
        from moto.dynamodb.models import dynamodb_backends
        from moto.iam.models import get_account_id_from

        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/") if "Credential=" in auth else []
        region = scope[2] if len(scope) > 2 else "us-east-1"
        # The account moto itself picks for this request (moto.core.responses.get_current_account).
        account = (
            os.environ.get("MOTO_ACCOUNT_ID")
            or environ.get("HTTP_X_MOTO_ACCOUNT_ID")
            or get_account_id_from(scope[0] if scope else "")
        )
        self._backend = dynamodb_backends[account][region]

    def key_schema(self, table: str) -> KeySchema | None:
        found = self._backend.tables.get(table)
        return None if found is None else (found.hash_key_attr, found.range_key_attr)

    def _locate(self, table: str, key: dict[str, Any]) -> tuple[Any, Any, Any] | None:
        """moto's table and the moto keys of an item (None if the key does not fit the table)."""
        from moto.dynamodb.models.dynamo_type import DynamoType

        found = self._backend.tables.get(table)
        if found is None or found.hash_key_attr not in key:
            return None
        if found.range_key_attr is not None and found.range_key_attr not in key:
            return None
        sort = DynamoType(key[found.range_key_attr]) if found.range_key_attr is not None else None
        return found, DynamoType(key[found.hash_key_attr]), sort

    def get(self, table: str, key: dict[str, Any]) -> Any:
        """moto's Item for a key, or None. Read with ``.get``: moto's own lookup inserts empty buckets."""
        located = self._locate(table, key)
        if located is None:
            return None
        found, partition, sort = located
        stored = found.items.get(partition)
        return stored.get(sort) if sort is not None and stored is not None else stored

    def size(self, table: str, key: dict[str, Any]) -> int:
        """The whole stored item's size by DynamoDB's rules (0 if there is none)."""
        stored = self.get(table, key)
        return 0 if stored is None else item_size(stored.to_json()["Attributes"])

    def restore(self, table: str, key: dict[str, Any], previous: Any) -> None:
        """Put back the item as it was before a write (``previous`` None: there was none)."""
        located = self._locate(table, key)
        if located is None:
            return
        found, partition, sort = located
        if sort is None:
            if previous is None:
                found.items.pop(partition, None)
            else:
                found.items[partition] = previous
        elif previous is None:
            found.items.get(partition, {}).pop(sort, None)
        else:
            found.items[partition][sort] = previous


def refuse_updated_item(stored: Any) -> LimitExceeded | None:
    """The limits on the item an UpdateItem left (moto applied it): DynamoDB refuses the update instead."""
    if stored is None:
        return None
    attributes = stored.to_json()["Attributes"]
    return check_nesting(attributes.values()) or check_item_size(attributes, update=True)


@dataclass
class LocalAwsApp:
    """WSGI middleware around moto: one request at a time, each counted, some failed on purpose, and
    every request AWS would refuse for a documented limit refused (``devtools.local_aws.limits``)."""

    app: WsgiApp
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(service, operation) -> requests served, refused and failed ones included: see ``operations_seen``."""
    written: dict[tuple[str, str], Written] = field(default_factory=dict)
    """(service, table or bucket) -> what write requests stored there and what AWS bills for them
    (injected failures and refused requests store and bill nothing)."""
    faults: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    refused: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(service, operation, reason) -> requests refused for an AWS limit."""
    busy: dict[tuple[str, str], float] = field(default_factory=dict)
    """Seconds the backends spent serving each (service, operation): where an emulated run's time goes."""
    fault_plan: FaultPlan | None = None
    _seen: Counter[bytes] = field(default_factory=Counter)
    """Digest of a request -> times seen while the plan was on (the draw for its next occurrence)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, plan: FaultPlan | None) -> None:
        """Start (or, with None, stop) injecting faults."""
        with self._lock:
            self.fault_plan = plan
            self._seen.clear()

    def operations_seen(self) -> Counter[tuple[str, str]]:
        """Every (SigV4 service, operation) asked of the local AWS since the last reset, refused and
        failed requests included (IAM authorizes a request before it is validated): a copy."""
        with self._lock:
            return Counter(self.requests)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        request = identify(environ, body)
        with self._lock:
            stored = StoredItems(environ) if request.service == "dynamodb" else None
            if request.service != "unknown":
                self.requests[(request.service, request.operation)] += 1
            # Before faults: a refused request is refused whatever the draw, as on AWS.
            refusal = check(request, stored.key_schema if stored else _no_tables)
            if refusal is not None:
                self.refused[(request.service, request.operation, refusal.reason)] += 1
        if refusal is not None:
            return self._respond(start_response, *_refusal_response(refusal))
        fault = self._draw_fault(request, environ)
        kind = fault.kind if fault else None
        if kind == "latency":
            time.sleep(self.fault_plan.latency_ms / 1000 if self.fault_plan else 0)
        with self._lock:
            if fault and fault.kind in ("throttle", "server_error"):
                return self._respond(start_response, *_error_response(request.service, fault.kind, fault.rng))
            if kind == "unprocessed" and stored is not None:
                return self._partially(request, environ, stored, start_response)
            return self._respond(start_response, *self._serve(request, environ, stored))

    def _draw_fault(self, request: AwsRequest, environ: dict[str, Any]) -> Fault | None:
        """The fault to inject, if any, with the generator that shapes it (which error, which status)."""
        plan = self.fault_plan
        if plan is None or not plan.applies_to(request):
            return None
        identity = hashlib.blake2b(digest_size=16)
        for part in (
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
        ):
            identity.update(part.encode("latin-1") + b"\0")
        identity.update(request.body)
        digest = identity.digest()
        with self._lock:
            if len(self._seen) > 100_000:
                self._seen.clear()  # bounded memory on long runs; only repeats of very old requests differ
            occurrence = self._seen[digest]
            self._seen[digest] += 1
        rng = random.Random(f"{plan.seed}:{digest.hex()}:{occurrence}")  # str seeds hash the same everywhere
        if rng.random() >= plan.rate:
            return None
        kinds = [k for k in plan.kinds if k != "unprocessed" or request.operation == "BatchWriteItem"]
        if not kinds:
            return None
        kind = rng.choice(kinds)
        with self._lock:
            self.faults[(request.service, request.operation, kind)] += 1
        return Fault(kind, rng)

    @staticmethod
    def _respond(
        start_response: StartResponse, status: str, headers: list[tuple[str, str]], payload: bytes
    ) -> Iterable[bytes]:
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers = [*headers, ("Content-Length", str(len(payload)))]  # moto's stays: a HEAD has no body
        start_response(status, headers)
        # hypercorn only starts a response on its first chunk, so an empty body (HEAD) still needs one.
        return [payload]

    def _serve(
        self, request: AwsRequest, environ: dict[str, Any], stored: StoredItems | None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Have moto serve a request (called under the lock) and account what it wrote."""
        keys = written_keys(request, stored.key_schema) if stored is not None else []
        before = [stored.size(table, key) for table, key in keys] if stored is not None else []
        undo = (
            copy.deepcopy(stored.get(*keys[0]))  # moto updates its item in place
            if stored is not None and keys and request.operation == "UpdateItem"
            else None
        )
        if stored is None:
            self._tally_objects(request, environ)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], *_: object) -> None:
            captured.update(status=status, headers=headers)

        started = time.perf_counter()
        # Materialize the response inside the lock: moto computes lazily in some paths.
        payload = b"".join(self.app(environ, capture))
        operation = (request.service, request.operation)
        self.busy[operation] = self.busy.get(operation, 0.0) + time.perf_counter() - started
        status: str = captured.get("status", "200 OK")
        headers: list[tuple[str, str]] = list(captured.get("headers", []))
        if stored is None or not keys:
            return status, headers, payload
        if request.operation == "UpdateItem" and status.startswith("200"):
            refusal = refuse_updated_item(stored.get(*keys[0]))
            if refusal is not None:
                stored.restore(*keys[0], undo)
                self.refused[(request.service, request.operation, refusal.reason)] += 1
                return _refusal_response(refusal)
        # AWS bills a failed condition as a write of the item as it is; other errors bill nothing.
        if status.startswith("200") or b"ConditionalCheckFailedException" in payload:
            after = [stored.size(table, key) for table, key in keys]
            self._tally_items(keys, before, after)
        return status, headers, payload

    def _partially(
        self, request: AwsRequest, environ: dict[str, Any], stored: StoredItems, start_response: StartResponse
    ) -> Iterable[bytes]:
        """BatchWriteItem that writes the first half of each table's items and returns the rest."""
        payload = json.loads(request.body)
        unprocessed = {}
        for table, items in payload["RequestItems"].items():
            keep = (len(items) + 1) // 2
            payload["RequestItems"][table], rest = items[:keep], items[keep:]
            if rest:
                unprocessed[table] = rest
        forwarded = json.dumps(payload).encode()
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(forwarded), str(len(forwarded))
        status, _, response = self._serve(
            AwsRequest("dynamodb", "BatchWriteItem", forwarded, request.method, request.path), environ, stored
        )
        result = json.loads(response or b"{}")
        result["UnprocessedItems"] = unprocessed
        return self._respond(
            start_response,
            status,
            [("Content-Type", "application/x-amz-json-1.0")],
            json.dumps(result).encode(),
        )

    def _tally_items(
        self, keys: list[tuple[str, dict[str, Any]]], before: list[int], after: list[int]
    ) -> None:
        """Bill DynamoDB items as AWS does (``write_units``); ``bytes`` is the billed size of each."""
        for (table, _), was, now in zip(keys, before, after, strict=True):
            tally = self.written.setdefault(("dynamodb", table), Written())
            tally.items += 1
            tally.bytes += max(was, now)
            tally.units += write_units(was, now)
        for table in {table for table, _ in keys}:
            self.written[("dynamodb", table)].requests += 1

    def _tally_objects(self, request: AwsRequest, environ: dict[str, Any]) -> None:
        """Account an S3 object stored (one PUT request each)."""
        for bucket, size in written_items(request, environ):
            tally = self.written.setdefault((request.service, bucket), Written())
            tally.requests += 1
            tally.items += 1
            tally.bytes += size
            tally.units += 1

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.written.clear()
            self.busy.clear()
            self.faults.clear()
            self.refused.clear()


def moto_app() -> WsgiApp:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    _reshard_like_kinesis()
    _leave_item_size_to_our_limits()
    app: WsgiApp = DomainDispatcherApplication(create_backend_app)
    return app


def _leave_item_size_to_our_limits() -> None:
    """moto refuses items over 405,000 bytes as it measures them (a number as its text), which is
    neither DynamoDB's limit nor its rules, and it checks on every attribute set (quadratic in the
    attributes). ``check`` and ``refuse_updated_item`` enforce DynamoDB's 400 KB by DynamoDB's rules."""
    from moto.dynamodb.models import dynamo_type

    setattr(dynamo_type.LimitedSizeDict, "__setitem__", dict.__setitem__)  # noqa: B010 - patching moto


_resharding_patched = False


def _reshard_like_kinesis() -> None:
    """Make moto's resharding behave like Kinesis, which the KCL depends on (moto 5 does not):

    - a split closes the parent and keeps its records there (moto re-puts them into the children);
    - records are routed to *open* shards only (moto keeps routing to the closed parent);
    - reading a closed shard to its end returns no next iterator and the ``ChildShards``, which is how
      the KCL learns the shard ended (moto returns an iterator forever: shardEnded never comes).
    """
    global _resharding_patched  # noqa: PLW0603 - patch moto's classes once per process
    if _resharding_patched:
        return
    from moto.kinesis import models, responses
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.utils import decompose_shard_iterator

    def shard_for_key(self: Any, partition_key: str, explicit_hash_key: str | None) -> Any:
        if explicit_hash_key:
            key = int(explicit_hash_key)
        else:
            key = int(hashlib.md5(partition_key.encode("utf-8")).hexdigest(), 16)  # noqa: S324 - Kinesis' hash
        return next(
            (s for s in self.shards.values() if s.is_open and s.starting_hash <= key <= s.ending_hash), None
        )

    def split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
        shard = self.shards[shard_to_split]
        boundary = int(new_starting_hash_key)
        if not shard.is_open or not shard.starting_hash < boundary <= shard.ending_hash:
            raise InvalidArgumentError(f"cannot split {shard_to_split} at {new_starting_hash_key}")
        last = max(s._shard_id for s in self.shards.values())
        for offset, (low, high) in enumerate(
            ((shard.starting_hash, boundary - 1), (boundary, shard.ending_hash))
        ):
            child = models.Shard(
                last + 1 + offset, starting_hash=low, ending_hash=high, parent=shard.shard_id
            )
            self.shards[child.shard_id] = child
        shard.is_open = False

    read = responses.KinesisResponse.get_records

    def get_records(self: Any) -> Any:
        result = read(self)
        body: dict[str, Any] = result.result  # type: ignore[assignment]
        stream_name, shard_id, last = decompose_shard_iterator(body["NextShardIterator"])
        stream = self.kinesis_backend.describe_stream(
            stream_arn=self._get_param("StreamARN"), stream_name=stream_name
        )
        shard = stream.get_shard(shard_id)
        if not shard.is_open and int(last) >= shard.get_max_sequence_number():
            del body["NextShardIterator"]
            body["ChildShards"] = [
                {
                    "ShardId": child.shard_id,
                    "ParentShards": [shard_id],
                    "HashKeyRange": {
                        "StartingHashKey": str(child.starting_hash),
                        "EndingHashKey": str(child.ending_hash),
                    },
                }
                for child in stream.shards.values()
                if child.parent == shard_id
            ]
        return result

    setattr(models.Stream, "get_shard_for_key", shard_for_key)  # noqa: B010 - monkeypatching moto
    setattr(models.Stream, "split_shard", split_shard)  # noqa: B010
    setattr(responses.KinesisResponse, "get_records", get_records)  # noqa: B010
    _resharding_patched = True


def _quiet_on_cancel(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Connections still open at shutdown are cancelled: expected, not worth a traceback on stderr."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


class LocalAws:
    """An in-process local AWS bound to 127.0.0.1. Use as a context manager, or ``start``/``stop``."""

    def __init__(self, port: int = 0, faults: FaultPlan | None = None) -> None:
        self.app = LocalAwsApp(moto_app())
        self.app.inject(faults)
        self._socket = socket.create_server(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> LocalAws:
        self._thread = threading.Thread(target=self._serve, name="local-aws", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("local AWS did not start")
        return self

    def _serve(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"fd://{self._socket.fileno()}"]
        config.accesslog = None
        config.errorlog = None
        config.keep_alive_timeout = 75
        config.h2_max_concurrent_streams = 1000
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_on_cancel)
        self._stopping = asyncio.Event()
        self._loop.call_soon(self._ready.set)
        stopping = self._stopping
        self._loop.run_until_complete(serve(self.app, config, shutdown_trigger=stopping.wait, mode="wsgi"))

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self._socket.close()

    def serve_until_interrupted(self) -> None:
        """Block until Ctrl-C (the server runs in its own thread meanwhile)."""
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)

    def reset(self) -> None:
        """Forget every resource (moto's reset API) and the request counts."""
        url = f"{self.endpoint}/moto-api/reset"  # always http://127.0.0.1
        request = urllib.request.Request(url, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass
        self.app.reset_counts()

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
