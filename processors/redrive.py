"""Redrive planning: which PutRecords requests put dead letters back so that each partition key's records
reach the stream in their original order. Pure; the S3, KMS and Kinesis calls are in ``worker.redrive``.

PutRecords does not order the records of one request among themselves (its entries may land in any
order, and a partial failure fails some and not others), so a request holds at most one record per
partition key: a key's next record waits for the next request, after the previous one was accepted.
"""

from __future__ import annotations

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
