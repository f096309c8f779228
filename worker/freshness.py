"""The freshness budget (issue 14; design: docs/proposals/write-path.md §5): what waits in memory to be
written, and until when.

No thread: the buffers live in the record processor and are flushed from ``process_records``, which the
daemon calls after every poll, empty or not (``callProcessRecordsEvenForEmptyRecordList``). A write is
taken when ``now >= deadline - lead``: ``lead`` covers the wait for the next poll plus the write itself,
so the write lands by the deadline. Before any checkpoint everything pending is written
(``due(everything=True)``): a checkpoint never passes a record whose effect is still only in memory, so
neither buffer holds one back. Both are ``processors.ports.WriteBuffer``s, like the trip planner.

- ``VehicleStateBuffer``: per vehicle, the coalesced last-writer-wins update of every record received
  (``processors.vehicle_state`` semantics), written once its deadline comes: the first record's arrival
  + B if that is still ahead when it is received, else its receipt + B (a backlog coalesces across
  batches), and never sooner than B after the vehicle's previous write (at most one write per B).
- ``TrailBuffer``: per (pseudoVin, bucket), the pending bucket merges combined into one; due when the
  vehicle's newest event time passes the bucket's end, or ``max_delay`` after its first pending merge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from processors.ports import Hold
from processors.trail import (
    TRAIL_TTL_SECONDS,
    BucketMerge,
    bucket_of,
    crumb_of,
    encode,
    join_value,
    slot_of,
)
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

    def __init__(self, max_delay_ms: int, lead_ms: int = 0) -> None:
        self.max_delay_ms = max_delay_ms
        self.lead_ms = lead_ms
        """How long before its deadline a write is taken (the next poll may be that far away)."""
        self._pending: dict[str, PendingState] = {}
        self._written_at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, reading: VehicleReading, record: KinesisRecord, now_ms: int) -> None:
        pending = self._pending.get(reading.pseudo_vin)
        if pending is None:
            budget = self.max_delay_ms
            first = reading.position.arrival_ms + budget
            deadline = first if first > now_ms else now_ms + budget
            pending = self._pending[reading.pseudo_vin] = PendingState(
                StateUpdate(reading.pseudo_vin, reading.event_time_ms), deadline
            )
        pending.update.absorb(reading)
        pending.readings.append((reading, record))

    def due(self, now_ms: int, *, everything: bool) -> list[PendingState]:
        """The updates to write now: everything pending, or those whose deadline is within the lead and
        whose vehicle's previous write was at least B ago."""
        if everything:
            return self._take(list(self._pending), now_ms)
        due = [
            pv
            for pv, pending in self._pending.items()
            if now_ms >= pending.deadline_ms - self.lead_ms
            and now_ms >= self._written_at.get(pv, now_ms - self.max_delay_ms) + self.max_delay_ms
        ]
        return self._take(due, now_ms)

    def holds_back(self) -> Hold | None:
        return None

    def _take(self, pseudo_vins: Iterable[str], now_ms: int) -> list[PendingState]:
        taken = []
        for pseudo_vin in pseudo_vins:
            taken.append(self._pending.pop(pseudo_vin))
            self._written_at[pseudo_vin] = now_ms
        return taken


@dataclass(slots=True)
class _PendingMerge:
    """One bucket's pending crumbs, joined in place (a record costs one slot's join, not a copy of the
    bucket), handed out as a ``BucketMerge``."""

    pseudo_vin: str
    bucket: int
    first_ms: int
    slots: dict[str, str] = field(default_factory=dict)
    expires_at: int = 0

    def merge(self) -> BucketMerge:
        return BucketMerge(self.pseudo_vin, self.bucket, self.slots, self.expires_at)


class TrailBuffer:
    """Pending trail bucket merges, one per (pseudoVin, bucket): each accepted record's crumb joined in
    (``processors.trail.join_value`` per slot, expiry max: what ``pack`` computes). Not thread-safe."""

    def __init__(self, bucket_seconds: int, max_delay_ms: int, lead_ms: int = 0) -> None:
        self._bucket_ms = bucket_seconds * 1000
        self.max_delay_ms = max_delay_ms
        self.lead_ms = lead_ms
        self._pending: dict[tuple[str, int], _PendingMerge] = {}
        self._newest_t: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, reading: VehicleReading, record: KinesisRecord, now_ms: int) -> None:
        """The record's crumb (every accepted record with a trail field is one, whatever the trip machine
        makes of it); its event time completes the vehicle's buckets that end by then."""
        pseudo_vin, t = reading.pseudo_vin, reading.event_time_ms
        self._newest_t[pseudo_vin] = max(self._newest_t.get(pseudo_vin, t), t)
        crumb = crumb_of(reading)
        if crumb is None:
            return
        bucket = bucket_of(crumb.t_ms)
        pending = self._pending.get((pseudo_vin, bucket))
        if pending is None:
            pending = self._pending[(pseudo_vin, bucket)] = _PendingMerge(pseudo_vin, bucket, now_ms)
        name, value = slot_of(crumb.t_ms), encode(crumb)
        held = pending.slots.get(name)
        pending.slots[name] = value if held is None else join_value(held, value)
        pending.expires_at = max(pending.expires_at, crumb.arrival_s + TRAIL_TTL_SECONDS)

    def due(self, now_ms: int, *, everything: bool) -> list[BucketMerge]:
        """Every pending merge, or those complete (the vehicle's newest record is past the bucket's end)
        or ``max_delay`` old."""
        if everything:
            taken = [pending.merge() for pending in self._pending.values()]
            self._pending.clear()
            return taken
        due = [
            key
            for key, pending in self._pending.items()
            if self._newest_t.get(key[0], 0) >= key[1] * 1000 + self._bucket_ms
            or now_ms >= pending.first_ms + self.max_delay_ms - self.lead_ms
        ]
        return [self._pending.pop(key).merge() for key in due]

    def of_vehicles(self, pseudo_vins: set[str]) -> list[BucketMerge]:
        """Every pending merge of these vehicles, due or not (an archive reads their trail back)."""
        if not pseudo_vins:
            return []
        keys = [key for key in self._pending if key[0] in pseudo_vins]
        return [self._pending.pop(key).merge() for key in keys]

    def holds_back(self) -> Hold | None:
        return None
