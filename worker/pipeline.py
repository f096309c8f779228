"""Decode -> pseudonymize -> plan -> execute, for one shard's batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from processors.batch import Quarantined, TripPlanner, WritePlan, decode_batch
from processors.decode import DecodeLimits, Decoder
from processors.errors import RejectReason, RetryableWriteError
from processors.pseudonymize import Pseudonymizer, load_pseudonym_key
from processors.signal_bounds import SignalBounds
from processors.trips import TripStateMachine, TripThresholds
from schemas.records import KinesisRecord, StreamPosition, VehicleReading
from worker.aws import AwsClients
from worker.config import Settings
from worker.executor import PlanExecutor, write_retry
from worker.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    records: int
    applied: int
    quarantined: int
    vehicles: int
    writes: int
    breadcrumbs: int
    trips_completed: int
    invalid_coordinates: int
    last_position: StreamPosition | None
    signals_dropped: int = 0


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


def pseudonymizer_for(settings: Settings, clients: AwsClients) -> Pseudonymizer:
    if settings.pseudonym_key is not None:
        return Pseudonymizer(settings.pseudonym_key.get_secret_value().encode("utf-8"))
    return Pseudonymizer(load_pseudonym_key(settings.pseudonym_secret_id, clients.secretsmanager))


class Pipeline:
    MAX_REPLANS = 5

    def __init__(self, settings: Settings, clients: AwsClients) -> None:
        self.decoder = Decoder(decode_limits(settings))
        self.bounds = signal_bounds(settings)
        self.pseudonymizer = pseudonymizer_for(settings, clients)
        self.executor = PlanExecutor(settings, clients, self.pseudonymizer)
        self.trips = TripPlanner(TripStateMachine(trip_thresholds(settings)))

    def process(self, records: Sequence[KinesisRecord]) -> BatchOutcome:
        """Apply a batch. Returns only when every write is durable; raises otherwise."""
        plan = decode_batch(records, self.decoder, self.pseudonymizer, self.bounds)
        if plan.signals_dropped:
            # Not a rejection: the records apply without these signals (see processors.signal_bounds).
            event(log, "signals_dropped", logging.WARNING, signalsDropped=plan.signals_dropped)
        for quarantined in plan.quarantined:
            event(
                log,
                "record_quarantined",
                logging.WARNING,
                reason=str(quarantined.reason),
                detail=quarantined.detail,
                shard=quarantined.record.position.shard_id,
                sequenceNumber=quarantined.record.position.sequence_number,
            )
        groups = plan.by_vehicle()
        self._plan_trips(plan, groups)
        independent = self.executor.write_independent(plan)
        writes = independent.requests + self._quarantine_refused(records, groups, independent.refused, plan)
        writes += self._commit_trips(plan, groups)
        return BatchOutcome(
            records=len(records),
            applied=len(plan.readings),
            quarantined=len(plan.quarantined),
            vehicles=plan.vehicles,
            writes=writes,
            breadcrumbs=len(plan.breadcrumbs),
            trips_completed=sum(len(t.outbox) for t in plan.trips),
            invalid_coordinates=plan.invalid_coordinates,
            last_position=plan.last_position,
            signals_dropped=plan.signals_dropped,
        )

    def _quarantine_refused(
        self,
        records: Sequence[KinesisRecord],
        groups: dict[str, list[VehicleReading]],
        vehicles: list[str],
        plan: WritePlan,
    ) -> int:
        """A vehicle's state update that DynamoDB refused as invalid: apply its records one by one and
        dead-letter the ones refused, instead of failing (and endlessly redelivering) the batch."""
        if not vehicles:
            return 0
        by_position = {record.position: record for record in records}
        requests, quarantined = 0, []
        for pseudo_vin in vehicles:
            made, refused = self.executor.refused_readings(groups[pseudo_vin])
            requests += made
            for reading in refused:
                detail = "vehicle-state refused the record as invalid (ValidationException)"
                quarantined.append(
                    Quarantined(by_position[reading.position], RejectReason.UNWRITABLE, detail)
                )
                event(
                    log,
                    "record_quarantined",
                    logging.WARNING,
                    reason="unwritable",
                    detail=detail,
                    shard=reading.position.shard_id,
                    sequenceNumber=reading.position.sequence_number,
                )
        plan.quarantined += quarantined
        return requests + self.executor.dead_letter(quarantined)

    def _plan_trips(self, plan: WritePlan, groups: dict[str, list[VehicleReading]]) -> None:
        unknown = self.trips.unknown(groups)
        if unknown:
            stored = write_retry(self.executor.trip_store.load)(unknown)  # same policy as the writes
            for pseudo_vin in unknown:
                self.trips.adopt(pseudo_vin, stored.get(pseudo_vin))
        for pseudo_vin, readings in groups.items():
            trip_plan, crumbs = self.trips.plan(pseudo_vin, readings)
            plan.trips.append(trip_plan)
            plan.breadcrumbs += crumbs

    def _commit_trips(self, plan: WritePlan, groups: dict[str, list[VehicleReading]]) -> int:
        pending = [t for t in plan.trips if t.write or t.outbox or t.seals]
        requests = 0
        for _ in range(self.MAX_REPLANS):
            commits = self.executor.commit_trips(pending)
            requests += commits.requests
            for pseudo_vin, version in commits.versions.items():
                self.trips.committed(pseudo_vin, version)
            if not commits.stale:
                return requests
            # Another writer (a zombie processor, the orphan sweep) moved these vehicles first: build on
            # what is stored now. Whatever it already applied falls under the high-water mark.
            pending, crumbs = [], []
            for conflict in commits.stale:
                event(log, "trip_state_conflict", logging.WARNING, pseudoVin=conflict.pseudo_vin)
                self.trips.adopt(conflict.pseudo_vin, conflict.current)
                trip_plan, new_crumbs = self.trips.plan(conflict.pseudo_vin, groups[conflict.pseudo_vin])
                pending.append(trip_plan)
                crumbs += new_crumbs
            requests += self.executor.put_breadcrumbs(crumbs)
        raise RetryableWriteError(
            "trip_state_contention", f"{len(pending)} vehicles, {self.MAX_REPLANS} plans"
        )

    def close(self) -> None:
        self.executor.close()
