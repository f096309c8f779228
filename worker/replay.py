"""Put a fixture stream (JSONL) into Kinesis in order, the way producers do: partition key = VIN.

Each line is one record. A JSON object is sent as its compact JSON bytes. A line
``{"_raw_b64": "...", "_partition_key": "..."}`` sends arbitrary bytes (bad input, protobuf).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from processors.errors import OperatorError

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import PutRecordsRequestEntryTypeDef

log = logging.getLogger(__name__)

MAX_RECORDS_PER_PUT = 500
MAX_BYTES_PER_PUT = 5 * 1024 * 1024
NO_PARTITION_KEY = "unknown-vehicle"


@dataclass(frozen=True, slots=True)
class StreamEntry:
    data: bytes
    partition_key: str


def parse_line(line: str | bytes) -> StreamEntry:
    obj = orjson.loads(line)
    if isinstance(obj, dict) and "_raw_b64" in obj:
        return StreamEntry(
            base64.b64decode(obj["_raw_b64"], validate=True),
            str(obj.get("_partition_key") or NO_PARTITION_KEY),
        )
    vin = obj.get("vin") if isinstance(obj, dict) else None
    key = vin.strip() if isinstance(vin, str) and vin.strip() else NO_PARTITION_KEY
    return StreamEntry(orjson.dumps(obj), key)


class BadFixtureLine(OperatorError):
    """A fixture line that is neither a JSON object nor a valid ``_raw_b64`` line."""

    def __init__(self, path: Path, line_number: int, why: str) -> None:
        super().__init__(f"{path}:{line_number}: {why}")


def read_fixture(path: Path) -> Iterator[StreamEntry]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_line(line)
            except orjson.JSONDecodeError:
                raise BadFixtureLine(path, number, "not a JSON line") from None
            except (ValueError, TypeError):  # binascii.Error, or non-ASCII text, is a ValueError
                raise BadFixtureLine(path, number, "_raw_b64 is not base64") from None


@dataclass
class ReplayStats:
    records: int = 0
    requests: int = 0
    resent: int = 0
    last_sequence: dict[str, str] = field(default_factory=dict)
    """Shard id -> sequence number of the last record this replay put there."""


def _chunks(entries: Iterable[StreamEntry], max_records: int) -> Iterator[list[StreamEntry]]:
    chunk: list[StreamEntry] = []
    size = 0
    for entry in entries:
        entry_size = len(entry.data) + len(entry.partition_key.encode())
        if chunk and (len(chunk) == max_records or size + entry_size > MAX_BYTES_PER_PUT):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += entry_size
    if chunk:
        yield chunk


def replay(
    kinesis: KinesisClient,
    stream_name: str,
    entries: Iterable[StreamEntry],
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayStats:
    """PutRecords in order. On a partial failure everything from the first failed entry is sent again,
    so one key's records never overtake each other (later successes may arrive twice: at-least-once).
    ``on_progress`` is called with the number of records of each chunk once it is in the stream."""
    stats = ReplayStats()
    started = time.monotonic()
    # A paced replay sends small requests (about four a second) rather than bursts of 500.
    max_records = MAX_RECORDS_PER_PUT if not rate else max(1, min(MAX_RECORDS_PER_PUT, int(rate / 4)))
    for chunk in _chunks(entries, max_records):
        pending = chunk
        attempt = 0
        while pending:
            request: list[PutRecordsRequestEntryTypeDef] = [
                {"Data": e.data, "PartitionKey": e.partition_key} for e in pending
            ]
            response = kinesis.put_records(StreamName=stream_name, Records=request)
            stats.requests += 1
            results = response["Records"]
            failed = next((i for i, r in enumerate(results) if "ErrorCode" in r), None)
            for result in results[: len(results) if failed is None else failed]:
                stats.last_sequence[result["ShardId"]] = result["SequenceNumber"]
            if failed is None:
                break
            stats.resent += len(pending) - failed
            pending = pending[failed:]
            attempt += 1
            time.sleep(min(2.0, 0.05 * 2**attempt))
        stats.records += len(chunk)
        if on_progress is not None:
            on_progress(len(chunk))
        if rate:
            ahead = stats.records / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return stats
