"""Embedded local AWS: moto's server app behind hypercorn, on loopback only.

The KCL's Kinesis client speaks HTTP/2 only; hypercorn serves HTTP/1.1 and h2c (prior knowledge) on one
port, so boto3, the Java KCL and curl all talk to the same in-process moto backends.

Requests pass through ``LocalAwsApp``, which serializes them (DynamoDB conditional writes must be atomic,
as they are on AWS), counts them per service and operation, refuses what AWS refuses for a documented limit
(``limits``: moto alone accepts it, production would not), fails some on purpose (``faults``), and tallies
what writes store per table and bucket (``billing``: items, bytes, and DynamoDB write units as AWS bills
them), so a benchmark can report the cost of a record. moto itself, as we patch it, is ``moto_patches``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from devtools.local_aws.billing import Written, write_factor, write_units, written_items, written_keys
from devtools.local_aws.faults import Fault, FaultPlan, error_response, request_digest
from devtools.local_aws.limits import (
    AwsRequest,
    KeySchema,
    LimitExceeded,
    check,
    check_item_size,
    check_nesting,
)
from devtools.local_aws.moto_patches import StartResponse, StoredItems, WsgiApp, moto_app

__all__ = ["FaultPlan", "LocalAws", "LocalAwsApp", "identify"]


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
                return self._respond(start_response, *error_response(request.service, fault.kind, fault.rng))
            if kind == "unprocessed" and stored is not None:
                return self._partially(request, environ, stored, start_response)
            return self._respond(start_response, *self._serve(request, environ, stored))

    def _draw_fault(self, request: AwsRequest, environ: dict[str, Any]) -> Fault | None:
        """The fault to inject, if any, with the generator that shapes it (which error, which status)."""
        plan = self.fault_plan
        if plan is None or not plan.applies_to(request):
            return None
        digest = request_digest(environ, request.body)
        with self._lock:
            if len(self._seen) > 100_000:
                self._seen.clear()  # bounded memory on long runs; only repeats of very old requests differ
            occurrence = self._seen[digest]
            self._seen[digest] += 1
        fault = plan.draw(request, digest, occurrence)
        if fault is not None:
            with self._lock:
                self.faults[(request.service, request.operation, fault.kind)] += 1
        return fault

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
        if stored is None:
            self._tally_objects(request, environ, stored=status.startswith("200"))
        if stored is None or not keys:
            return status, headers, payload
        if request.operation == "UpdateItem" and status.startswith("200"):
            refusal = refuse_updated_item(stored.get(*keys[0]))
            if refusal is not None:
                stored.restore(*keys[0], undo)
                self.refused[(request.service, request.operation, refusal.reason)] += 1
                return _refusal_response(refusal)
        # AWS bills a failed condition as a write of the item as it is (a cancelled transaction too:
        # each item it names); other errors bill nothing.
        if status.startswith("200") or any(
            failure in payload
            for failure in (b"ConditionalCheckFailedException", b"TransactionCanceledException")
        ):
            after = [stored.size(table, key) for table, key in keys]
            self._tally_items(keys, before, after, write_factor(request.operation))
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
        self, keys: list[tuple[str, dict[str, Any]]], before: list[int], after: list[int], factor: int = 1
    ) -> None:
        """Bill DynamoDB items as AWS does (``write_units``, times ``factor`` in a transaction); ``bytes``
        is the billed size of each."""
        for (table, _), was, now in zip(keys, before, after, strict=True):
            tally = self.written.setdefault(("dynamodb", table), Written())
            tally.items += 1
            tally.bytes += max(was, now)
            tally.units += factor * write_units(was, now)
        for table in {table for table, _ in keys}:
            self.written[("dynamodb", table)].requests += 1

    def _tally_objects(self, request: AwsRequest, environ: dict[str, Any], stored: bool) -> None:
        """Account an S3 PUT: a request billed, an object stored only if it was (a conditional put refused
        with 412 stores nothing)."""
        for bucket, size in written_items(request, environ):
            tally = self.written.setdefault((request.service, bucket), Written())
            tally.requests += 1
            tally.units += 1
            if stored:
                tally.items += 1
                tally.bytes += size

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.written.clear()
            self.busy.clear()
            self.faults.clear()
            self.refused.clear()


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
