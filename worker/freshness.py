"""The freshness budget (issue 14; design: docs/proposals/write-path.md §5): what waits in memory to be
written, and until when.

No thread: the buffers live in the record processor and are flushed from ``process_records``, which the
daemon calls after every poll, empty or not (``callProcessRecordsEvenForEmptyRecordList``). A write is
taken when ``now >= deadline - lead``: ``lead`` covers the wait for the next poll plus the write itself,
so the write lands by the deadline. Before any checkpoint everything pending when it was called for is
written (``stage``/``take_staged``, spread over the next flushes, or ``due(everything=True)`` at once): a
checkpoint never passes a record whose effect is still only in memory, so neither buffer holds one back.
Both are ``processors.ports.WriteBuffer``s, like the trip planner.

- ``VehicleStateBuffer``: per vehicle, the coalesced last-writer-wins update of every record received
  (``processors.vehicle_state`` semantics), written once its deadline comes: the first record's arrival
  + B if that is still ahead when it is received, else its receipt + B (a backlog coalesces across
  batches), and never sooner than B after the vehicle's previous write (at most one write per B).
  That holds for an update that changes a value. One that only moves ``ts`` (liveness: a parked
  vehicle repeating itself; every register it touches already holds that value, or a newer one, in what
  this buffer last wrote) is due ``liveness_ms`` after the receipt of its first record instead, or at the
  checkpoint flush, whichever comes first (so at most one write per vehicle per ``liveness_ms`` and per
  checkpoint interval, never two within one); it is still coalesced with every record received, so when a
  change makes it due, ``ts`` goes with it. The buffer knows only what it wrote itself (no read per
  record): after a restart each vehicle's first update counts as a change, one write per vehicle.
  An update made only of late records the buffer knows to be written already is dropped, not written.
- ``TrailBuffer``: per (pseudoVin, bucket), the pending bucket merges combined into one; due when the
  vehicle's newest event time passes the bucket's end, or ``max_delay`` after its first pending merge. A
  bucket's span follows the vehicle's reporting interval (15 s at 1 Hz, 75 s at one record per 5 s, 450 s
  at one per 30 s: ``processors.trail.span_for``), so a slow reporter's bucket holds as many crumbs as a
  1 Hz vehicle's and a catch-up writes it once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from processors.ports import Hold, Staged, take_unwritten
from processors.trail import (
    TRAIL_TTL_SECONDS,
    BucketMerge,
    bucket_of,
    crumb_of,
    encode,
    join_value,
    slot_of,
    span_for,
)
from processors.vehicle_state import Observation, StateUpdate, unchanged
from schemas.records import KinesisRecord, VehicleReading


@dataclass(slots=True)
class PendingState:
    """One vehicle's unwritten ``vehicle-state`` update."""

    update: StateUpdate
    deadline_ms: int
    readings: list[tuple[VehicleReading, KinesisRecord]] = field(default_factory=list)
    """The records it covers: the store may refuse the update as invalid, then they are applied one by
    one and the refused ones dead-lettered."""
    changed: bool = True
    """Some record of it moves a value this buffer has not written yet (due within B); else it only moves
    ``ts`` and the unchanged registers' times (liveness, due ``liveness_ms`` after its first record's
    receipt, or at the checkpoint flush)."""


@dataclass(slots=True)
class _Written:
    """What this buffer last wrote for one vehicle: when, and the newest observation of each signal and
    ``ts`` it has written (the store holds these or newer: every register only moves forward)."""

    at_ms: int
    timestamp_ms: int
    signals: dict[str, Observation]


class VehicleStateBuffer:
    """Coalesced ``vehicle-state`` updates per vehicle, each with its deadline (see the module docstring).
    Not thread-safe: the record processor's thread only."""

    def __init__(self, max_delay_ms: int, lead_ms: int = 0, liveness_ms: int = 0) -> None:
        self.max_delay_ms = max_delay_ms
        self.lead_ms = lead_ms
        """How long before its deadline a write is taken (the next poll may be that far away)."""
        self.liveness_ms = liveness_ms
        """How long an update that changes no value may wait after the vehicle's last write (0: every
        update is a change, due within B)."""
        self._pending: dict[str, PendingState] = {}
        self._written: dict[str, _Written] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, reading: VehicleReading, record: KinesisRecord, now_ms: int) -> None:
        pseudo_vin = reading.pseudo_vin
        pending = self._pending.get(pseudo_vin)
        if pending is None:
            pending = self._pending[pseudo_vin] = PendingState(
                StateUpdate(pseudo_vin, reading.event_time_ms), 0, changed=False
            )
        pending.update.absorb(reading)
        pending.readings.append((reading, record))
        if pending.changed:
            return
        written = self._written.get(pseudo_vin)
        if written is None or self._changes(pending.update, reading, written):
            pending.changed = True
            first = reading.position.arrival_ms + self.max_delay_ms
            pending.deadline_ms = first if first > now_ms else now_ms + self.max_delay_ms
        elif not pending.deadline_ms:
            # From the receipt of the first record waiting for it, with no lead (liveness needs no landing
            # time): after a checkpoint's write of it the next record comes a poll later at least, so with a
            # liveness interval no shorter than the checkpoint interval the checkpoint writes it first, and
            # a parked vehicle costs one write per checkpoint interval, not two.
            pending.deadline_ms = now_ms + self.liveness_ms

    def _changes(self, update: StateUpdate, reading: VehicleReading, written: _Written) -> bool:
        """Whether absorbing ``reading`` left ``update`` holding a value the vehicle's last writes did not:
        only the reading's signals can have moved."""
        if not self.liveness_ms:
            return True
        known = written.signals
        for name in reading.signals:
            held = known.get(name)
            if held is None or not unchanged(update.signals[name], held):
                return True
        return False

    def due(self, now_ms: int, *, everything: bool) -> list[PendingState]:
        """The updates to write now: everything pending, or those whose deadline is within the lead and
        whose vehicle's previous write was at least B ago."""
        if everything:
            return self._take(list(self._pending), now_ms)
        written = self._written
        lead = self.lead_ms
        due = [
            pv
            for pv, pending in self._pending.items()
            if now_ms >= pending.deadline_ms - (lead if pending.changed else 0)
            and (pv not in written or now_ms >= written[pv].at_ms + self.max_delay_ms)
        ]
        return self._take(due, now_ms)

    def holds_back(self) -> Hold | None:
        return None

    def forget(self, pseudo_vin: str) -> None:
        """The store refused what this buffer last took for the vehicle (its records were applied one by one,
        some dead-lettered): it no longer knows what the store holds, so the vehicle's next update counts
        as a change, and none is dropped as covered by values that were never stored."""
        self._written.pop(pseudo_vin, None)

    def stage(self, now_ms: int) -> Staged:
        """Every pending update, by vehicle; the mark is the update itself (a later one is another)."""
        return dict(self._pending)

    def take_staged(self, staged: Staged, share: float, now_ms: int) -> list[PendingState]:
        keys = take_unwritten(staged, lambda pv, mark: self._pending.get(pv) is mark, share)
        return self._take(keys, now_ms)

    def _take(self, pseudo_vins: Iterable[str], now_ms: int) -> list[PendingState]:
        taken = []
        for pseudo_vin in pseudo_vins:
            pending = self._pending.pop(pseudo_vin)
            written = self._written.get(pseudo_vin)
            if written is not None and not pending.changed and _covered(pending.update, written):
                continue  # late records only: the store holds all of it already, a write would change nothing
            taken.append(pending)
            self._remember(pending.update, written, now_ms)
        return taken

    def _remember(self, update: StateUpdate, written: _Written | None, now_ms: int) -> None:
        if written is None:
            self._written[update.pseudo_vin] = _Written(now_ms, update.timestamp_ms, dict(update.signals))
            return
        written.at_ms = now_ms
        written.timestamp_ms = max(written.timestamp_ms, update.timestamp_ms)
        known = written.signals
        for name, observation in update.signals.items():
            held = known.get(name)
            if held is None or observation.beats(held):
                known[name] = observation


def _covered(update: StateUpdate, written: _Written) -> bool:
    """Nothing of ``update`` is newer than what was written: no later ``ts``, no register it would move."""
    if update.timestamp_ms > written.timestamp_ms:
        return False
    known = written.signals
    return all(name in known and not obs.beats(known[name]) for name, obs in update.signals.items())


@dataclass(slots=True)
class _PendingMerge:
    """One bucket's pending crumbs, joined in place (a record costs one slot's join, not a copy of the
    bucket), handed out as a ``BucketMerge``."""

    pseudo_vin: str
    bucket: int
    first_ms: int
    end_ms: int
    """Event time at which the bucket is complete (its start + the widest span a crumb of it went in with)."""
    slots: dict[str, str] = field(default_factory=dict)
    expires_at: int = 0

    def merge(self) -> BucketMerge:
        return BucketMerge(self.pseudo_vin, self.bucket, self.slots, self.expires_at)


GAPS = 3
"""In-order gaps a vehicle's reporting interval is the smallest of: a bucket wider than 15 s needs this
many, so one silence (a parked hour, a restart) never widens a 1 Hz vehicle's buckets."""


class TrailBuffer:
    """Pending trail bucket merges, one per (pseudoVin, bucket): each accepted record's crumb joined in
    (``processors.trail.join_value`` per slot, expiry max: what ``pack`` computes). Each vehicle's crumbs go
    into buckets of the span its reporting interval calls for (``processors.trail.span_for``: the smallest
    of its last ``GAPS`` in-order event-time gaps; ``bucket_seconds`` until it has seen that many, and
    always when ``adaptive`` is off). Not thread-safe."""

    def __init__(
        self, bucket_seconds: int, max_delay_ms: int, lead_ms: int = 0, *, adaptive: bool = True
    ) -> None:
        self._bucket_s = bucket_seconds
        self.max_delay_ms = max_delay_ms
        self.lead_ms = lead_ms
        self.adaptive = adaptive
        self._pending: dict[tuple[str, int], _PendingMerge] = {}
        self._newest_t: dict[str, int] = {}
        self._gaps: dict[str, list[int]] = {}

    def span_of(self, pseudo_vin: str) -> int:
        """The bucket span (s) this vehicle's next crumb goes into."""
        gaps = self._gaps.get(pseudo_vin)
        if not self.adaptive or gaps is None or len(gaps) < GAPS:
            return self._bucket_s
        return max(self._bucket_s, span_for(min(gaps)))

    def _observe(self, pseudo_vin: str, t: int) -> bool:
        """Note the vehicle's interval; whether ``t`` is late (before its newest event time)."""
        newest = self._newest_t.get(pseudo_vin)
        if newest is None:
            self._newest_t[pseudo_vin] = t
            return False
        if t <= newest:
            return t < newest  # a late or repeated record says nothing of the interval
        self._newest_t[pseudo_vin] = t
        gaps = self._gaps.setdefault(pseudo_vin, [])
        gaps.append(t - newest)
        if len(gaps) > GAPS:
            del gaps[0]
        return False

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, reading: VehicleReading, record: KinesisRecord, now_ms: int) -> None:
        """The record's crumb (every accepted record with a trail field is one, whatever the trip machine
        makes of it); its event time completes the vehicle's buckets that end by then."""
        pseudo_vin, t = reading.pseudo_vin, reading.event_time_ms
        late = self._observe(pseudo_vin, t)
        crumb = crumb_of(reading)
        if crumb is None:
            return
        # A late record goes into a 15 s bucket: a resent burst of a unit now reporting every 30 s may be
        # 1 Hz, and must not fill a 450 s item (a wide bucket only takes records spaced as its span expects).
        span = self._bucket_s if late else self.span_of(pseudo_vin)
        bucket = bucket_of(crumb.t_ms, span)
        end_ms = (bucket + span) * 1000
        pending = self._pending.get((pseudo_vin, bucket))
        if pending is None:
            pending = self._pending[(pseudo_vin, bucket)] = _PendingMerge(pseudo_vin, bucket, now_ms, end_ms)
        elif end_ms > pending.end_ms:
            pending.end_ms = end_ms  # the same start at a wider span: complete at the wider end
        name, value = slot_of(crumb.t_ms, bucket), encode(crumb)
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
            if self._newest_t.get(key[0], 0) >= pending.end_ms
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

    def stage(self, now_ms: int) -> Staged:
        """Every pending merge, by (pseudoVin, bucket); the mark is the merge itself."""
        return dict(self._pending)

    def take_staged(self, staged: Staged, share: float, now_ms: int) -> list[BucketMerge]:
        keys = take_unwritten(staged, lambda key, mark: self._pending.get(key) is mark, share)
        return [self._pending.pop(key).merge() for key in keys]
