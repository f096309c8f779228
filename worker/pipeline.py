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
4. ``checkpoint``, the only way to checkpoint: everything pending is written, then the position just
   before the oldest record the exact machine has not consumed yet is handed to the caller's checkpointer
   (the record processor first reports its shard's progress there, ``record_progress``: everything it
   received is written by then).
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
from processors.ports import Stores, WriteBuffer
from processors.pseudonymize import Pseudonymizer
from processors.settle import position_key
from processors.signal_bounds import SignalBounds
from processors.signals import format_time
from processors.trail import TRAIL_BUCKET_SECONDS
from processors.trip_planner import LateAfterArchive, TripPlanner, TripRenamed
from processors.trips import TripStateMachine
from schemas.records import KinesisRecord, StreamPosition
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
        self._last_position: StreamPosition | None = None

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
        """Write what is due at ``now_ms`` (``everything``: all that is pending, before a checkpoint)."""
        states = self.states.due(now_ms, everything=everything)
        trips = self.trips.due(now_ms, everything=everything)
        # An archive or a segment reads its span back from the trail: its vehicle's crumbs go first.
        archiving = {t.pseudo_vin for t in trips if t.outbox or t.seals}
        trail = self.trail.of_vehicles(archiving) + self.trail.due(now_ms, everything=everything)
        if not (states or trail or trips):
            return Flushed()
        executed = self.executor.flush(
            states, trail, trips, self._replan, lambda pv, version: self.trips.committed(pv, version, now_ms)
        )
        _log_dead_letters(executed.dead_letters)
        return Flushed(
            writes=executed.requests,
            dead_letters=len(executed.dead_letters),
            breadcrumbs=sum(len(merge.slots) for merge in trail),
            trips_archived=sum(len(t.outbox) for t in trips),
            vehicle_states=len(states),
        )

    def checkpoint(self, now_ms: int, commit: Callable[[StreamPosition | None], None]) -> Flushed:
        """The only way to checkpoint: write everything pending, then ``commit`` the watermark: just before
        the oldest record the exact trip machine has not consumed, else the last record received (None:
        nothing received yet; ``commit`` decides what that means). A failed write raises before
        ``commit`` is called."""
        flushed = self.flush(now_ms, everything=True)
        commit(self.watermark())
        return flushed

    def end_of_shard(self, now_ms: int, commit: Callable[[StreamPosition | None], None]) -> Flushed:
        """SHARD_END: no later record of this shard can come. The records the exact machine has not
        consumed are handed to the child shards in their vehicles' items, everything is written, and
        ``commit(None)`` checkpoints the end of the shard."""
        self.trips.hand_over()
        self._report_late()
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
