"""A batch of Kinesis records -> a ``WritePlan``: what to write, with no AWS call made.

The plan is what the executor carries out; the last stream position it covers is what gets checkpointed
once every write in it has succeeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from processors.decode import Decoder
from processors.errors import InvalidRecord, RejectReason
from processors.pseudonymize import Pseudonymizer
from processors.signal_bounds import SignalBounds, bound_signals
from processors.trail import BucketMerge, crumb_of, pack
from processors.trip_items import outbox_of, state_fields, state_from_item
from processors.trips import (
    CompletedTrip,
    TripEffects,
    TripStateMachine,
    VehicleTripPlan,
    VehicleTrips,
)
from processors.vehicle_state import StateUpdate, coalesce
from schemas.items import TripStateItem
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

    records: Sequence[KinesisRecord] = field(default_factory=list, repr=False)
    """The batch as delivered (a record refused later by a store is dead-lettered from here)."""
    readings: list[VehicleReading] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    sightings: dict[str, str] = field(default_factory=dict, repr=False)
    """pseudoVin -> VIN of every vehicle in the batch (for the vault). Never logged."""
    vehicle_states: list[StateUpdate] = field(default_factory=list)
    trail: list[BucketMerge] = field(default_factory=list)
    """Every reading's crumb, packed per vehicle and bucket (``trail_merges``)."""
    trips: list[VehicleTripPlan] = field(default_factory=list)
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
    what follows (``coalesce``) works on readings that already passed it.
    """
    bounds = bounds or SignalBounds()
    plan = WritePlan(records=records, last_position=records[-1].position if records else None)
    for record in records:
        try:
            decoded = decoder.decode(record.data, record.position.arrival_ms)
            reading = pseudonymizer.reading(decoded, record.position)
            signals, dropped = bound_signals(reading.signals, bounds)
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
    plan.vehicle_states = list(coalesce(plan.readings).values())
    plan.trail = trail_merges(plan.by_vehicle())
    return plan


def trail_merges(groups: dict[str, list[VehicleReading]]) -> list[BucketMerge]:
    """The trail writes of accepted readings: every reading with a trail field is a crumb, whatever the
    trip machine makes of it (late, idle, a redelivery), packed into one max-merge per bucket."""
    merges: list[BucketMerge] = []
    for pseudo_vin, readings in groups.items():
        merges += pack(pseudo_vin, filter(None, map(crumb_of, readings)))
    return merges


@dataclass(slots=True)
class _Vehicle:
    state: VehicleTrips
    version: str | None
    """``lastUpdate`` of the stored item (None: no item)."""
    outbox: list[CompletedTrip]


class TripPlanner:
    """The trip machines of the vehicles this processor owns (its shard lease), cached between batches.

    A vehicle is loaded from ``trip-state`` the first time it is seen; after that the cache is the
    truth, until a conditional write says otherwise (``adopt``) or the lease is lost (the process ends).
    """

    def __init__(self, machine: TripStateMachine) -> None:
        self._machine = machine
        self._vehicles: dict[str, _Vehicle] = {}

    def unknown(self, pseudo_vins: Iterable[str]) -> list[str]:
        return [pv for pv in pseudo_vins if pv not in self._vehicles]

    def adopt(self, pseudo_vin: str, item: TripStateItem | None) -> None:
        """Take the stored item (None: no item) as this vehicle's state."""
        if item is None:
            self._vehicles[pseudo_vin] = _Vehicle(VehicleTrips(pseudo_vin), None, [])
            return
        self._vehicles[pseudo_vin] = _Vehicle(  # a mark's version is "": no item stored
            state_from_item(item),
            item.lastUpdate or None,
            outbox_of(item),
        )

    def plan(self, pseudo_vin: str, readings: Iterable[VehicleReading]) -> VehicleTripPlan:
        vehicle = self._vehicles[pseudo_vin]
        effects = TripEffects()
        for reading in readings:
            self._machine.apply(vehicle.state, reading, effects)
        return VehicleTripPlan(
            pseudo_vin=pseudo_vin,
            seals=effects.seals,
            outbox=vehicle.outbox + effects.completed,
            new_completions=len(effects.completed),
            state=state_fields(vehicle.state),
            expected_last_update=vehicle.version,
            write=effects.changed,
        )

    def committed(self, pseudo_vin: str, version: str | None) -> None:
        vehicle = self._vehicles[pseudo_vin]
        vehicle.version = version
        vehicle.outbox = []
