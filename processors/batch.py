"""A batch of Kinesis records -> a ``WritePlan``: what to write, with no AWS call made.

The plan is what the executor carries out; the last stream position it covers is what gets checkpointed
once every write in it has succeeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from processors.decode import Decoder
from processors.errors import InvalidRecord, RejectReason, StaleTripState
from processors.pseudonymize import Pseudonymizer
from processors.settle import MachineInput, SettleBuffer
from processors.signal_bounds import SignalBounds, bound_signals
from processors.trail import BucketMerge, crumb_of, pack
from processors.trip_items import outbox_of, state_fields, state_from_item
from processors.trips import (
    CompletedTrip,
    SegmentSeal,
    TripEffects,
    TripStateMachine,
    VehicleTripPlan,
    VehicleTrips,
    recent_trip,
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
    seals: list[SegmentSeal] = field(default_factory=list)
    new_completions: int = 0
    journal: list[VehicleReading] = field(default_factory=list)
    """Inputs consumed since the last durable write: re-applied over another writer's state (``replan``)."""
    dirty: bool = False
    """The state moved since the last durable write (the mark, the live breadcrumb count...)."""
    urgent: bool = False
    """A transition (start, stop, resume, completion, seal): written at the next flush, not at the
    checkpoint."""


def _shape(state: VehicleTrips) -> tuple[object, ...]:
    """What a transition changes; the mark and the running counts are not part of it."""
    trip = state.trip
    if trip is None:
        return (None,)
    return (trip.trip_id, trip.status, trip.gap_start_ms, trip.segments)


@dataclass(frozen=True, slots=True)
class LateAfterArchive:
    """A record whose event time falls in a completed trip's span but that arrived after the trip's
    completion point R: its crumb is on the live trail, never in that trip's archive (which is kept as it
    is, see docs/design.md). Counted and logged (``late_after_archive``), never silently dropped."""

    pseudo_vin: str
    trip_id: str
    event_time_ms: int
    arrival_ms: int


def late_after_archive(state: VehicleTrips, reading: VehicleReading) -> LateAfterArchive | None:
    """The completed trip among the vehicle's ``recent`` whose archive ``reading`` missed, if any: its
    span holds the record's event time and the record arrived after R. Arrival as the trail keeps it
    (whole seconds, never before the event time's second: ``processors.trail``), so this is exactly "its
    crumb is not among the trip's rows" (``trail.trip_rows``)."""
    t = reading.event_time_ms
    arrival_s = max(reading.position.arrival_ms // 1000, t // 1000)
    for recent in reversed(state.recent):
        start, end, completion = recent[0], recent[1], recent[2]
        if start <= t <= end:
            if arrival_s <= completion // 1000:
                return None
            return LateAfterArchive(
                state.pseudo_vin, recent_trip(state.pseudo_vin, recent), t, reading.position.arrival_ms
            )
    return None


MAX_STRAGGLERS = 256
"""Stragglers kept per vehicle (see ``TripPlanner._stragglers``): beyond it the oldest go unchecked."""


class TripPlanner:
    """The trip machines of the vehicles this processor owns (its shard lease), cached between batches,
    fed through a ``SettleBuffer`` in event-time order.

    A vehicle is loaded from ``trip-state`` the first time it is seen; after that the cache is the
    truth, until a conditional write says otherwise (``replan``) or the lease is lost (the process ends).

    Cadence: ``receive`` buffers a record and consumes whatever settles; a transition makes the vehicle's
    plan due at the next flush (``due(everything=False)``), anything else (mark, counts) waits for the
    checkpoint flush (``due(everything=True)``), which must precede every checkpoint. Records are
    consumed in event order, so the persisted mark alone says what was consumed; a checkpoint stays
    before the oldest record still unsettled (``oldest``).
    """

    def __init__(self, machine: TripStateMachine, settle_ms: int | None = None) -> None:
        self._machine = machine
        self._vehicles: dict[str, _Vehicle] = {}
        self._settle: SettleBuffer[VehicleReading] = SettleBuffer(
            machine.thresholds.gap_ms if settle_ms is None else settle_ms
        )
        self.late_for_machine = 0
        """Records that arrived at or below their vehicle's mark: never drive the machine (counted)."""
        self.late_after_archive: list[LateAfterArchive] = []
        """Records that arrived after the completion point of the recent trip their event time falls in
        (at-least-once: a redelivery counts again); the caller takes and reports them."""
        self._max_t: dict[str, int] = {}
        self._stragglers: dict[str, list[VehicleReading]] = {}
        """Per vehicle, records received a gap or more behind its newest event time that matched no
        recent trip: the trip they belong to may be completed by a record still settling (then they
        arrived after its R). Checked when the machine completes a trip (``_check_stragglers``)."""

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

    # --- settled intake ---------------------------------------------------------------------------------

    def receive(self, reading: VehicleReading, key: bytes, previous: StreamPosition | None) -> bool:
        """Buffer one record (its vehicle adopted), in stream order, and consume what settles.
        ``key`` breaks event-time ties (the record's bytes); ``previous`` is the position just before it
        (where a checkpoint may go while it is unsettled). False: late-for-machine, not buffered."""
        state = self._vehicles[reading.pseudo_vin].state
        t = reading.event_time_ms
        newest = self._max_t.get(reading.pseudo_vin)
        self._max_t[reading.pseudo_vin] = t if newest is None else max(newest, t)
        # Only a record received a gap or more behind its vehicle's newest can have arrived after the
        # completion point of its own trip (completed by a record at least a gap after its stop).
        straggler = newest is not None and t + self._machine.thresholds.gap_ms <= newest
        late = state.high_water_ms is not None and t <= state.high_water_ms
        if late and (missed := late_after_archive(state, reading)) is not None:
            self.late_after_archive.append(missed)
        elif straggler:
            held = self._stragglers.setdefault(reading.pseudo_vin, [])
            held[:] = [*held[-(MAX_STRAGGLERS - 1) :], reading]
        if late:
            self.late_for_machine += 1
            return False
        arrival = reading.position.arrival_ms
        entry = MachineInput(t, arrival, key, reading.position, reading, previous)
        self._settle.add(reading.pseudo_vin, entry)
        self._consume(self._settle.advance())
        return True

    def tick(self, clock_ms: int) -> None:
        """The stream clock moved without a record (an empty poll, caught up): consume what settles."""
        self._consume(self._settle.advance(clock_ms))

    def drain(self) -> None:
        """Consume everything buffered (SHARD_END: no later record of this shard can come)."""
        self._consume(self._settle.drain_all())

    def oldest(self) -> MachineInput[VehicleReading] | None:
        """The oldest record still unsettled: a checkpoint must stay before it."""
        return self._settle.oldest()

    @property
    def unsettled(self) -> int:
        return len(self._settle)

    def _consume(self, settled: dict[str, list[MachineInput[VehicleReading]]]) -> None:
        for pseudo_vin, inputs in settled.items():
            self.consume(pseudo_vin, [i.value for i in inputs])

    # --- consumption and plans ----------------------------------------------------------------------------

    def consume(self, pseudo_vin: str, readings: Iterable[VehicleReading]) -> None:
        """Apply readings (already in event order) to the vehicle's machine; remember what the next write
        must carry."""
        vehicle = self._vehicles[pseudo_vin]
        effects = TripEffects()
        machine, state = self._machine, vehicle.state
        for reading in readings:
            before = _shape(state)
            machine.apply(state, reading, effects)
            if _shape(state) != before:
                vehicle.urgent = True
            vehicle.journal.append(reading)
        if effects.completed or effects.seals:
            vehicle.urgent = True
        vehicle.dirty = vehicle.dirty or effects.changed
        vehicle.seals += effects.seals
        vehicle.outbox += effects.completed
        if effects.completed and pseudo_vin in self._stragglers:
            self._check_stragglers(pseudo_vin, effects.completed)
        vehicle.new_completions += len(effects.completed)
        if not (vehicle.dirty or vehicle.urgent):
            vehicle.journal.clear()  # nothing moved: nothing to re-apply over another writer's state

    def _check_stragglers(self, pseudo_vin: str, completed: Sequence[CompletedTrip]) -> None:
        """The vehicle's stragglers against the trips just completed: one in a trip's span that arrived
        after its R is ``LateAfterArchive``; one at or before a completed trip's end is settled either way
        (an earlier trip was completed before it arrived, so it was checked against ``recent``)."""
        held = self._stragglers.pop(pseudo_vin)
        for trip in completed:
            for reading in held:
                t = reading.event_time_ms
                arrival_s = max(reading.position.arrival_ms // 1000, t // 1000)
                if trip.start_time_ms <= t <= trip.end_time_ms and arrival_s > trip.completion_ms // 1000:
                    self.late_after_archive.append(
                        LateAfterArchive(pseudo_vin, trip.trip_id, t, reading.position.arrival_ms)
                    )
            held = [r for r in held if r.event_time_ms > trip.end_time_ms]
        if held:
            self._stragglers[pseudo_vin] = held

    def plan_for(self, pseudo_vin: str) -> VehicleTripPlan:
        """The vehicle's write: everything it must carry since its last durable write."""
        vehicle = self._vehicles[pseudo_vin]
        return VehicleTripPlan(
            pseudo_vin=pseudo_vin,
            seals=list(vehicle.seals),
            outbox=list(vehicle.outbox),
            new_completions=vehicle.new_completions,
            state=state_fields(vehicle.state),
            expected_last_update=vehicle.version,
            write=vehicle.dirty,
        )

    def plan(self, pseudo_vin: str, readings: Iterable[VehicleReading]) -> VehicleTripPlan:
        """``consume`` then ``plan_for``: readings applied now, in the order given."""
        self.consume(pseudo_vin, readings)
        return self.plan_for(pseudo_vin)

    def due(self, *, everything: bool) -> list[VehicleTripPlan]:
        """Plans to write now: vehicles with a transition (or an outbox left over), and with
        ``everything`` (the checkpoint flush) every vehicle whose state moved since its last write."""
        return [
            self.plan_for(pv)
            for pv, v in self._vehicles.items()
            if v.urgent or v.outbox or v.seals or (everything and v.dirty)
        ]

    def replan(self, stale: StaleTripState) -> VehicleTripPlan:
        """Another writer moved this vehicle first: take what it stored and consume the journal again
        on top (what it already applied falls under its mark)."""
        journal = self._vehicles[stale.pseudo_vin].journal
        self.adopt(stale.pseudo_vin, stale.current)
        self.consume(stale.pseudo_vin, journal)
        vehicle = self._vehicles[stale.pseudo_vin]
        vehicle.dirty = True
        return self.plan_for(stale.pseudo_vin)

    def committed(self, pseudo_vin: str, version: str | None) -> None:
        self._vehicles[pseudo_vin] = _Vehicle(self._vehicles[pseudo_vin].state, version, [])

    def pending(self, pseudo_vin: str) -> VehicleTrips:
        """The vehicle's machine state in memory (tests, inspection)."""
        return self._vehicles[pseudo_vin].state
