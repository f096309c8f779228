"""Structured logs: one JSON object per line, on stderr, never a VIN.

Under the MultiLangDaemon, stdout is the KCL protocol and the daemon re-logs a child's stderr as
``ERROR Received error line from subprocess [...]``. So when the launcher tells us where its own
stderr is (``FLEET_LOG_PATH``), record processors write there directly and the lines stay clean JSON.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import IO, Any

import orjson

LOG_PATH_ENV = "FLEET_LOG_PATH"
METRICS_LOGGER = "worker.metrics"
"""Its records carry an EMF document (``extra={"emf": {...}}``), written as the whole line."""

# A VIN-shaped token: 17 VIN characters not embedded in a longer alphanumeric run (so the 32-hex
# pseudoVin, shard ids and sequence numbers pass untouched), in any case.
_VIN_SHAPED = re.compile(r"(?<![A-Za-z0-9])[A-HJ-NPR-Za-hj-npr-z0-9]{17}(?![A-Za-z0-9])")
REDACTED = "<vin-redacted>"


def redact(text: str) -> str:
    return _VIN_SHAPED.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    """``value`` with every VIN-shaped token redacted, as JSON-ready data.

    Anything that is not plain JSON data (an exception, bytes, a path...) is rendered with ``str`` first,
    so what ``orjson`` would render it as has been through the filter too; so has an integer that prints
    as 17 digits.
    """
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return REDACTED if redact(str(value)) != str(value) else value
    if isinstance(value, dict):
        return {redact(str(k)): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact(str(value))


class JsonLineFormatter(logging.Formatter):
    """Renders ``log.info("event", extra={"fields": {...}})`` as one redacted JSON line (and a metrics
    record as its EMF document)."""

    def format(self, record: logging.LogRecord) -> str:
        emf = getattr(record, "emf", None)
        if isinstance(emf, dict):
            return orjson.dumps(_redact_value(emf)).decode()
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(_redact_value(line)).decode()


def log_stream() -> IO[str]:
    """The launcher's stderr when running under it, else our own stderr. Never stdout."""
    path = os.environ.get(LOG_PATH_ENV)
    if path:
        try:
            return open(path, "a", buffering=1, encoding="utf-8")
        except OSError:
            pass
    return sys.stderr


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or log_stream())
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(METRICS_LOGGER).setLevel(logging.INFO)  # metrics whatever the log level
    for noisy in ("botocore", "boto3", "urllib3", "hypercorn", "werkzeug", "moto"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    logger.log(level, name, extra={"fields": fields})
