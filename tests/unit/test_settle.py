"""Settled, event-ordered consumption (issue 17): the trip machine's transitions are a function of the
record set, whatever the stream order within the settle window, resends, or crash-and-redeliver."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.batch import TripPlanner
from processors.settle import MachineInput, SettleBuffer
from processors.trip_items import state_fields
from processors.trips import TripEffects, TripStateMachine, TripThresholds, VehicleTrips
from schemas.items import TripStateItem
from schemas.records import Location, StreamPosition, VehicleReading

SHARD = "shardId-000000000000"
T0 = 1_741_185_121_000
GAP_MS = 300_000
D_MS = GAP_MS  # FLEET_TRIP_SETTLE_SECONDS defaults to the gap
VEHICLES = ("a" * 32, "b" * 32)


def position(index: int, arrival_ms: int) -> StreamPosition:
    return StreamPosition(SHARD, str(index + 1), 0, arrival_ms)


def item(n: int, t: int, a: int, vehicle: str = "v") -> MachineInput[str]:
    return MachineInput(t, a, b"%d" % n, position(n, a), f"{vehicle}{n}")


# --- the buffer's rule, by example -------------------------------------------------------------------


def test_an_input_settles_by_event_time_when_its_vehicle_sent_something_d_later() -> None:
    buffer: SettleBuffer[str] = SettleBuffer(settle_ms=10)
    buffer.add("v", item(0, t=100, a=100))
    buffer.add("v", item(1, t=105, a=101))
    assert buffer.advance() == {}
    buffer.add("v", item(2, t=111, a=102))  # 100 + 10 < 111: 100 settles; 105 + 10 is not < 111
    assert {pv: [i.value for i in inputs] for pv, inputs in buffer.advance().items()} == {"v": ["v0"]}
    assert buffer.oldest() is not None and buffer.oldest().value == "v1"  # type: ignore[union-attr]


def test_an_input_settles_by_arrival_and_takes_every_earlier_input_of_its_vehicle() -> None:
    buffer: SettleBuffer[str] = SettleBuffer(settle_ms=10)
    buffer.add("v", item(0, t=50, a=100))
    buffer.add("v", item(1, t=40, a=105))  # earlier in event time, arrived later
    buffer.add("w", item(2, t=60, a=106, vehicle="w"))
    assert buffer.advance() == {}
    settled = buffer.advance(clock_ms=111)  # 100 + 10 < 111: t=50 settles, and t=40 with it
    assert {pv: [i.value for i in inputs] for pv, inputs in settled.items()} == {"v": ["v1", "v0"]}
    assert len(buffer) == 1 and buffer.oldest() is not None
    assert buffer.drain("w")[0].value == "w2" and buffer.oldest() is None


def test_equal_times_are_consumed_together_in_byte_order() -> None:
    buffer: SettleBuffer[str] = SettleBuffer(settle_ms=10)
    buffer.add("v", MachineInput(100, 100, b"z", position(0, 100), "z"))
    buffer.add("v", MachineInput(100, 101, b"a", position(1, 101), "a"))
    buffer.add("v", MachineInput(100, 102, b"m", position(2, 102), "m"))
    assert [i.value for i in buffer.drain_all()["v"]] == ["a", "m", "z"]


def test_a_record_at_or_below_the_mark_is_late_for_the_machine() -> None:
    planner = TripPlanner(TripStateMachine(TripThresholds(gap_ms=GAP_MS)), settle_ms=D_MS)
    planner.adopt("v", None)
    moving = VehicleReading("v", T0, {"vehicleSpeed": 30.0}, position(0, T0))
    assert planner.receive(moving, b"m", None)
    planner.tick(T0 + D_MS + 1)  # settled: the trip starts, the mark is T0
    assert planner.pending("v").trip is not None
    again = VehicleReading("v", T0, {"vehicleSpeed": 30.0}, position(1, T0 + D_MS + 2))
    assert not planner.receive(again, b"m", position(0, T0))
    assert planner.late_for_machine == 1 and planner.unsettled == 0


# --- the property ---------------------------------------------------------------------------------------


class RecordingMachine(TripStateMachine):
    """The unchanged machine, noting every transition (trip, status, stop) and completion per vehicle."""

    def __init__(self) -> None:
        super().__init__(TripThresholds(gap_ms=GAP_MS, segment_breadcrumbs=10**9))
        self.transitions: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.completed: dict[str, list[tuple[Any, ...]]] = defaultdict(list)

    def apply(self, state: VehicleTrips, reading: VehicleReading, effects: TripEffects) -> None:
        before, done = shape(state), len(effects.completed)
        super().apply(state, reading, effects)
        if shape(state) != before:
            self.transitions[state.pseudo_vin].append(shape(state))
        for trip in effects.completed[done:]:
            self.completed[state.pseudo_vin].append(
                (trip.trip_id, trip.start_time_ms, trip.end_time_ms, trip.end_reason)
            )


def shape(state: VehicleTrips) -> tuple[Any, ...]:
    trip = state.trip
    return (None,) if trip is None else (trip.trip_id, trip.status, trip.start_time_ms, trip.gap_start_ms)


@dataclass(frozen=True)
class Sent:
    pseudo_vin: str
    t_ms: int
    a_ms: int
    speed: float | None
    located: bool

    def signals(self) -> dict[str, Any]:
        signals: dict[str, Any] = {}
        if self.speed is not None:
            signals["vehicleSpeed"] = self.speed
        if self.located:
            signals["location"] = Location(39.7, -104.9)
        return signals

    def key(self) -> bytes:
        return orjson.dumps([self.speed, self.located])


speeds = st.sampled_from([0.0, 1.0, 3.0, 5.5, 20.0, 60.0]) | st.none()


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Sent], int]:
    """Every vehicle's records, each arriving within D of its event time; stream order = arrival order;
    plus resends (a record sent again, any time later). Returns (stream, number of resends)."""
    sent: list[Sent] = []
    for pseudo_vin in VEHICLES:
        t = T0
        for dt, speed, located in draw(
            st.lists(
                st.tuples(st.sampled_from([0, 1, 5, 60, 200, 299, 301, 700]), speeds, st.booleans()),
                max_size=40,
            )
        ):
            t += dt * 1000
            jitter = draw(st.integers(0, D_MS - 1))
            sent.append(Sent(pseudo_vin, t, t + jitter, speed, located))
    originals = len(sent)
    for index in draw(st.lists(st.integers(0, max(originals - 1, 0)), max_size=5)) if sent else []:
        record = sent[index]
        delay = draw(st.integers(0, 3 * D_MS))
        sent.append(Sent(record.pseudo_vin, record.t_ms, record.a_ms + delay, record.speed, record.located))
    order = draw(st.permutations(range(len(sent))))
    rank = {i: r for r, i in enumerate(order)}  # ties in arrival: any order
    stream = [sent[i] for i in sorted(range(len(sent)), key=lambda i: (sent[i].a_ms, rank[i]))]
    return stream, len(sent) - originals


@dataclass
class Consumer:
    """The record processor's trip path, without I/O: a durable trip-state per vehicle written on
    transitions and at checkpoints, a checkpoint at the settle watermark, crashes that redeliver."""

    machine: RecordingMachine
    durable: dict[str, TripStateItem] = field(default_factory=dict)
    late: int = 0

    def new_planner(self) -> TripPlanner:
        return TripPlanner(self.machine, settle_ms=D_MS)

    def write(self, planner: TripPlanner, *, everything: bool) -> None:
        for plan in planner.due(everything=everything):
            self.durable[plan.pseudo_vin] = TripStateItem(**plan.state, lastUpdate="x")
            planner.committed(plan.pseudo_vin, "x")


@settings(max_examples=400, deadline=None)
@given(streams(), st.data())
def test_any_order_within_the_window_resends_and_redeliveries_give_the_in_order_transitions(
    sent: tuple[list[Sent], int], data: st.DataObject
) -> None:
    stream, resends = sent
    reference, finals = RecordingMachine(), {}
    for pseudo_vin in VEHICLES:
        state, effects = VehicleTrips(pseudo_vin), TripEffects()
        # Equal records in arrival order: a completion point is its completing record's first arrival.
        ordered = sorted(
            {s for s in stream if s.pseudo_vin == pseudo_vin}, key=lambda s: (s.t_ms, s.key(), s.a_ms)
        )
        for s in ordered:
            reading = VehicleReading(pseudo_vin, s.t_ms, s.signals(), position(0, s.a_ms))
            reference.apply(state, reading, effects)
        finals[pseudo_vin] = stored(TripStateItem(**state_fields(state), lastUpdate="x"))

    consumer = Consumer(RecordingMachine())
    planner = consumer.new_planner()
    restart_at = index = crashes = 0
    while index < len(stream):
        s = stream[index]
        if planner.unknown([s.pseudo_vin]):
            planner.adopt(s.pseudo_vin, consumer.durable.get(s.pseudo_vin))
        reading = VehicleReading(s.pseudo_vin, s.t_ms, s.signals(), position(index, s.a_ms))
        previous = position(index - 1, stream[index - 1].a_ms) if index else None
        planner.receive(reading, s.key(), previous)
        consumer.write(planner, everything=False)  # transitions are written at once
        index += 1
        action = data.draw(st.sampled_from(["next", "next", "checkpoint", "crash"]))
        if action == "checkpoint":
            consumer.write(planner, everything=True)
            oldest = planner.oldest()
            restart_at = int(oldest.position.sequence_number) - 1 if oldest else index
        elif action == "crash" and crashes < 3:
            crashes += 1
            consumer.late += planner.late_for_machine
            planner, index = consumer.new_planner(), restart_at
    planner.drain()  # SHARD_END
    consumer.write(planner, everything=True)
    consumer.late += planner.late_for_machine

    assert dict(consumer.machine.completed) == dict(reference.completed)
    assert dict(consumer.machine.transitions) == dict(reference.transitions)
    empty = TripStateItem(**state_fields(VehicleTrips("")), lastUpdate="x")
    assert {pv: stored(consumer.durable.get(pv, empty)) for pv in VEHICLES} == finals
    if not resends and not crashes:
        assert consumer.late == 0


def stored(item: TripStateItem) -> dict[str, Any]:
    return item.model_dump(exclude={"lastUpdate", "pseudoVin", "outbox"})
