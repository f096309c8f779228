"""A batch of Kinesis records -> a ``WritePlan``: what to write, with no AWS call made.

The plan is what the executor carries out; the last stream position it covers is what gets checkpointed
once every write in it has succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from processors.decode import Decoder
from processors.errors import InvalidRecord, RejectReason
from processors.pseudonymize import Pseudonymizer
from processors.signal_bounds import SignalBounds, bound_signals, within_bounds
from schemas.records import KinesisRecord, StreamPosition, VehicleReading


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record set aside with a reason instead of applied: written to S3 (``processors.dead_letter``)
    so an operator can inspect and redrive it; the shard moves on."""

    record: KinesisRecord
    reason: RejectReason
    detail: str


@dataclass(slots=True)
class WritePlan:
    """What one batch writes, built before any write is made; the executor carries it out and never
    changes it. ``last_position`` is what gets checkpointed once every write has succeeded."""

    readings: list[VehicleReading] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    sightings: dict[str, str] = field(default_factory=dict, repr=False)
    """pseudoVin -> VIN of every vehicle in the batch (for the vault). Never logged."""
    invalid_coordinates: int = 0
    signals_dropped: int = 0
    """Signals left out of records that were kept (too many, too large, unstorable: ``SignalBounds``)."""
    last_position: StreamPosition | None = None

    @property
    def vehicles(self) -> int:
        return len(self.sightings)

    def by_vehicle(self) -> dict[str, list[VehicleReading]]:
        """Readings grouped per vehicle, each group in stream order."""
        groups: dict[str, list[VehicleReading]] = {}
        for reading in self.readings:
            groups.setdefault(reading.pseudo_vin, []).append(reading)
        return groups


def decode_batch(
    records: Sequence[KinesisRecord],
    decoder: Decoder,
    pseudonymizer: Pseudonymizer,
    bounds: SignalBounds | None = None,
) -> WritePlan:
    """Every record is either planned or dead-lettered, whatever it holds: the per-record boundary.

    An exception nobody foresaw, out of decoding or this record's planning, dead-letters the record as
    ``internal_error`` (the exception's type only: its message may quote input) instead of failing the
    batch, which the KCL would redeliver forever. Only the record's own work runs inside the boundary;
    what follows (the write buffers) works on readings that already passed it.
    """
    bounds = bounds or SignalBounds()
    plan = WritePlan(last_position=records[-1].position if records else None)
    for record in records:
        try:
            decoded = decoder.decode(record.data, record.position.arrival_ms)
            reading = pseudonymizer.reading(decoded, record.position)
            signals, dropped = (
                (reading.signals, 0)
                if within_bounds(reading.signals, bounds)
                else bound_signals(reading.signals, bounds)
            )
        except InvalidRecord as invalid:
            plan.dead_letters.append(DeadLetter(record, invalid.reason, invalid.detail))
            continue
        except Exception as unexpected:  # see the docstring
            plan.dead_letters.append(
                DeadLetter(record, RejectReason.INTERNAL_ERROR, type(unexpected).__name__)
            )
            continue
        if dropped:
            reading = replace(reading, signals=signals)
            plan.signals_dropped += dropped
        plan.sightings[reading.pseudo_vin] = decoded.vin
        plan.invalid_coordinates += decoded.dropped_location
        plan.readings.append(reading)
    return plan
