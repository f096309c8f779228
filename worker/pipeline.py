"""One shard's records, in one forward flow: decode -> buffer -> flush -> checkpoint.

1. decode: ``decode_batch`` turns records into readings and dead letters (pure); the VIN vault and the
   dead letters are written at once;
2. buffer: the trip machines of unknown vehicles are loaded (``retry.READ``); each reading goes into the
   ``VehicleStateBuffer`` (freshness budget B), the ``TrailBuffer``, and the ``TripPlanner``
   (``processors.trip_planner``: the live view at once, the exact machine in event order behind the
   allowed lateness);
3. flush (after every batch, also empty ones): vehicle-state updates whose deadline is near, trail
   buckets that are complete or 15 s old (every accepted record's crumb, ``processors.trail``; all of a
   vehicle's before its archive), the trip-state of vehicles with a live transition, a completion or a
   seal, and live progress every ``FLEET_TRIP_PROGRESS_SECONDS``;
4. checkpoint, after writing what the records up to the position it goes to need, never before:
   - spread (``begin_checkpoint``, then ``end_checkpoint`` after each later flush), every
     ``FLEET_CHECKPOINT_EVERY_SECONDS``: when it is called for, the watermark (just before the oldest
     record the exact machine has not consumed yet, else the last record received) is noted, and what
     is pending then is written over the next ``worker.checkpoint.spread_ms`` of flushes, along with
     what falls due meanwhile. Once all of it is written, the noted watermark is handed to the caller's
     checkpointer. What arrived since is no part of it: a write pending now for a key holds only later
     records, and the next checkpoint takes it;
   - at once (``checkpoint``, ``end_of_shard``: shutdown and the end of the shard): everything pending is
     written, then the watermark is handed over.
   The record processor first reports its shard's progress there (``record_progress``): everything it had
   received when the checkpoint was called for is written by then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from processors.batch import DeadLetter, decode_batch
from processors.decode import DecodeLimits, Decoder
from processors.errors import StaleTripState
from processors.frontier import ShardProgress
from processors.ports import Staged, Stores, WriteBuffer
from processors.pseudonymize import Pseudonymizer
from processors.settle import position_key
from processors.signal_bounds import SignalBounds
from processors.signals import format_time
from processors.trail import TRAIL_BUCKET_SECONDS
from processors.trip_planner import LateAfterArchive, TripPlanner, TripRenamed
from processors.trips import TripStateMachine
from schemas.records import KinesisRecord, StreamPosition
from worker.checkpoint import spread_ms
from worker.config import Settings
from worker.executor import PlanExecutor
from worker.freshness import TrailBuffer, VehicleStateBuffer
from worker.logs import event
from worker.retry import DEFAULT, READ, WRITE, Retrier
from worker.trip_commit import Replanned

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Flushed:
    """What one flush wrote."""

    writes: int = 0
    dead_letters: int = 0
    breadcrumbs: int = 0
    trips_archived: int = 0
    vehicle_states: int = 0


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one batch did (and the flush after it): the ``batch`` log line and the batch metrics."""

    records: int
    applied: int
    dead_letters: int
    vehicles: int
    writes: int
    breadcrumbs: int
    trips_archived: int
    invalid_coordinates: int
    last_position: StreamPosition | None
    signals_dropped: int = 0
    late_for_machine: int = 0
    late_after_archive: int = 0


@dataclass(slots=True)
class _Called:
    """A checkpoint called for: where it goes (the watermark of that moment), and each buffer's writes
    pending then (``WriteBuffer.stage``), to be written by ``deadline_ms``."""

    target: StreamPosition | None
    deadline_ms: int
    last_ms: int
    """The last flush that took a share."""
    flushes_left: int
    """Flushes (one a poll) until everything is taken, whatever the wall clock does: a clock stepped back
    or standing still must not hold the checkpoint back for longer than the spread's polls."""
    states: Staged
    trail: Staged
    trips: Staged

    def share(self, now_ms: int) -> float:
        """The share of what is left to take at ``now_ms``: even over the time until the deadline, or over
        the flushes left, whichever takes more."""
        by_count = 1 / self.flushes_left
        self.flushes_left = max(1, self.flushes_left - 1)
        if now_ms >= self.deadline_ms:
            return 1.0
        return max(by_count, max(0, now_ms - self.last_ms) / (self.deadline_ms - self.last_ms))


def decode_limits(settings: Settings) -> DecodeLimits:
    return DecodeLimits(
        max_record_bytes=settings.max_record_bytes,
        max_future_skew_ms=settings.max_future_skew_seconds * 1000,
        max_event_age_ms=int(settings.max_event_age_hours * 3600 * 1000),
    )


def signal_bounds(settings: Settings) -> SignalBounds:
    return SignalBounds(
        max_signals=settings.max_signals_per_vehicle, max_value_bytes=settings.max_signal_value_bytes
    )


class Pipeline:
    """Applies one shard's records through the ports in ``stores``: decode, buffer, flush.

    Guarantees: ``process`` and ``flush`` return only when every write they made is durable, else raise,
    and then the caller must not checkpoint. No record is left out: each is buffered (and written by a
    later flush), or dead-lettered by the boundary, or (refused later by a store as invalid)
    dead-lettered by the flush. One ``Pipeline`` per shard lease: its buffers are that lease's.
    """

    def __init__(
        self, settings: Settings, stores: Stores, pseudonymizer: Pseudonymizer, retrier: Retrier = DEFAULT
    ) -> None:
        self.decoder = Decoder(decode_limits(settings))
        self.bounds = signal_bounds(settings)
        self.pseudonymizer = pseudonymizer
        self._stores = stores
        self._retrier = retrier
        thresholds = settings.trip_thresholds()
        self.executor = PlanExecutor(stores, settings.write_concurrency, thresholds, retrier)
        self.trips = TripPlanner(
            TripStateMachine(thresholds), settings.trip_lateness_ms, settings.trip_progress_ms
        )
        lead_ms = settings.state_flush_lead_ms
        self.states = VehicleStateBuffer(
            settings.state_max_delay_ms, lead_ms, liveness_ms=settings.liveness_seconds * 1000
        )
        self.trail = TrailBuffer(TRAIL_BUCKET_SECONDS, settings.trail_max_delay_ms, lead_ms)
        self.buffers: tuple[WriteBuffer[Any], ...] = (self.states, self.trail, self.trips)
        """Every accepted record goes into each; a checkpoint goes no further than any holds back."""
        self.spread_ms = spread_ms(settings.checkpoint_every_seconds)
        self.poll_ms = max(1, settings.kcl_idle_time_between_reads_millis)
        self._last_position: StreamPosition | None = None
        self._called: _Called | None = None

    def process(
        self, records: Sequence[KinesisRecord], now_ms: int | None = None, caught_up: bool = False
    ) -> BatchOutcome:
        """Take a batch received at ``now_ms`` (an empty one too: ``caught_up`` when the daemon says the
        shard has nothing newer) and write what is due. Returns only once that is durable; raises
        otherwise."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        plan = decode_batch(records, self.decoder, self.pseudonymizer, self.bounds)
        if plan.signals_dropped:
            # Not a rejection: the records apply without these signals (see processors.signal_bounds).
            event(log, "signals_dropped", logging.WARNING, signalsDropped=plan.signals_dropped)
        _log_dead_letters(plan.dead_letters)
        writes = self.executor.write_now(plan)
        unknown = self.trips.unknown(plan.sightings)
        if unknown:
            stored = self._retrier.call(READ, self._stores.trips.load, unknown)
            for pseudo_vin in unknown:
                self.trips.adopt(pseudo_vin, stored.get(pseudo_vin))
        readings = {reading.position: reading for reading in plan.readings}
        late = self.trips.late_for_machine
        for record in records:
            reading = readings.get(record.position)
            if reading is None:
                self.trips.passed(record.position)  # a dead letter: nothing holds it back
                continue
            for buffer in self.buffers:
                buffer.add(reading, record, now_ms)
        if records:
            self._last_position = records[-1].position
        if not records and caught_up:
            self.trips.tick(now_ms - 1000)  # no unseen record can have arrived before that
        missed = self._report_late()
        flushed = self.flush(now_ms, everything=False)
        return BatchOutcome(
            records=len(records),
            applied=len(plan.readings),
            dead_letters=len(plan.dead_letters) + flushed.dead_letters,
            vehicles=plan.vehicles,
            writes=writes + flushed.writes,
            breadcrumbs=flushed.breadcrumbs,
            trips_archived=flushed.trips_archived,
            invalid_coordinates=plan.invalid_coordinates,
            last_position=plan.last_position,
            signals_dropped=plan.signals_dropped,
            late_for_machine=self.trips.late_for_machine - late,
            late_after_archive=missed,
        )

    def flush(self, now_ms: int, *, everything: bool) -> Flushed:
        """Write what is due at ``now_ms``, and a share of what a called-for checkpoint waits for
        (``everything``: all that is pending, before a checkpoint at once)."""
        states = self.states.due(now_ms, everything=everything)
        trips = self.trips.due(now_ms, everything=everything)
        called = None if everything else self._called
        share = 0.0
        if called is not None:
            # After each buffer's ``due``: what it took is no longer pending, so it is not taken twice. A
            # staged vehicle may be due anyway (``TripPlanner.due`` takes nothing): it is written once.
            share, called.last_ms = called.share(now_ms), now_ms
            states += self.states.take_staged(called.states, share, now_ms)
            due_trips = {t.pseudo_vin for t in trips}
            staged_trips = self.trips.take_staged(called.trips, share, now_ms)
            trips += [t for t in staged_trips if t.pseudo_vin not in due_trips]
        # An archive or a segment reads its span back from the trail: its vehicle's crumbs go first.
        archiving = {t.pseudo_vin for t in trips if t.outbox or t.seals}
        trail = self.trail.of_vehicles(archiving) + self.trail.due(now_ms, everything=everything)
        if called is not None:  # after the archiving vehicles' and the due merges, like the states above
            trail += self.trail.take_staged(called.trail, share, now_ms)
        if not (states or trail or trips):
            return Flushed()
        executed = self.executor.flush(
            states, trail, trips, self._replan, lambda pv, version: self.trips.committed(pv, version, now_ms)
        )
        _log_dead_letters(executed.dead_letters)
        for pseudo_vin in executed.refused:
            self.states.forget(pseudo_vin)
        return Flushed(
            writes=executed.requests,
            dead_letters=len(executed.dead_letters),
            breadcrumbs=sum(len(merge.slots) for merge in trail),
            trips_archived=sum(len(t.outbox) for t in trips),
            vehicle_states=len(states),
        )

    def begin_checkpoint(self, now_ms: int) -> Flushed:
        """A checkpoint is called for at ``now_ms`` (see the module docstring): note the watermark and what
        is pending, and write the first share of it (all of it when ``spread_ms`` is 0). The flushes of the
        next ``spread_ms`` (at most as many as its polls) write the rest; ``end_checkpoint`` commits once
        all of it is written."""
        self._called = _Called(
            self.watermark(),
            now_ms + self.spread_ms,
            now_ms,
            max(1, self.spread_ms // self.poll_ms),
            self.states.stage(now_ms),
            self.trail.stage(now_ms),
            self.trips.stage(now_ms),
        )
        return self.flush(now_ms, everything=False)

    @property
    def checkpointing(self) -> bool:
        """A checkpoint was called for and is not committed yet."""
        return self._called is not None

    def end_checkpoint(self, now_ms: int, commit: Callable[[StreamPosition | None], None]) -> bool:
        """If everything the called-for checkpoint waits for is written, ``commit`` its watermark (None:
        nothing received when it was called for; ``commit`` decides what that means) and say so."""
        called = self._called
        if called is None:
            return False
        waits: tuple[tuple[WriteBuffer[Any], Staged], ...] = (
            (self.states, called.states),
            (self.trail, called.trail),
            (self.trips, called.trips),
        )
        for buffer, staged in waits:
            buffer.take_staged(staged, 0.0, now_ms)  # forgets what was written since, takes nothing
        if any(staged for _, staged in waits):
            return False
        self._called = None
        commit(called.target)
        return True

    def checkpoint(self, now_ms: int, commit: Callable[[StreamPosition | None], None]) -> Flushed:
        """Checkpoint at once (shutdown): write everything pending, then ``commit`` the watermark: just
        before the oldest record the exact trip machine has not consumed, else the last record received
        (None: nothing received yet; ``commit`` decides what that means). A failed write raises before
        ``commit`` is called. A spread checkpoint under way is superseded."""
        self._called = None
        flushed = self.flush(now_ms, everything=True)
        commit(self.watermark())
        return flushed

    def end_of_shard(self, now_ms: int, commit: Callable[[StreamPosition | None], None]) -> Flushed:
        """SHARD_END: no later record of this shard can come. The records the exact machine has not
        consumed are handed to the child shards in their vehicles' items, everything is written, and
        ``commit(None)`` checkpoints the end of the shard."""
        self.trips.hand_over()
        self._report_late()
        self._called = None
        flushed = self.flush(now_ms, everything=True)
        commit(None)
        return flushed

    def record_progress(self, progress: ShardProgress) -> int:
        """Store the shard's progress report (``processors.frontier``): call it once everything received is
        written, i.e. from ``checkpoint``'s or ``end_of_shard``'s ``commit``. Returns only once it is
        durable; raises otherwise. Returns requests made."""
        return self._retrier.call(WRITE, self._stores.progress.record, progress)

    def _report_late(self) -> int:
        """Log the records found late after their trip's archive, and the live trips renamed, since the
        last call; how many records were late after an archive."""
        missed, self.trips.late_after_archive = self.trips.late_after_archive, []
        renamed, self.trips.renamed = self.trips.renamed, []
        _log_late_after_archive(missed)
        _log_renamed(renamed)
        return len(missed)

    def watermark(self) -> StreamPosition | None:
        """Where a checkpoint may go once everything pending is written (``checkpoint``): the last record
        received, unless a buffer holds an earlier one back."""
        holds = [hold for buffer in self.buffers if (hold := buffer.holds_back()) is not None]
        if not holds:
            return self._last_position
        positions = [hold.before for hold in holds]
        if None in positions:
            return None  # nothing of this lease may be checkpointed yet
        return min((p for p in positions if p is not None), key=position_key)

    def _replan(self, stale: StaleTripState) -> Replanned:
        """Another writer moved this vehicle first: consume its journal again on top of what it stored."""
        return Replanned(self.trips.replan(stale))

    def close(self) -> None:
        self.executor.close()


def _log_late_after_archive(missed: Sequence[LateAfterArchive]) -> None:
    """The archive is kept as it is (docs/design.md): the record is a crumb of the live trail only."""
    for record in missed:
        event(
            log,
            "late_after_archive",
            logging.WARNING,
            pseudoVin=record.pseudo_vin,
            tripId=record.trip_id,
            eventTime=format_time(record.event_time_ms),
            arrival=format_time(record.arrival_ms),
        )


def _log_renamed(renamed: Sequence[TripRenamed]) -> None:
    """A late record earlier than a live trip's start: the archive will carry the new id."""
    for rename in renamed:
        event(
            log,
            "live_trip_renamed",
            logging.WARNING,
            pseudoVin=rename.pseudo_vin,
            tripId=rename.new_trip_id,
            previousTripId=rename.old_trip_id,
        )


def _log_dead_letters(dead_letters: Sequence[DeadLetter]) -> None:
    for dead_letter in dead_letters:
        position = dead_letter.record.position
        event(
            log,
            "record_dead_lettered",
            logging.WARNING,
            reason=str(dead_letter.reason),
            detail=dead_letter.detail,
            shard=position.shard_id,
            sequenceNumber=position.sequence_number,
        )
