"""Settled, event-ordered consumption (issues 17, 21): the exact trip machine's transitions are a function
of the record set, whatever the stream order within the allowed lateness, resends, or crash-and-redeliver."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.settle import Pending, SettleBuffer
from processors.trip_items import item_fields
from processors.trip_planner import TripPlanner
from processors.trips import Step, TripEffects, TripStateMachine, TripThresholds, VehicleTrips, record_key
from schemas.items import TripStateItem
from schemas.records import StreamPosition

SHARD = "shardId-000000000000"
T0 = 1_741_185_121_000
GAP_MS = 300_000
L_MS = 30_000  # FLEET_TRIP_LATENESS_SECONDS's default
VEHICLES = ("a" * 32, "b" * 32)


def position(index: int, arrival_ms: int) -> StreamPosition:
    return StreamPosition(SHARD, str(index + 1), 0, arrival_ms)


def step(n: int, t: int, a: int, speed: float | None = None, located: bool = False) -> Step:
    return Step(t, b"%07d" % n, a, speed, located, False)


def item(n: int, t: int, a: int) -> Pending:
    return Pending(step(n, t, a), position(n, a))


def names(settled: dict[str, list[Step]]) -> dict[str, list[bytes]]:
    return {pv: [s.key for s in steps] for pv, steps in settled.items()}


# --- the buffer's rule, by example -------------------------------------------------------------------


def test_a_step_settles_by_event_time_when_its_vehicle_sent_something_l_later() -> None:
    buffer = SettleBuffer(lateness_ms=10)
    buffer.add("v", item(0, t=100, a=100))
    buffer.add("v", item(1, t=105, a=101))
    assert buffer.advance() == {}
    buffer.add("v", item(2, t=111, a=102))  # 100 + 10 < 111: 100 settles; 105 + 10 is not < 111
    assert names(buffer.advance()) == {"v": [b"0000000"]}
    oldest = buffer.oldest()
    assert oldest is not None and oldest.step.key == b"0000001"


def test_a_step_settles_by_arrival_and_takes_every_earlier_step_of_its_vehicle() -> None:
    buffer = SettleBuffer(lateness_ms=10)
    buffer.add("v", item(0, t=50, a=100))
    buffer.add("v", item(1, t=40, a=105))  # earlier in event time, arrived later
    buffer.add("w", item(2, t=60, a=106))
    assert buffer.advance() == {}
    settled = buffer.advance(clock_ms=111)  # 100 + 10 < 111: t=50 settles, and t=40 with it
    assert names(settled) == {"v": [b"0000001", b"0000000"]}
    assert len(buffer) == 1 and buffer.oldest() is not None
    assert [p.step.key for p in buffer.take("w")] == [b"0000002"] and buffer.oldest() is None


def test_one_instant_is_consumed_together_in_key_order() -> None:
    buffer = SettleBuffer(lateness_ms=10)
    for n, key in enumerate((b"z", b"a", b"m")):
        buffer.add("v", Pending(Step(100, key, 100 + n, None, False, False), position(n, 100 + n)))
    assert [p.step.key for p in buffer.pending("v")] == [b"a", b"m", b"z"]
    assert [s.key for s in buffer.advance(clock_ms=200)["v"]] == [b"a", b"m", b"z"]


def test_a_held_step_holds_no_checkpoint_back() -> None:
    """A step handed over by a parent shard is durable in trip-state: the checkpoint need not wait for it."""
    buffer = SettleBuffer(lateness_ms=10)
    buffer.add("v", Pending(step(0, t=100, a=100)))
    assert buffer.oldest() is None and len(buffer) == 1
    buffer.add("v", item(1, t=101, a=150))
    oldest = buffer.oldest()
    assert oldest is not None and oldest.step.key == b"0000001"


def test_a_record_at_or_below_the_mark_is_late_for_the_machine() -> None:
    planner = TripPlanner(TripStateMachine(TripThresholds(gap_ms=GAP_MS)), lateness_ms=L_MS)
    planner.adopt("v", None)
    moving = Step(T0, record_key(b"m"), T0, 30.0, False, False)
    assert planner.receive("v", moving, position(0, T0), None)
    assert planner.live("v").trip is not None and planner.exact("v").trip is None  # live at once
    planner.tick(T0 + L_MS + 1)  # settled: the exact trip starts, the mark is (T0, key)
    assert planner.exact("v").trip is not None
    again = Step(T0, record_key(b"m"), T0 + L_MS + 2, 30.0, False, False)
    assert not planner.receive("v", again, position(1, T0 + L_MS + 2), position(0, T0))
    assert planner.late_for_machine == 1 and planner.unsettled == 0
    other = Step(T0, record_key(b"another record of that instant"), T0 + L_MS + 3, 30.0, True, False)
    assert planner.receive("v", other, position(2, T0 + L_MS + 3), position(1, T0 + L_MS + 2))


def test_a_record_more_than_l_behind_its_vehicle_is_late_even_after_a_restart() -> None:
    """Defect 4: a parked vehicle's moving record 30 h late starts no trip, with or without the idle
    records before it consumed (the mark does not move for idle records)."""
    planner = TripPlanner(TripStateMachine(TripThresholds(gap_ms=GAP_MS)), lateness_ms=L_MS)
    planner.adopt("v", None)
    for n in range(5):
        planner.receive(
            "v", step(n, T0 + n * 1000, T0 + n * 1000, 0.0, True), position(n, T0 + n * 1000), None
        )
    late = step(9, T0 - 30 * 3600_000, T0 + 5000, 40.0, True)
    assert not planner.receive("v", late, position(9, T0 + 5000), None)
    planner.tick(T0 + 10 * L_MS)
    assert planner.live("v").trip is None and planner.exact("v").trip is None
    assert planner.late_for_machine == 1


# --- the property ---------------------------------------------------------------------------------------


class RecordingMachine(TripStateMachine):
    """The unchanged machine, noting every transition (trip, status, stop) and completion per vehicle."""

    def __init__(self) -> None:
        super().__init__(TripThresholds(gap_ms=GAP_MS, segment_breadcrumbs=10**9))
        self.transitions: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.completed: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.exact_of: Callable[[str], VehicleTrips] | None = None
        """The planner's exact machines (None: every run is noted, as the reference's)."""

    def apply(
        self, state: VehicleTrips, step: Step, effects: TripEffects, clock_ms: int | None = None
    ) -> None:
        if clock_ms is None or (self.exact_of is not None and state is not self.exact_of(state.pseudo_vin)):
            super().apply(state, step, effects, clock_ms)  # the live view's run: not the exact machine's
            return
        before, done = shape(state), len(effects.completed)
        super().apply(state, step, effects, clock_ms)
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

    def key(self) -> bytes:
        return record_key(orjson.dumps([self.speed, self.located]))

    def step(self) -> Step:
        return Step(self.t_ms, self.key(), self.a_ms, self.speed, self.located, False)


speeds = st.sampled_from([0.0, 1.0, 3.0, 5.5, 20.0, 60.0]) | st.none()


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Sent], int]:
    """Every vehicle's records, each arriving within L of its event time; stream order = arrival order;
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
            jitter = draw(st.integers(0, L_MS - 1))
            sent.append(Sent(pseudo_vin, t, t + jitter, speed, located))
    originals = len(sent)
    for index in draw(st.lists(st.integers(0, max(originals - 1, 0)), max_size=5)) if sent else []:
        record = sent[index]
        delay = draw(st.integers(0, 3 * L_MS))
        sent.append(Sent(record.pseudo_vin, record.t_ms, record.a_ms + delay, record.speed, record.located))
    order = draw(st.permutations(range(len(sent))))
    rank = {i: r for r, i in enumerate(order)}  # ties in arrival: any order
    stream = [sent[i] for i in sorted(range(len(sent)), key=lambda i: (sent[i].a_ms, rank[i]))]
    return stream, len(sent) - originals


@dataclass
class Consumer:
    """The record processor's trip path, without I/O: a durable trip-state per vehicle written when due
    and at checkpoints, a checkpoint at the settle watermark, crashes that redeliver."""

    machine: RecordingMachine
    durable: dict[str, TripStateItem] = field(default_factory=dict)
    late: int = 0

    def new_planner(self) -> TripPlanner:
        planner = TripPlanner(self.machine, lateness_ms=L_MS)
        self.machine.exact_of = planner.exact
        return planner

    def write(self, planner: TripPlanner, now_ms: int, *, everything: bool) -> None:
        for plan in planner.due(now_ms, everything=everything):
            self.durable[plan.pseudo_vin] = TripStateItem(**plan.fields, lastUpdate="x")
            planner.committed(plan.pseudo_vin, "x", now_ms)


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
            reference.apply(state, s.step(), effects, s.a_ms)
        finals[pseudo_vin] = stored(TripStateItem(**item_fields(pseudo_vin, state), lastUpdate="x"))

    consumer = Consumer(RecordingMachine())
    planner = consumer.new_planner()
    restart_at = index = crashes = 0
    while index < len(stream):
        s = stream[index]
        if planner.unknown([s.pseudo_vin]):
            planner.adopt(s.pseudo_vin, consumer.durable.get(s.pseudo_vin))
        previous = position(index - 1, stream[index - 1].a_ms) if index else None
        planner.receive(s.pseudo_vin, s.step(), position(index, s.a_ms), previous)
        consumer.write(planner, s.a_ms, everything=False)  # what is due is written at once
        index += 1
        action = data.draw(st.sampled_from(["next", "next", "checkpoint", "crash"]))
        if action == "checkpoint":
            consumer.write(planner, s.a_ms, everything=True)
            hold = planner.holds_back()
            restart_at = index if hold is None else (int(hold.before.sequence_number) if hold.before else 0)
        elif action == "crash" and crashes < 3:
            crashes += 1
            consumer.late += planner.late_for_machine
            planner, index = consumer.new_planner(), restart_at
    end = max((s.a_ms for s in stream), default=T0) + L_MS + 1
    planner.tick(end)  # the stream's clock moves past every record: everything settles
    consumer.write(planner, end, everything=True)
    consumer.late += planner.late_for_machine

    # A crash replays what the exact machine consumed since its last durable write (transitions other
    # than completions are written at the checkpoint): each happens again, in the same order.
    assert once(consumer.machine.completed) == once(reference.completed)
    assert once(consumer.machine.transitions) == once(reference.transitions)
    empty = TripStateItem(**item_fields("", VehicleTrips("")), lastUpdate="x")
    assert {pv: stored(consumer.durable.get(pv, empty)) for pv in VEHICLES} == finals
    if not resends and not crashes:
        assert consumer.late == 0


def once(seen: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    return {pv: list(dict.fromkeys(items)) for pv, items in seen.items()}


def stored(item: TripStateItem) -> dict[str, Any]:
    """The machine as stored, but for completion points (the stream clock at consumption: arrival times
    decide them)."""
    machine: dict[str, Any] = item.model_dump(include={"machine"})["machine"]
    machine["r"] = [r[:2] + r[3:] for r in machine["r"]]
    return machine


def test_a_late_record_before_the_live_trips_start_renames_it_and_the_archive_takes_the_new_id() -> None:
    """The live trip id is the archived one, but when a record earlier than the live trip's start arrives
    within the allowed lateness: the trip then starts earlier, under another id, and the change is
    reported with both ids (``live_trip_renamed``)."""
    planner = TripPlanner(TripStateMachine(TripThresholds(gap_ms=GAP_MS)), lateness_ms=L_MS)
    planner.adopt("v", None)
    later = Step(T0 + 10_000, record_key(b"later"), T0 + 10_000, 30.0, True, False)
    earlier = Step(T0 + 5_000, record_key(b"earlier"), T0 + 11_000, 30.0, True, False)  # sent late
    planner.receive("v", later, position(0, later.arrival_ms), None)
    live = planner.live("v").trip
    assert live is not None and live.start_time_ms == T0 + 10_000 and not planner.renamed
    planner.receive("v", earlier, position(1, earlier.arrival_ms), position(0, later.arrival_ms))
    (renamed,) = planner.renamed
    assert renamed.old_trip_id == live.trip_id
    live = planner.live("v").trip
    assert live is not None and live.start_time_ms == T0 + 5_000 and renamed.new_trip_id == live.trip_id
    planner.tick(T0 + 11_000 + L_MS + 1)  # settled: the exact machine agrees with the renamed live trip
    exact = planner.exact("v").trip
    assert exact is not None and exact.trip_id == renamed.new_trip_id


def drive(planner: TripPlanner, speeds: list[float], start_s: int = 0) -> None:
    """One located record a second at ``speeds``, each arriving on time."""
    for n, speed in enumerate(speeds, start=start_s):
        t = T0 + n * 1000
        planner.receive("v", Step(t, record_key(b"%d" % n), t, speed, True, False), position(n, t), None)


def test_while_waiting_out_the_gap_count_and_last_event_stay_at_the_stop_unless_the_trip_resumes() -> None:
    """What a reader sees is what the archive will hold: the trip ends at the stop, so the records of a
    parked vehicle waiting out the gap are not counted, nor move ``lastEventTime``, until it drives on."""
    planner = TripPlanner(TripStateMachine(TripThresholds(gap_ms=GAP_MS)), lateness_ms=L_MS)
    planner.adopt("v", None)
    drive(planner, [30.0] * 10 + [0.0] + [0.0] * 20)  # 10 s driving, the stop at 10 s, 20 s parked
    (plan,) = planner.due(T0, everything=True)
    assert (plan.fields["status"], plan.fields["breadcrumbCount"]) == ("ENDING", 11)
    assert plan.fields["lastEventTime"] == plan.fields["gapStartTime"]
    drive(planner, [30.0], start_s=31)  # drives on: the wait is part of the trip after all
    (plan,) = planner.due(T0, everything=True)
    assert (plan.fields["status"], plan.fields["breadcrumbCount"]) == ("ACTIVE", 32)


def test_a_trip_the_live_view_ended_is_archived_on_time_then_finally() -> None:
    """The live view ends a trip (gap after the stop): the next write carries its on-time archive, and the
    item (written after it) stops showing the trip. L later the exact machine completes it: its final
    archive, and the item goes. Until the on-time archive is stored, the trip shows as ENDING: it never
    vanishes before an archive of it exists."""
    planner = TripPlanner(TripStateMachine(TripThresholds(gap_ms=60_000)), lateness_ms=L_MS)
    planner.adopt("v", None)
    drive(planner, [30.0] * 5 + [0.0] * 66)  # the stop at 5 s; the record at 65 s completes it (live)
    exact = planner.exact("v").trip
    assert planner.live("v").trip is None and exact is not None
    (plan,) = planner.due(T0, everything=False)
    (on_time,) = plan.on_time
    assert (on_time.trip_id, on_time.start_time_ms, on_time.end_time_ms) == (
        exact.trip_id,
        T0,
        T0 + 5_000,
    )
    assert on_time.completion_ms == T0 + 65_000  # R: the stream clock, the completing record's arrival
    # The committer stores the on-time archive before the item, so the item may stop showing the trip.
    assert plan.open and plan.fields["status"] == "IDLE" and not plan.outbox
    assert plan.fields["machine"].i == exact.trip_id  # the exact machine still holds it
    planner.committed("v", "1", T0)
    drive(planner, [0.0] * 3, start_s=71)  # the live view completes nothing new: no second archive
    assert all(not p.on_time for p in planner.due(T0, everything=True))
    planner.tick(T0 + 71_000 + L_MS)  # the exact machine completes it: the final archive, the item goes
    (plan,) = planner.due(T0, everything=False)
    assert len(plan.outbox) == 1 and not plan.open and not plan.on_time


def test_a_record_of_a_sealed_segment_arriving_after_the_seal_is_counted_with_the_open_trips_id() -> None:
    """Beyond the allowed lateness nothing is lost silently, sealed segments included: a record whose
    event time falls in a segment already sealed (its rows chosen against the seal's R) is counted as
    ``LateAfterArchive`` with the open trip's id; one that arrived by the seal's R is in the segment."""
    thresholds = TripThresholds(gap_ms=GAP_MS, segment_breadcrumbs=10)
    planner = TripPlanner(TripStateMachine(thresholds), lateness_ms=L_MS)
    planner.adopt("v", None)
    drive(planner, [30.0] * 60)  # 60 s driving: segments sealed every 10 located records
    trip = planner.exact("v").trip
    assert trip is not None and trip.segments >= 2 and trip.sealed_at_ms is not None
    sealed_through = trip.sealed_through_ms
    assert sealed_through is not None
    late = Step(T0 + 3_000, record_key(b"resent"), T0 + 61_000, 30.0, True, False)  # a resend, 58 s late
    assert not planner.receive("v", late, position(100, late.arrival_ms), None)
    (missed,) = planner.late_after_archive
    assert (missed.trip_id, missed.event_time_ms) == (trip.trip_id, T0 + 3_000)


def test_catching_up_the_item_is_written_at_the_progress_cadence_with_every_trip_completed_meanwhile() -> (
    None
):
    """R more than L before the wall clock (a backlog): a slow reporter replays many trips in seconds, and
    a write per transition would show a reader nothing it could use. The item is then written at most
    every ``progress_ms`` (and at the checkpoint flush), carrying every trip completed meanwhile; live,
    a completion is written at the next flush."""

    def three_trips(planner: TripPlanner) -> None:
        for trip in range(3):  # each: 5 s moving, then parked past the 60 s gap
            drive(planner, [30.0] * 5 + [0.0] * 70, start_s=trip * 75)

    planner = TripPlanner(
        TripStateMachine(TripThresholds(gap_ms=60_000)), lateness_ms=L_MS, progress_ms=10_000
    )
    planner.adopt("v", None)
    drive(planner, [30.0])
    now = T0 + 3_600_000  # the records arrived an hour ago
    (first,) = planner.due(now, everything=False)  # never written: written at once
    assert first.fields["status"] == "ACTIVE"
    planner.committed("v", "1", now)
    three_trips(planner)
    assert len(planner.exact("v").recent) >= 2  # the exact machine completed trips meanwhile ...
    assert planner.due(now + 9_999, everything=False) == []  # ... written only once the cadence comes
    (plan,) = planner.due(now + 10_000, everything=False)
    assert len(plan.outbox) == len(planner.exact("v").recent) >= 2
    assert [p.pseudo_vin for p in planner.due(now + 1, everything=True)] == ["v"]  # the checkpoint: at once

    live = TripPlanner(TripStateMachine(TripThresholds(gap_ms=60_000)), lateness_ms=L_MS, progress_ms=10_000)
    live.adopt("v", None)
    drive(live, [30.0])
    assert [p.fields["status"] for p in live.due(T0 + 1_000, everything=False)] == ["ACTIVE"]
    live.committed("v", "1", T0 + 1_000)
    drive(live, [30.0] * 4 + [0.0] * 70, start_s=1)  # the live view completes the trip at 65 s
    (plan,) = live.due(T0 + 75_000, everything=False)  # R 1 s ago: written at the next flush
    assert plan.on_time and plan.fields["status"] == "IDLE"
