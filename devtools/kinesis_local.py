"""kinesis-local (kinesis-mock's npm build): a local Kinesis that serves ``SubscribeToShard``, for FANOUT.

The embedded local AWS (``devtools.local_aws``, moto) serves Kinesis to the polling daemon but no
``SubscribeToShard`` event stream, so the fan-out daemon reads from this one instead, with DynamoDB, S3
and the rest still the local AWS's (``AWS_ENDPOINT_URL_KINESIS`` beside ``AWS_ENDPOINT_URL``).

What it takes to run it:
- the plain port (h2c, HTTP/2 with prior knowledge): its TLS port needs ALPN, which the KCL's Kinesis
  client does not send (issue 23's finding);
- ``KINESIS_MOCK_CERT_PATH`` pointing at the certificate bundled in the package (``server.json``): the
  TLS listener always starts, and otherwise looks for it in the working directory and exits;
- SIGTERM stops an idle one, but not one with a ``SubscribeToShard`` connection open (still running 15 s
  after it, here): it is stopped with SIGKILL.

The package is pinned in ``devtools/node/package-lock.json``; ``make`` installs it (``npm ci``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

NODE_DIR = Path(__file__).parent / "node"
PACKAGE = NODE_DIR / "node_modules" / "kinesis-local"


class KinesisLocalMissing(RuntimeError):
    """The npm package is not installed (``make`` runs ``npm ci`` in devtools/node)."""


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


class KinesisLocal:
    """One kinesis-local process on loopback ports of its own. Use as a context manager, or
    ``start``/``stop``. Its log (requests refused, subscriptions) goes to ``log_path``."""

    def __init__(self, log_path: Path, region: str = "us-east-1", log_level: str = "INFO") -> None:
        if not (PACKAGE / "main.js").exists():
            raise KinesisLocalMissing(
                f"kinesis-local is not installed in {NODE_DIR}: run `make venv` (npm ci; needs Node 20)"
            )
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._region = region
        self._log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> KinesisLocal:
        environ = {
            **os.environ,
            "KINESIS_MOCK_PLAIN_PORT": str(self.port),
            "KINESIS_MOCK_TLS_PORT": str(_free_port()),  # unused, but it always listens
            "KINESIS_MOCK_CERT_PATH": str(PACKAGE / "server.json"),
            "AWS_REGION": self._region,
            "LOG_LEVEL": self._log_level,
            "CREATE_STREAM_DURATION": "100ms",
            "REGISTER_STREAM_CONSUMER_DURATION": "100ms",
        }
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            ["node", str(PACKAGE / "main.js")],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C is ours to handle; we SIGKILL it ourselves
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"kinesis-local exited at start: see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kinesis-local did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)  # SIGTERM does not stop it mid-subscription
            self._process.wait(10)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> KinesisLocal:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
