"""The trips of one shard lease: a live view within seconds, an exact machine behind the allowed lateness.

Design: docs/proposals/live-trips.md. Per vehicle, two runs of one ``TripStateMachine``:

- the **exact** machine (``VehicleTrips``, persisted as ``trip-state``'s ``machine``) consumes the vehicle's
  records in ``Step.order`` once they are settled (``processors.settle``: no earlier record can still arrive
  within the allowed lateness L). Its completions and seals are what is archived;
- the **live view** is the exact machine plus every unsettled record, in order: the early pane a reader of
  ``trip-state`` sees, within a poll of a transition. Built incrementally while records arrive in order,
  rebuilt from the exact machine when one arrives out of order. Never persisted as a machine: a restart
  rebuilds it from the records the checkpoint makes the KCL redeliver.

**Late for the machine** (counted in ``late_for_machine``, never consumed; still a crumb of the trail and a
``vehicle-state`` update): a record at or below the vehicle's mark (a redelivery, or late), below the newest
event time the exact machine consumed for it (idle records included), or more than L older than the newest
event time received for it. A late record whose event time falls in a recent archived trip that it missed is
``LateAfterArchive``, with the trip's id.

**Cadence** (``due``): a live transition (start, stop, resume, end), a completion or a seal is written at
the next flush; live progress (``lastEventTime``, ``breadcrumbCount``) at most every ``progress_ms``; the
rest of the exact machine at the checkpoint flush (``due(everything=True)``), which must precede every
checkpoint, which stays before the oldest unsettled record (``oldest``). **Catching up** (R more than L
before the wall clock), a vehicle's item is written at most every ``progress_ms``, whatever moved, and at
the checkpoint flush: a slow reporter replays many trips in seconds, and its completions, creations and
deletions then go out together, once per cadence, instead of at each of them (no on-time archive either:
``_complete_on_time``).

**A shard split** (``hand_over``): the unsettled records of each vehicle with a trip (or a moving record
among them) are stored with its item (``machine.held``) instead of being consumed out of order; the child's
processor puts them back into its settle buffer when it adopts the vehicle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from processors.errors import StaleTripState
from processors.ports import Hold, Staged, take_unwritten
from processors.settle import Pending, SettleBuffer
from processors.signals import parse_time
from processors.trip_items import item_fields, outbox_of, state_from_item
from processors.trips import (
    CompletedTrip,
    SegmentSeal,
    Step,
    TripEffects,
    TripStateMachine,
    TripStatus,
    VehicleTripPlan,
    VehicleTrips,
    consumed,
    recent_trip,
    step_of,
)
from schemas.items import TripStateItem
from schemas.records import KinesisRecord, StreamPosition, VehicleReading

DEFAULT_LATENESS_MS = 30_000
DEFAULT_PROGRESS_MS = 10_000


@dataclass(frozen=True, slots=True)
class LateAfterArchive:
    """A record whose event time falls in a completed trip's span (or a sealed segment's) but that arrived
    after its completion point R: its crumb is on the live trail, never in that archive (which is kept as it
    is, see docs/design.md). Counted and logged (``late_after_archive``), never silently dropped."""

    pseudo_vin: str
    trip_id: str
    event_time_ms: int
    arrival_ms: int


@dataclass(frozen=True, slots=True)
class TripRenamed:
    """A record earlier than the live trip's start arrived late: the live trip now starts earlier, under
    another id. Logged with both ids (the archive takes the new one)."""

    pseudo_vin: str
    old_trip_id: str
    new_trip_id: str


def late_after_archive(pseudo_vin: str, state: VehicleTrips, step: Step) -> LateAfterArchive | None:
    """The archive (a recent completed trip's, or a sealed segment of the open trip) that ``step``, received
    now, missed, if any: its span holds the record's event time and the record arrived after its R. R is
    the stream clock when the exact machine consumed the completing (sealing) record, the greatest arrival
    received by then: a record with a later arrival was received after the archive's rows were chosen. (A
    redelivery of a record that made it has an arrival at or before R: it is not counted.)"""
    t = step.t_ms
    trip = state.trip
    if (
        trip is not None
        and trip.sealed_through_ms is not None
        and trip.start_time_ms <= t <= trip.sealed_through_ms
    ):
        if trip.sealed_at_ms is not None and step.arrival_ms > trip.sealed_at_ms:
            return LateAfterArchive(pseudo_vin, trip.trip_id, t, step.arrival_ms)
        return None
    for recent in reversed(state.recent):
        start, end, completion = recent[0], recent[1], recent[2]
        if start <= t <= end:
            if step.arrival_ms <= completion:
                return None
            return LateAfterArchive(pseudo_vin, recent_trip(pseudo_vin, recent), t, step.arrival_ms)
    return None


def clone(state: VehicleTrips) -> VehicleTrips:
    return replace(
        state, trip=replace(state.trip) if state.trip is not None else None, recent=list(state.recent)
    )


def _shape(state: VehicleTrips) -> tuple[object, ...]:
    """What a transition changes; the mark and the running counts are not part of it."""
    trip = state.trip
    if trip is None:
        return (None,)
    return (trip.trip_id, trip.status, trip.gap_start_ms)


def _progress(state: VehicleTrips) -> tuple[int, int] | None:
    """What a reader's ``lastEventTime`` and ``breadcrumbCount`` show: frozen at the stop while ENDING."""
    trip = state.trip
    return None if trip is None else (trip.end_time_ms, trip.breadcrumb_count)


def _shown(vehicle: _Vehicle) -> VehicleTrips:
    """What ``trip-state``'s reader fields show: the live view's trip; once the live view has ended it,
    the exact machine's until an archive of it is stored (the trip never vanishes before it is archived):
    the on-time one (written before the item, when it is in the same plan) or the final one."""
    if vehicle.live.trip is not None:
        return vehicle.live
    trip = vehicle.exact.trip
    if trip is not None and trip.trip_id in vehicle.on_time_sent:
        return vehicle.live
    return vehicle.exact


@dataclass(slots=True)
class _Vehicle:
    exact: VehicleTrips
    live: VehicleTrips
    version: str | None
    """``lastUpdate`` of the stored item (None: no item)."""
    outbox: list[CompletedTrip]
    held: list[Step] = field(default_factory=list)
    """Records handed over by a parent shard (stored in the item), not consumed yet."""
    seals: list[SegmentSeal] = field(default_factory=list)
    new_completions: int = 0
    journal: list[Step] = field(default_factory=list)
    """Steps the exact machine consumed since the last durable write: re-applied over another writer's
    state (``replan``)."""
    dirty: bool = False
    """The exact machine moved since the last durable write."""
    urgent: bool = False
    """A completion or a seal (or held records): written at the next flush."""
    written_shape: tuple[object, ...] = (None,)
    written_progress: tuple[int, int] | None = None
    written_ms: int = 0
    writes: int = 0
    """Durable writes of this vehicle by this process: a staged checkpoint's mark (``stage``)."""
    frontier_ms: int | None = None
    """The newest event time the exact machine consumed (idle records included)."""
    heard_ms: int | None = None
    """Arrival of the newest record received (``heardAt``)."""
    on_time: list[CompletedTrip] = field(default_factory=list)
    """Trips the live view completed, their on-time archives not written yet."""
    on_time_sent: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Trip id -> (start, end) of its newest on-time archive (planned or stored), until the exact machine
    completes it: the live view completes a trip again at every rebuild, archived again only if it moved."""


class TripPlanner:
    """The trip machines of the vehicles this processor owns (its shard lease), cached between batches (see
    the module docstring). A vehicle is loaded from ``trip-state`` the first time it is seen; after that the
    cache is the truth, until a conditional write says otherwise (``replan``) or the lease is lost."""

    def __init__(
        self,
        machine: TripStateMachine,
        lateness_ms: int = DEFAULT_LATENESS_MS,
        progress_ms: int = DEFAULT_PROGRESS_MS,
    ) -> None:
        self._machine = machine
        self._vehicles: dict[str, _Vehicle] = {}
        self._settle = SettleBuffer(lateness_ms)
        self.lateness_ms = lateness_ms
        self.progress_ms = progress_ms
        self.late_for_machine = 0
        """Records that never drive the machine (see the module docstring)."""
        self.late_after_archive: list[LateAfterArchive] = []
        """Records that missed the archive of the trip or segment their event time falls in
        (at-least-once: a redelivery counts again); the caller takes and reports them."""
        self.renamed: list[TripRenamed] = []
        """Live trips renamed by a late earlier record; the caller takes and reports them."""
        self._previous: StreamPosition | None = None
        """The position of the last record that went by (``add``, ``passed``)."""
        self._now_ms: int | None = None
        """The wall clock of the newest ``add`` (None: not known, taken as live)."""

    def unknown(self, pseudo_vins: Iterable[str]) -> list[str]:
        return [pv for pv in pseudo_vins if pv not in self._vehicles]

    def adopt(self, pseudo_vin: str, item: TripStateItem | None) -> None:
        """Take the stored item (None: no item) as this vehicle's state; records held in it go back into
        the settle buffer."""
        vehicle = self._vehicles[pseudo_vin] = _load(pseudo_vin, item)
        for step in vehicle.held:
            self._accept(pseudo_vin, vehicle, Pending(step))

    # --- intake -----------------------------------------------------------------------------------------

    def add(self, reading: VehicleReading, record: KinesisRecord, now_ms: int) -> None:
        """``WriteBuffer.add``: the record (its vehicle adopted), in stream order."""
        self._now_ms = now_ms
        self.receive(reading.pseudo_vin, step_of(reading, record.data), record.position, self._previous)
        self._previous = record.position

    def passed(self, position: StreamPosition) -> None:
        """A record the machine does not see (a dead letter) went by: a checkpoint may go past it."""
        self._previous = position

    def holds_back(self) -> Hold | None:
        """A checkpoint stays before the oldest record the exact machine has not consumed."""
        oldest = self._settle.oldest()
        return Hold(oldest.previous) if oldest is not None else None

    def receive(
        self, pseudo_vin: str, step: Step, position: StreamPosition, previous: StreamPosition | None
    ) -> bool:
        """One record (its vehicle adopted), in stream order: buffered for the exact machine, applied to the
        live view, and whatever settles consumed. ``previous`` is the position just before it (where a
        checkpoint may go while it is unsettled). False: late for the machine, not buffered."""
        vehicle = self._vehicles[pseudo_vin]
        t = step.t_ms
        received = self._settle.newest(pseudo_vin)
        newest = received[0] if received is not None else None
        vehicle.heard_ms = max(vehicle.heard_ms or step.arrival_ms, step.arrival_ms)
        late = (
            consumed(vehicle.exact, step)
            or (vehicle.frontier_ms is not None and t < vehicle.frontier_ms)
            or (newest is not None and t + self.lateness_ms < newest)
        )
        if late:
            self.late_for_machine += 1
            # A record received before its trip's completion (or seal) was consumed arrived by its R: its
            # crumb is among the archive's rows. Only one received after that can have missed it.
            missed = late_after_archive(pseudo_vin, vehicle.exact, step)
            if missed is not None:
                self.late_after_archive.append(missed)
            return False
        self._accept(pseudo_vin, vehicle, Pending(step, position, previous))
        self._consume(self._settle.advance())
        return True

    def _accept(self, pseudo_vin: str, vehicle: _Vehicle, pending: Pending) -> None:
        step = pending.step
        newest = self._settle.newest(pseudo_vin)  # the greatest order received before it, not late
        self._settle.add(pseudo_vin, pending)
        if newest is None or step.order > newest:
            effects = TripEffects()
            self._machine.apply(vehicle.live, step, effects, self._settle.received_ms)
            self._complete_on_time(vehicle, effects.completed)
        else:
            self._rebuild_live(pseudo_vin, vehicle)

    def _complete_on_time(self, vehicle: _Vehicle, completed: Iterable[CompletedTrip]) -> None:
        """The live view completed these trips: archive each on time (``provisional``) while the exact
        machine, L behind, still has it open. R is the stream clock now. The segments are the exact
        machine's (the ones stored), the rest is read from the trail."""
        trip = vehicle.exact.trip
        for done in completed:
            if trip is None or trip.trip_id != done.trip_id:
                continue  # the exact machine completed it already: its archive is the final one
            if self._now_ms is not None and self._now_ms - done.completion_ms > self.lateness_ms:
                # Catching up (R is more than L ago): reading L more of the stream takes less than L, so
                # the final archive comes sooner than the on-time one would be of use; it would only cost.
                continue
            span = (done.start_time_ms, done.end_time_ms)
            if vehicle.on_time_sent.get(done.trip_id) == span:
                continue
            vehicle.on_time_sent[done.trip_id] = span
            vehicle.on_time = [c for c in vehicle.on_time if c.trip_id != done.trip_id]
            vehicle.on_time.append(
                replace(done, segments=trip.segments, sealed_through_ms=trip.sealed_through_ms)
            )
            vehicle.urgent = True

    def tick(self, clock_ms: int) -> None:
        """The stream clock moved without a record (an empty poll, caught up): consume what settles."""
        self._consume(self._settle.advance(clock_ms))

    def hand_over(self) -> None:
        """SHARD_END: no later record of this shard can come, and the child shards' processors take over.
        Each vehicle's unsettled records are held in its item for them (when it has a trip, or a record
        among them could start one); the others are consumed now (an idle vehicle's idle records change
        nothing)."""
        start = self._machine.thresholds.start_speed_mph
        for pseudo_vin in self._settle.vehicles():
            vehicle = self._vehicles[pseudo_vin]
            steps = [p.step for p in self._settle.take(pseudo_vin)]
            moving = any(s.speed is not None and s.speed > start for s in steps)
            if vehicle.exact.trip is not None or vehicle.live.trip is not None or moving:
                vehicle.held = steps
                vehicle.urgent = vehicle.dirty = True
            else:
                self.consume(pseudo_vin, steps, self._settle.received_ms)

    @property
    def unsettled(self) -> int:
        return len(self._settle)

    def _consume(self, settled: dict[str, list[Step]]) -> None:
        for pseudo_vin, steps in settled.items():
            self.consume(pseudo_vin, steps, self._settle.received_ms)

    # --- the exact machine ------------------------------------------------------------------------------

    def consume(self, pseudo_vin: str, steps: Sequence[Step], clock_ms: int | None = None) -> None:
        """Apply settled steps (in order) to the vehicle's exact machine at stream clock ``clock_ms``;
        remember what the next write must carry."""
        vehicle = self._vehicles[pseudo_vin]
        effects = TripEffects()
        for step in steps:
            self._machine.apply(vehicle.exact, step, effects, clock_ms)
            vehicle.frontier_ms = max(vehicle.frontier_ms or step.t_ms, step.t_ms)
        vehicle.journal += steps
        if vehicle.held:
            taken = set(steps)
            left = [s for s in vehicle.held if s not in taken]
            if len(left) != len(vehicle.held):
                vehicle.held, vehicle.dirty = left, True
        if effects.completed or effects.seals:
            vehicle.urgent = True
        vehicle.dirty = vehicle.dirty or effects.changed
        vehicle.seals += effects.seals
        vehicle.outbox += effects.completed
        for done in effects.completed:
            # Its final archive supersedes the on-time one: one not written yet need not be.
            vehicle.on_time_sent.pop(done.trip_id, None)
            vehicle.on_time = [c for c in vehicle.on_time if c.trip_id != done.trip_id]
        vehicle.new_completions += len(effects.completed)
        if not (vehicle.dirty or vehicle.urgent):
            vehicle.journal.clear()  # nothing moved: nothing to re-apply over another writer's state

    def _rebuild_live(self, pseudo_vin: str, vehicle: _Vehicle) -> None:
        """A record arrived below the live view's newest: replay the exact machine's state and every
        unsettled record, in order. A live trip that now starts earlier is renamed (logged)."""
        before = vehicle.live.trip
        live = clone(vehicle.exact)
        effects = TripEffects()
        for pending in self._settle.pending(pseudo_vin):
            self._machine.apply(live, pending.step, effects, self._settle.received_ms)
        vehicle.live = live
        self._complete_on_time(vehicle, effects.completed)
        after = live.trip
        if (
            before is not None
            and after is not None
            and before.trip_id != after.trip_id
            and after.start_time_ms < before.start_time_ms
        ):
            self.renamed.append(TripRenamed(pseudo_vin, before.trip_id, after.trip_id))

    # --- plans ------------------------------------------------------------------------------------------

    def plan_for(self, pseudo_vin: str) -> VehicleTripPlan:
        """The vehicle's write: everything it must carry since its last durable write."""
        vehicle = self._vehicles[pseudo_vin]
        exact, live = vehicle.exact, vehicle.live
        return VehicleTripPlan(
            pseudo_vin=pseudo_vin,
            seals=list(vehicle.seals),
            outbox=list(vehicle.outbox),
            new_completions=vehicle.new_completions,
            fields=item_fields(pseudo_vin, exact, _shown(vehicle), vehicle.held, vehicle.heard_ms),
            open=exact.trip is not None or live.trip is not None or bool(vehicle.held),
            expected_last_update=vehicle.version,
            on_time=list(vehicle.on_time),
        )

    def due(self, now_ms: int, *, everything: bool) -> list[VehicleTripPlan]:
        """Plans to write now (see the module docstring's cadence); ``everything``: the checkpoint flush."""
        cadenced = not everything and self._catching_up(now_ms)
        return [
            self.plan_for(pv)
            for pv, v in self._vehicles.items()
            if self._is_due(v, now_ms, everything, cadenced)
        ]

    def stage(self, now_ms: int) -> Staged:
        """The vehicles the checkpoint flush would write now, each marked with its vehicle and its count
        of writes (a write since, or a reload by ``replan``, is a later one). Records still unsettled are
        not staged: the watermark of the moment stays before them (``holds_back``)."""
        return {pv: (v, v.writes) for pv, v in self._vehicles.items() if self._is_due(v, now_ms, True, False)}

    def take_staged(self, staged: Staged, share: float, now_ms: int) -> list[VehicleTripPlan]:
        """The plans of ``share`` of the staged vehicles not written since. A vehicle may also be due in
        the same flush: the pipeline writes it once."""
        return [self.plan_for(pv) for pv in take_unwritten(staged, self._unwritten, share)]

    def _unwritten(self, pseudo_vin: str, mark: tuple[_Vehicle, int]) -> bool:
        vehicle, writes = mark
        return self._vehicles.get(pseudo_vin) is vehicle and vehicle.writes == writes

    def _is_due(self, vehicle: _Vehicle, now_ms: int, everything: bool, cadenced: bool) -> bool:
        if cadenced and now_ms < vehicle.written_ms + self.progress_ms:
            return False
        shown = _shown(vehicle)
        if vehicle.urgent or vehicle.outbox or vehicle.seals or _shape(shown) != vehicle.written_shape:
            return True
        if _progress(shown) != vehicle.written_progress and (
            everything or now_ms >= vehicle.written_ms + self.progress_ms
        ):
            return True
        return everything and vehicle.dirty

    def _catching_up(self, now_ms: int) -> bool:
        """R, the greatest arrival received, is more than L ago: a reader of ``trip-state`` sees a past the
        stream left long ago, and a transition shown at once is worth no write of its own."""
        received = self._settle.received_ms
        return received is not None and now_ms - received > self.lateness_ms

    def replan(self, stale: StaleTripState) -> VehicleTripPlan:
        """Another writer moved this vehicle first: take what it stored and consume the journal again on
        top (what it already applied falls under its mark)."""
        old = self._vehicles[stale.pseudo_vin]
        vehicle = self._vehicles[stale.pseudo_vin] = _load(stale.pseudo_vin, stale.current)
        # What this process received stays received; records the other writer held are in our buffer
        # already if they were ever ours (a handed-over vehicle is adopted once).
        vehicle.heard_ms = old.heard_ms
        vehicle.held = old.held
        vehicle.on_time, vehicle.on_time_sent = old.on_time, old.on_time_sent
        self.consume(stale.pseudo_vin, old.journal, self._settle.received_ms)
        self._rebuild_live(stale.pseudo_vin, vehicle)
        vehicle.dirty = True
        return self.plan_for(stale.pseudo_vin)

    def committed(self, pseudo_vin: str, version: str | None, now_ms: int) -> None:
        """The vehicle's plan is durable at ``version`` (written at ``now_ms``)."""
        vehicle = self._vehicles[pseudo_vin]
        vehicle.version = version
        vehicle.outbox, vehicle.seals, vehicle.journal, vehicle.on_time = [], [], [], []
        vehicle.new_completions = 0
        vehicle.dirty = vehicle.urgent = False
        shown = _shown(vehicle)
        vehicle.written_shape, vehicle.written_progress = _shape(shown), _progress(shown)
        vehicle.written_ms = now_ms
        vehicle.writes += 1

    def exact(self, pseudo_vin: str) -> VehicleTrips:
        """The vehicle's exact machine in memory (tests, inspection)."""
        return self._vehicles[pseudo_vin].exact

    def live(self, pseudo_vin: str) -> VehicleTrips:
        """The vehicle's live view (tests, inspection)."""
        return self._vehicles[pseudo_vin].live


def _load(pseudo_vin: str, item: TripStateItem | None) -> _Vehicle:
    if item is None:
        exact = VehicleTrips(pseudo_vin)
        vehicle = _Vehicle(exact, clone(exact), None, [])
    else:
        exact, held = state_from_item(item)
        vehicle = _Vehicle(exact, clone(exact), item.lastUpdate or None, outbox_of(item), held=held)
        # An item of an older version shows its machine; else what it shows is its own (live) shape.
        vehicle.written_shape = _shape(exact) if item.machine is None else _stored_shape(item)
    vehicle.frontier_ms = exact.high_water_ms
    return vehicle


def _stored_shape(item: TripStateItem) -> tuple[object, ...]:
    """The live shape a stored item shows, as ``_shape`` states it."""
    if item.tripId is None or item.status == "IDLE":
        return (None,)
    gap = parse_time(item.gapStartTime) if item.gapStartTime else None
    return (item.tripId, TripStatus(item.status), gap)
