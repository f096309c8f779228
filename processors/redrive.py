"""Redrive planning: which PutRecords requests put dead letters back so that each partition key's records
reach the stream in their original order, and whether a dead letter is the record the stream still holds
at its position (``verifies``). Pure; the S3, KMS and Kinesis calls are in ``worker.redrive``.

PutRecords does not order the records of one request among themselves (its entries may land in any
order, and a partial failure fails some and not others), so a request holds at most one record per
partition key: a key's next record waits for the next request, after the previous one was accepted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_RECORDS_PER_PUT = 500
MAX_BYTES_PER_PUT = 5 * 1024 * 1024
"""PutRecords' limits: 500 entries, 5 MiB of data and partition keys."""


@dataclass(frozen=True, slots=True)
class Redrivable:
    """A decrypted dead letter on its way back. ``partition_key`` is a VIN: never logged."""

    object_key: str
    reason: str
    data: bytes = field(repr=False)
    partition_key: str = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data) + len(self.partition_key.encode())


class PutPlanner:
    """Records in stream order in, PutRecords requests out: each of at most ``max_records`` entries and
    ``max_bytes``, at most one entry per partition key, a key's entries in the order they came.

    Holds at most about ``2 x max_records`` records or ``max_bytes`` (``ready`` says when to ``take``), so
    a redrive's memory does not grow with the number of dead letters. A record whose put failed is handed
    back with ``put_back``: it goes first again, ahead of its key's later records, which were held back.
    """

    def __init__(self, max_records: int = MAX_RECORDS_PER_PUT, max_bytes: int = MAX_BYTES_PER_PUT) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._queue: deque[Redrivable] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, record: Redrivable) -> None:
        self._queue.append(record)
        self._bytes += record.size

    def ready(self) -> bool:
        """Enough is held to fill a request even when one key has many records waiting: take one."""
        return len(self._queue) >= 2 * self._max_records or self._bytes >= self._max_bytes

    def take(self) -> list[Redrivable]:
        """The next request: the first record of each key, in order, within the limits (never empty while
        anything is held). The rest stay, in order."""
        request: list[Redrivable] = []
        seen: set[str] = set()  # a key whose first held record is not taken waits whole
        size = 0
        rest: deque[Redrivable] = deque()
        for record in self._queue:
            first = record.partition_key not in seen
            seen.add(record.partition_key)
            fits = len(request) < self._max_records and (not request or size + record.size <= self._max_bytes)
            if first and fits:
                request.append(record)
                size += record.size
            else:
                rest.append(record)
        self._queue = rest
        self._bytes -= size
        return request

    def put_back(self, failed: Iterable[Redrivable]) -> None:
        """Records of a request PutRecords did not accept: first again, in their order. (No later record
        of their keys was sent: a request holds one record per key.)"""
        failed = list(failed)
        self._queue.extendleft(reversed(failed))
        self._bytes += sum(record.size for record in failed)


KPL_MAGIC = bytes.fromhex("f3899ac2")
"""The first bytes of a KPL aggregated record (then a protobuf ``AggregatedRecord``, then its MD5)."""


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(buf: bytes) -> Iterable[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes."""
    at = 0
    while at < len(buf):
        tag, at = _varint(buf, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, at = _varint(buf, at)
            yield number, value
        elif wire == 2:
            length, at = _varint(buf, at)
            if at + length > len(buf):
                raise ValueError("truncated field")
            yield number, buf[at : at + length]
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


def kpl_records(data: bytes) -> list[tuple[str, bytes]] | None:
    """(partition key, data) of each sub-record of a KPL aggregated record, in sub-sequence order; None
    when ``data`` is not one (the KCL's rule: the magic, and an MD5 that checks, else a plain record)."""
    if not data.startswith(KPL_MAGIC) or len(data) < len(KPL_MAGIC) + 16:
        return None
    message, digest = data[len(KPL_MAGIC) : -16], data[-16:]
    if hashlib.md5(message).digest() != digest:  # noqa: S324 - the KPL's own framing checksum
        return None
    try:
        keys: list[str] = []
        records: list[tuple[int, bytes]] = []
        for number, value in _fields(message):
            if number == 1 and isinstance(value, bytes):
                keys.append(value.decode("utf-8"))
            elif number == 3 and isinstance(value, bytes):
                index, payload = 0, b""
                for inner, inner_value in _fields(value):
                    if inner == 1 and isinstance(inner_value, int):
                        index = inner_value
                    elif inner == 3 and isinstance(inner_value, bytes):
                        payload = inner_value
                records.append((index, payload))
        return [(keys[index], payload) for index, payload in records]
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def verifies(
    letter_data: bytes,
    letter_partition_key: str,
    sub_sequence_number: int,
    stream_data: bytes,
    stream_partition_key: str,
) -> bool:
    """The decrypted dead letter is the record the stream holds at its sequence number: the SHA-256 of its
    bytes (and its partition key) equal the stream record's, or, for a sub-record of a KPL aggregate, the
    aggregate's sub-record ``sub_sequence_number``.

    The decrypted bytes are what a redrive would put back, so they are what is compared: a content hash
    stored beside a dead letter could be copied into a forged one by whoever can write the object."""
    sub_records = kpl_records(stream_data)
    if sub_records is None:
        if sub_sequence_number != 0:
            return False
        expected_key, expected = stream_partition_key, stream_data
    elif sub_sequence_number < len(sub_records):
        expected_key, expected = sub_records[sub_sequence_number]
    else:
        return False
    return expected_key == letter_partition_key and hmac.compare_digest(
        hashlib.sha256(expected).digest(), hashlib.sha256(letter_data).digest()
    )
