"""One shard's batches, in one forward flow: decode -> plan -> execute. The caller checkpoints.

1. decode: ``decode_batch`` turns records into readings and dead letters (pure);
2. plan: the trip machines of unknown vehicles are loaded (``retry.READ``), then every vehicle is planned
   (pure after the load): a ``WritePlan``;
3. execute: ``PlanExecutor.execute`` makes every write of the plan through the ports, re-planning vehicles
   another writer moved first (``trip_commit.commit_until_settled``);
4. outcome: ``BatchOutcome`` from the plan and what execution reported. The plan is never changed after
   it is built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from processors.batch import DeadLetter, TripPlanner, WritePlan, decode_batch
from processors.decode import DecodeLimits, Decoder
from processors.errors import StaleTripState
from processors.ports import Stores
from processors.pseudonymize import Pseudonymizer
from processors.signal_bounds import SignalBounds
from processors.trips import TripStateMachine, TripThresholds
from schemas.records import KinesisRecord, StreamPosition, VehicleReading
from worker.config import Settings
from worker.executor import Executed, PlanExecutor
from worker.logs import event
from worker.retry import DEFAULT, READ, Retrier
from worker.trip_commit import Replanned

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one applied batch did: the ``batch`` log line and the batch metrics are built from it."""

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

    @classmethod
    def of(cls, plan: WritePlan, executed: Executed) -> BatchOutcome:
        return cls(
            records=len(plan.records),
            applied=len(plan.readings),
            dead_letters=len(plan.dead_letters) + len(executed.dead_letters),
            vehicles=plan.vehicles,
            writes=executed.requests,
            breadcrumbs=sum(len(merge.slots) for merge in plan.trail),
            trips_archived=sum(len(t.outbox) for t in plan.trips),
            invalid_coordinates=plan.invalid_coordinates,
            last_position=plan.last_position,
            signals_dropped=plan.signals_dropped,
        )


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


def trip_thresholds(settings: Settings) -> TripThresholds:
    return TripThresholds(
        start_speed_mph=settings.trip_start_speed_mph,
        end_speed_mph=settings.trip_end_speed_mph,
        gap_ms=settings.trip_gap_seconds * 1000,
        segment_breadcrumbs=settings.trip_segment_breadcrumbs,
    )


class Pipeline:
    """Applies one shard's batches: decode -> plan -> execute, through the ports in ``stores``.

    Guarantees: ``process`` returns only when every write of the batch is durable, else raises, and then
    the caller must not checkpoint. No record is left out: each is applied, or dead-lettered by the
    boundary, or (decoded, then refused by a store as invalid) dead-lettered by the executor. Trip
    machines are cached between batches: one ``Pipeline`` per shard lease.
    """

    def __init__(
        self, settings: Settings, stores: Stores, pseudonymizer: Pseudonymizer, retrier: Retrier = DEFAULT
    ) -> None:
        self.decoder = Decoder(decode_limits(settings))
        self.bounds = signal_bounds(settings)
        self.pseudonymizer = pseudonymizer
        self._stores = stores
        self._retrier = retrier
        self.executor = PlanExecutor(
            stores, settings.write_concurrency, retrier, idle_ms=2 * settings.trip_gap_seconds * 1000
        )
        self.trips = TripPlanner(TripStateMachine(trip_thresholds(settings)))

    def process(self, records: Sequence[KinesisRecord]) -> BatchOutcome:
        """Apply a batch. Returns only when every write is durable; raises otherwise."""
        plan = decode_batch(records, self.decoder, self.pseudonymizer, self.bounds)
        if plan.signals_dropped:
            # Not a rejection: the records apply without these signals (see processors.signal_bounds).
            event(log, "signals_dropped", logging.WARNING, signalsDropped=plan.signals_dropped)
        _log_dead_letters(plan.dead_letters)
        groups = plan.by_vehicle()
        self._plan_trips(plan, groups)
        executed = self.executor.execute(
            plan, replan=partial(self._replan, groups), on_committed=self.trips.committed
        )
        _log_dead_letters(executed.dead_letters)
        return BatchOutcome.of(plan, executed)

    def _plan_trips(self, plan: WritePlan, groups: dict[str, list[VehicleReading]]) -> None:
        unknown = self.trips.unknown(groups)
        if unknown:
            stored = self._retrier.call(READ, self._stores.trips.load, unknown)
            for pseudo_vin in unknown:
                self.trips.adopt(pseudo_vin, stored.get(pseudo_vin))
        for pseudo_vin, readings in groups.items():
            plan.trips.append(self.trips.plan(pseudo_vin, readings))

    def _replan(self, groups: dict[str, list[VehicleReading]], stale: StaleTripState) -> Replanned:
        """Another writer moved this vehicle first: plan the batch's readings again on top of it."""
        self.trips.adopt(stale.pseudo_vin, stale.current)
        return Replanned(self.trips.plan(stale.pseudo_vin, groups[stale.pseudo_vin]))

    def close(self) -> None:
        self.executor.close()


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
