"""A batch of Kinesis records -> a ``WritePlan``: what to write, with no AWS call made.

The plan is what the executor carries out; the last stream position it covers is what gets checkpointed
once every write in it has succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from processors.decode import Decoder
from processors.errors import InvalidRecord, RejectReason
from processors.pseudonymize import Pseudonymizer
from processors.vehicle_state import StateUpdate, coalesce
from schemas.records import KinesisRecord, StreamPosition, VehicleReading


@dataclass(frozen=True, slots=True)
class Quarantined:
    record: KinesisRecord
    reason: RejectReason
    detail: str


@dataclass(slots=True)
class WritePlan:
    readings: list[VehicleReading] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    sightings: dict[str, str] = field(default_factory=dict, repr=False)
    """pseudoVin -> VIN of every vehicle in the batch (for the vault). Never logged."""
    vehicle_states: list[StateUpdate] = field(default_factory=list)
    invalid_coordinates: int = 0
    last_position: StreamPosition | None = None

    @property
    def vehicles(self) -> int:
        return len(self.sightings)


def plan_batch(records: Sequence[KinesisRecord], decoder: Decoder, pseudonymizer: Pseudonymizer) -> WritePlan:
    plan = WritePlan(last_position=records[-1].position if records else None)
    for record in records:
        try:
            decoded = decoder.decode(record.data, record.position.arrival_ms)
        except InvalidRecord as invalid:
            plan.quarantined.append(Quarantined(record, invalid.reason, invalid.detail))
            continue
        reading = pseudonymizer.reading(decoded, record.position)
        plan.sightings[reading.pseudo_vin] = decoded.vin
        plan.invalid_coordinates += decoded.dropped_location
        plan.readings.append(reading)
    plan.vehicle_states = list(coalesce(plan.readings).values())
    return plan
