"""Embedded local AWS: moto's server app behind hypercorn, on loopback only.

The KCL's Kinesis client speaks HTTP/2 only; hypercorn serves HTTP/1.1 and h2c (prior knowledge) on one
port, so boto3, the Java KCL and curl all talk to the same in-process moto backends.

Requests pass through ``LocalAwsApp``, which serializes them (DynamoDB conditional writes must be atomic,
as they are on AWS) and counts them per service and operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class AwsRequest:
    service: str
    operation: str
    body: bytes


def identify(environ: dict[str, Any], body: bytes) -> AwsRequest:
    """Service and operation of a signed AWS request, from its headers (JSON APIs) or method (S3)."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/") if "Credential=" in auth else []
    service = scope[3] if len(scope) > 3 else "unknown"
    if target:
        return AwsRequest(service, target.rsplit(".", 1)[-1], body)
    if service == "s3":
        return AwsRequest(service, _s3_operation(environ), body)
    return AwsRequest(service, environ.get("REQUEST_METHOD", "?"), body)


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


@dataclass
class LocalAwsApp:
    """WSGI middleware around moto: one request at a time, each counted."""

    app: WsgiApp
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        request = identify(environ, body)
        with self._lock:
            if request.service != "unknown":
                self.requests[(request.service, request.operation)] += 1
            # Materialize the response inside the lock: moto computes lazily in some paths. hypercorn
            # only starts a response on its first chunk, so an empty body (HEAD) still needs one.
            return list(self.app(environ, start_response)) or [b""]

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()


def moto_app() -> WsgiApp:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app: WsgiApp = DomainDispatcherApplication(create_backend_app)
    return app


class LocalAws:
    """An in-process local AWS bound to 127.0.0.1. Use as a context manager, or ``start``/``stop``."""

    def __init__(self, port: int = 0) -> None:
        self.app = LocalAwsApp(moto_app())
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


@contextlib.contextmanager
def running(port: int = 0) -> Iterator[LocalAws]:
    with LocalAws(port) as aws:
        yield aws
