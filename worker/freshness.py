"""The freshness budget (issue 14; design: docs/proposals/write-path.md §5): what waits in memory to be
written, and until when.

No thread: the buffers live in the record processor and are flushed from ``process_records``, which the
daemon calls after every poll, empty or not (``callProcessRecordsEvenForEmptyRecordList``). A write is
taken when ``now >= deadline - lead``: ``lead`` covers the wait for the next poll plus the write itself,
so the write lands by the deadline. Before any checkpoint everything pending is written (``take_all``):
a checkpoint never passes a record whose effect is still only in memory.

- ``VehicleStateBuffer``: per vehicle, the coalesced last-writer-wins update of every record received
  (``processors.vehicle_state`` semantics), written once its deadline comes: the first record's arrival
  + B if that is still ahead when it is received, else its receipt + B (a backlog coalesces across
  batches), and never sooner than B after the vehicle's previous write (at most one write per B).
- ``TrailBuffer``: per (pseudoVin, bucket), the pending bucket merges combined into one; due when the
  vehicle's newest event time passes the bucket's end, or ``max_delay`` after its first pending merge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from processors.vehicle_state import StateUpdate
from schemas.records import KinesisRecord, VehicleReading


@dataclass(slots=True)
class PendingState:
    """One vehicle's unwritten ``vehicle-state`` update."""

    update: StateUpdate
    deadline_ms: int
    readings: list[tuple[VehicleReading, KinesisRecord]] = field(default_factory=list)
    """The records it covers: the store may refuse the update as invalid, then they are applied one by
    one and the refused ones dead-lettered."""


class VehicleStateBuffer:
    """Coalesced ``vehicle-state`` updates per vehicle, each with its deadline (see the module docstring).
    Not thread-safe: the record processor's thread only."""

    def __init__(self, max_delay_ms: int) -> None:
        self.max_delay_ms = max_delay_ms
        self._pending: dict[str, PendingState] = {}
        self._written_at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def absorb(self, reading: VehicleReading, record: KinesisRecord, receipt_ms: int) -> None:
        pending = self._pending.get(reading.pseudo_vin)
        if pending is None:
            budget = self.max_delay_ms
            first = reading.position.arrival_ms + budget
            deadline = first if first > receipt_ms else receipt_ms + budget
            pending = self._pending[reading.pseudo_vin] = PendingState(
                StateUpdate(reading.pseudo_vin, reading.event_time_ms), deadline
            )
        pending.update.absorb(reading)
        pending.readings.append((reading, record))

    def take_due(self, now_ms: int, lead_ms: int) -> list[PendingState]:
        """Remove and return the updates to write now: deadline within ``lead_ms``, and the vehicle's
        previous write at least B ago."""
        due = [
            pv
            for pv, pending in self._pending.items()
            if now_ms >= pending.deadline_ms - lead_ms
            and now_ms >= self._written_at.get(pv, now_ms - self.max_delay_ms) + self.max_delay_ms
        ]
        return self._take(due, now_ms)

    def take_all(self, now_ms: int) -> list[PendingState]:
        """Everything pending (before a checkpoint)."""
        return self._take(list(self._pending), now_ms)

    def _take(self, pseudo_vins: Iterable[str], now_ms: int) -> list[PendingState]:
        taken = []
        for pseudo_vin in pseudo_vins:
            taken.append(self._pending.pop(pseudo_vin))
            self._written_at[pseudo_vin] = now_ms
        return taken

    def clear(self) -> None:
        """The lease is lost: whatever is pending is the next owner's to write."""
        self._pending.clear()


class BucketMergeLike(Protocol):
    """What the trail buffer needs of a pending merge (``processors.trail.BucketMerge`` is one)."""

    @property
    def pseudo_vin(self) -> str: ...

    @property
    def bucket(self) -> int:
        """Epoch seconds at the bucket's start."""
        ...


M = TypeVar("M", bound=BucketMergeLike)


@dataclass(slots=True)
class _PendingMerge(Generic[M]):
    merge: M
    first_ms: int


class TrailBuffer(Generic[M]):
    """Pending trail bucket merges, one per (pseudoVin, bucket), combined with ``combine``
    (``processors.trail.combine``: slot max, expiry max). Not thread-safe."""

    def __init__(self, combine: Callable[[M, M], M], bucket_seconds: int, max_delay_ms: int) -> None:
        self._combine = combine
        self._bucket_ms = bucket_seconds * 1000
        self.max_delay_ms = max_delay_ms
        self._pending: dict[tuple[str, int], _PendingMerge[M]] = {}
        self._newest_t: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, merges: Iterable[M], receipt_ms: int) -> None:
        for merge in merges:
            key = (merge.pseudo_vin, merge.bucket)
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _PendingMerge(merge, receipt_ms)
            else:
                pending.merge = self._combine(pending.merge, merge)

    def observe(self, pseudo_vin: str, t_ms: int) -> None:
        """The vehicle sent a record at ``t_ms``: its buckets ending by then are complete."""
        self._newest_t[pseudo_vin] = max(self._newest_t.get(pseudo_vin, t_ms), t_ms)

    def take_due(self, now_ms: int, lead_ms: int = 0) -> list[M]:
        due = [
            key
            for key, pending in self._pending.items()
            if self._newest_t.get(key[0], 0) >= key[1] * 1000 + self._bucket_ms
            or now_ms >= pending.first_ms + self.max_delay_ms - lead_ms
        ]
        return [self._pending.pop(key).merge for key in due]

    def take_vehicles(self, pseudo_vins: set[str]) -> list[M]:
        """Every pending merge of these vehicles, due or not."""
        if not pseudo_vins:
            return []
        keys = [key for key in self._pending if key[0] in pseudo_vins]
        return [self._pending.pop(key).merge for key in keys]

    def take_all(self) -> list[M]:
        taken = [pending.merge for pending in self._pending.values()]
        self._pending.clear()
        return taken

    def clear(self) -> None:
        self._pending.clear()
