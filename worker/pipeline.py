"""Decode -> pseudonymize -> plan -> execute, for one shard's batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from processors.batch import plan_batch
from processors.decode import DecodeLimits, Decoder
from processors.pseudonymize import Pseudonymizer, load_pseudonym_key
from schemas.records import KinesisRecord, StreamPosition
from worker.aws import AwsClients
from worker.config import Settings
from worker.executor import PlanExecutor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    records: int
    applied: int
    quarantined: int
    vehicles: int
    writes: int
    invalid_coordinates: int
    last_position: StreamPosition | None


def decode_limits(settings: Settings) -> DecodeLimits:
    return DecodeLimits(
        max_record_bytes=settings.max_record_bytes,
        max_future_skew_ms=settings.max_future_skew_seconds * 1000,
        max_event_age_ms=int(settings.max_event_age_hours * 3600 * 1000),
    )


def pseudonymizer_for(settings: Settings, clients: AwsClients) -> Pseudonymizer:
    if settings.pseudonym_key is not None:
        return Pseudonymizer(settings.pseudonym_key.get_secret_value().encode("utf-8"))
    return Pseudonymizer(load_pseudonym_key(settings.pseudonym_secret_id, clients.secretsmanager))


class Pipeline:
    def __init__(self, settings: Settings, clients: AwsClients) -> None:
        self.decoder = Decoder(decode_limits(settings))
        self.pseudonymizer = pseudonymizer_for(settings, clients)
        self.executor = PlanExecutor(settings, clients)

    def process(self, records: Sequence[KinesisRecord]) -> BatchOutcome:
        """Apply a batch. Returns only when every write is durable; raises otherwise."""
        plan = plan_batch(records, self.decoder, self.pseudonymizer)
        for quarantined in plan.quarantined:
            log.warning(
                "record_quarantined",
                extra={
                    "fields": {
                        "reason": str(quarantined.reason),
                        "detail": quarantined.detail,
                        "shard": quarantined.record.position.shard_id,
                        "sequenceNumber": quarantined.record.position.sequence_number,
                    }
                },
            )
        stats = self.executor.execute(plan)
        return BatchOutcome(
            records=len(records),
            applied=len(plan.readings),
            quarantined=len(plan.quarantined),
            vehicles=plan.vehicles,
            writes=stats.writes,
            invalid_coordinates=plan.invalid_coordinates,
            last_position=plan.last_position,
        )

    def close(self) -> None:
        self.executor.close()
