"""The trip state machine: every transition and boundary, and exactly-once effects under replay; and the
archive computed from the trail's rows (``processors.archive``: fill-forward, battery source, aggregates)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.archive import archive_trip, read_gzip_json
from processors.trail import Crumb, crumb_of
from processors.trip_items import item_fields, state_from_item
from processors.trips import (
    CompletedTrip,
    EndReason,
    Step,
    TripEffects,
    TripStateMachine,
    TripStatus,
    TripThresholds,
    VehicleTrips,
    complete,
    step_of,
    trip_id,
)
from schemas.items import TripIndexItem, TripStateItem
from schemas.records import Location, StreamPosition, VehicleReading

PV = "4f0c9a7e11b2c3d4e5f60718293a4b5c"
T0 = 1_741_185_121_000  # 2025-03-05T14:32:01Z
GAP = 300_000
MACHINE = TripStateMachine(
    TripThresholds(start_speed_mph=5, end_speed_mph=1, gap_ms=GAP, segment_breadcrumbs=3600)
)
POS = StreamPosition("shardId-000000000000", "1", 0, 0)
SEQUENCE = map(str, itertools.count(1))


def at(seconds: float, speed: float | None = None, located: bool = True, **extra: Any) -> VehicleReading:
    signals: dict[str, Any] = dict(extra)
    if speed is not None:
        signals["vehicleSpeed"] = speed
    if located:
        signals["location"] = Location(39.7 + seconds / 10_000, -104.9)
    # Each reading is a new record: the next position in the shard.
    return VehicleReading(PV, T0 + int(seconds * 1000), signals, replace(POS, sequence_number=next(SEQUENCE)))


@dataclass
class Run:
    state: VehicleTrips = field(default_factory=lambda: VehicleTrips(PV))
    effects: TripEffects = field(default_factory=TripEffects)

    def feed(self, *readings: VehicleReading, machine: TripStateMachine = MACHINE) -> Run:
        for reading in readings:
            machine.apply(self.state, step(reading), self.effects)
        return self

    def status(self) -> TripStatus:
        return self.state.trip.status if self.state.trip else TripStatus.IDLE

    @property
    def count(self) -> int:
        assert self.state.trip is not None
        return self.state.trip.breadcrumb_count


def step(reading: VehicleReading) -> Step:
    """Each reading is its own record: its bytes are its sequence number."""
    return step_of(reading, reading.position.sequence_number.encode())


def state_fields(state: VehicleTrips) -> dict[str, Any]:
    return item_fields(PV, state)


def crumbs_of(readings: list[VehicleReading]) -> list[Crumb]:
    return [c for c in map(crumb_of, readings) if c is not None]


def archived(
    trip: CompletedTrip, readings: list[VehicleReading]
) -> tuple[list[dict[str, Any]], TripIndexItem]:
    body, item = archive_trip(trip, crumbs_of(readings))
    return read_gzip_json(body), item


def open_trip(run: Run, readings: list[VehicleReading]) -> tuple[list[dict[str, Any]], TripIndexItem]:
    """The archive the open trip would get if the sweep completed it now."""
    assert run.state.trip is not None
    trip = complete(PV, run.state, run.state.trip, EndReason.ORPHAN, readings[-1].event_time_ms)
    return archived(trip, readings)


def test_a_trip_starts_strictly_above_the_start_speed_with_a_deterministic_id() -> None:
    run = Run().feed(at(0, 0), at(1, 5.0))
    assert run.status() is TripStatus.IDLE
    run.feed(at(2, 5.1))
    assert run.status() is TripStatus.ACTIVE
    assert run.state.trip is not None
    assert run.state.trip.trip_id == f"trip_20250305_143203_{PV}" == trip_id(PV, T0 + 2000)


def test_trip_ids_carry_the_whole_pseudo_vin_and_never_repeat_within_a_vehicle() -> None:
    """Two vehicles sharing the pseudoVin's first 6 hex characters get different ids; a trip starting in
    the second its vehicle's previous trip started in is named after the next free second."""
    other = PV[:6] + "0" * 26
    assert trip_id(PV, T0) != trip_id(other, T0)
    quick = TripStateMachine(TripThresholds(start_speed_mph=5, end_speed_mph=1, gap_ms=200))
    run = Run().feed(at(0, 30), at(0.1, 0), at(0.3, 25), at(0.4, 0), at(0.6, 25), machine=quick)
    ids = [t.trip_id for t in run.effects.completed] + [run.state.trip.trip_id if run.state.trip else ""]
    assert ids == [
        f"trip_20250305_143201_{PV}",
        f"trip_20250305_143202_{PV}",
        f"trip_20250305_143203_{PV}",
    ]
    assert [r[0] for r in run.state.recent] == [T0, T0 + 300]
    # The bump survives persistence: the last id's second is part of the state.
    stored = state_from_item(TripStateItem(**state_fields(run.state), lastUpdate="2026-01-01T00:00:00.000Z"))[
        0
    ]
    assert stored == run.state and stored.last_trip_second == T0 // 1000 + 2


def test_a_vehicle_already_moving_when_first_seen_starts_at_its_first_record() -> None:
    run = Run().feed(at(0, 40), at(1, 41))
    assert run.state.trip is not None and run.state.trip.start_time_ms == T0
    assert run.count == 2


def test_ending_starts_at_or_below_the_end_speed_and_the_gap_timer_starts_there() -> None:
    run = Run().feed(at(0, 30), at(1, 1.1))
    assert run.status() is TripStatus.ACTIVE
    run.feed(at(2, 1.0))
    assert run.status() is TripStatus.ENDING
    assert run.state.trip is not None and run.state.trip.gap_start_ms == T0 + 2000


def test_moving_again_before_the_gap_resumes_the_same_trip() -> None:
    run = Run().feed(at(0, 30), at(10, 0), at(100, 3), at(200, 0), at(299, 6))
    assert run.status() is TripStatus.ACTIVE
    assert run.effects.completed == []
    assert run.state.trip is not None and run.state.trip.trip_id == trip_id(PV, T0)
    assert run.count == 5  # the wait belongs to the continuing trip


def test_creeping_below_the_start_speed_neither_resumes_nor_resets_the_gap() -> None:
    run = Run().feed(at(0, 30), at(10, 0), at(200, 4.9))
    assert run.status() is TripStatus.ENDING
    run.feed(at(310, 0))  # 300 s after the stop at t=10
    assert run.status() is TripStatus.IDLE
    assert len(run.effects.completed) == 1


def test_the_gap_boundary_is_inclusive() -> None:
    just_before = Run().feed(at(0, 30), at(10, 0), at(10 + 299.999, 0))
    assert just_before.status() is TripStatus.ENDING and just_before.effects.completed == []
    exactly = Run().feed(at(0, 30), at(10, 0), at(10 + 300, 0))
    assert exactly.status() is TripStatus.IDLE
    (trip,) = exactly.effects.completed
    assert trip.end_reason is EndReason.GAP


def test_the_archived_trip_ends_at_the_stop_and_excludes_the_wait() -> None:
    readings = [at(0, 30, batteryLevel=80), at(60, 40, batteryLevel=79), at(120, 0.5, batteryLevel=78)]
    readings += [at(200, 0, batteryLevel=77), at(250, 2, batteryLevel=77)]  # waiting out the gap
    readings += [at(420, 0)]
    run = Run().feed(*readings)
    (trip,) = run.effects.completed
    assert trip.start_time_ms == T0
    assert trip.end_time_ms == T0 + 120_000  # the stop
    assert trip.completion_ms == T0 + 420_000  # R: the completing record's arrival (never before its t)
    rows, item = archived(trip, readings)
    assert item.breadcrumbCount == len(rows) == 3  # start, cruise, stop; not the two while waiting
    assert (item.startBattery, item.endBattery) == (80.0, 78.0)
    assert item.maxSpeedMph == 40
    assert item.endLocation is not None
    assert (item.endLocation.lat, item.endLocation.lng) == (39.7 + 120 / 10_000, -104.9)
    assert item.distanceMiles > 0
    # From the trip's end (the stop), not from R: a function of the trip, whatever its records' arrival.
    assert trip.completion_ms > trip.end_time_ms == T0 + 120_000
    assert item.expiresAt == (T0 + 120_000) // 1000 + 90 * 86400


def test_the_completing_record_may_start_the_next_trip() -> None:
    run = Run().feed(at(0, 30), at(10, 0), at(310, 25))
    assert [t.trip_id for t in run.effects.completed] == [trip_id(PV, T0)]
    assert run.status() is TripStatus.ACTIVE
    assert run.state.trip is not None and run.state.trip.trip_id == trip_id(PV, T0 + 310_000)


def test_duplicates_and_late_records_change_nothing() -> None:
    first, second = at(0, 30), at(2, 31)
    run = Run().feed(first, second)
    before = (state_fields(run.state), list(run.effects.completed), list(run.effects.seals))
    run.feed(second, at(1, 99), first)  # redeliveries (the same bytes) and a record below the mark
    assert (state_fields(run.state), run.effects.completed, run.effects.seals) == before


def test_records_without_speed_never_move_the_machine() -> None:
    assert Run().feed(at(0, None), at(1, None, batteryLevel=50)).status() is TripStatus.IDLE
    run = Run().feed(at(0, 30), at(1, None, located=True))
    assert run.status() is TripStatus.ACTIVE
    assert run.count == 2


def test_delta_records_are_completed_from_the_values_last_seen_in_the_trip() -> None:
    readings = [
        at(0, 30, heading=90, odometer=100.0, batteryLevel=80),
        at(1, None, located=True),
        at(2, 32, located=False, batteryLevel=79),
        at(3, None, located=True, heading=95),
    ]
    rows, _ = open_trip(Run().feed(*readings), readings)
    filled = [(r["vehicleSpeed"], r["heading"], r["odometer"], r["batteryLevel"]) for r in rows]
    assert filled == [(30, 90, 100.0, 80), (30, 90, 100.0, 80), (32, 95, 100.0, 79)]


def battery_figures(
    run: Run, readings: list[VehicleReading]
) -> tuple[list[float | None], float | None, float | None]:
    rows, item = open_trip(run, readings)
    return [r.get("batteryLevel") for r in rows], item.startBattery, item.endBattery


def test_a_vehicle_reporting_battery_level_never_takes_soc_for_it() -> None:
    """Soc (BMS) and BatteryLevel (displayed) differ by a few percent: mixing them made figures flap."""
    readings = [
        at(0, 30, batteryLevel=80, soc=83),
        at(1, 31, soc=82.5),
        at(2, 32, batteryLevel=79, soc=82),
        at(3, 33, soc=81.5),
    ]
    run = Run().feed(*readings)
    assert battery_figures(run, readings) == ([80, 80, 79, 79], 80, 79)
    assert run.state.reports_battery_level
    # The next trip too, though it starts on a record without batteryLevel: the vehicle is known to
    # report it (``reports_battery_level`` travels with the completed trip).
    run.feed(at(4, 0))
    following = [at(400, 30, soc=80.5), at(401, 31, soc=80)]  # created in stream order
    run.feed(*following)
    assert battery_figures(run, following) == ([None, None], None, None)
    following.append(at(402, 31, batteryLevel=77))
    run.feed(following[-1])
    assert battery_figures(run, following) == ([None, None, 77], 77, 77)


def test_a_vehicle_that_never_reports_battery_level_falls_back_to_soc() -> None:
    readings = [at(0, 30, soc=82.5), at(1, 31), at(2, 32, soc=82)]
    run = Run().feed(*readings)
    assert battery_figures(run, readings) == ([82.5, 82.5, 82], 82.5, 82)
    assert not run.state.reports_battery_level


def test_a_first_battery_level_mid_trip_makes_it_the_source_for_the_whole_trip() -> None:
    """A deliberate change (proposal §3.3): the archive is a function of the trail's record set, so a trip
    that learns ``batteryLevel`` midway uses it for its whole trail (its earlier rows carry none)."""
    readings = [at(0, 30, soc=82.5), at(1, 31, batteryLevel=80), at(2, 32, soc=81)]
    assert battery_figures(Run().feed(*readings), readings) == ([None, 80, 80], 80, 80)


def test_what_a_vehicle_reports_is_learned_from_its_trips_and_persisted_with_them() -> None:
    """Learned from an idle record, a restart would forget it, and the same stream would give other
    figures after the restart; a vehicle that never drove keeps no trip-state item."""
    idle = Run().feed(at(0, 0, batteryLevel=80))
    assert not idle.effects.changed and not idle.state.reports_battery_level
    moving = Run().feed(at(0, 30, batteryLevel=80), at(1, 0), at(400, 0))
    assert moving.state.trip is None and moving.state.reports_battery_level
    item = TripStateItem(**state_fields(moving.state), lastUpdate="x")
    assert state_from_item(item)[0].reports_battery_level


def test_long_trips_seal_segments_of_fixed_size() -> None:
    machine = TripStateMachine(TripThresholds(segment_breadcrumbs=3))
    run = Run().feed(*(at(s, 30) for s in range(8)), machine=machine)
    assert [(s.index, s.from_ms - T0, s.to_ms - T0) for s in run.effects.seals] == [
        (0, 0, 2000),
        (1, 2001, 5000),
    ]
    assert run.state.trip is not None and run.state.trip.tail_breadcrumbs == 2


def test_orphan_completion_ends_an_ending_trip_at_its_stop_and_an_active_one_at_its_last_record() -> None:
    now = T0 + 3_600_000
    ending = Run().feed(at(0, 30), at(10, 0), at(20, 0))
    assert ending.state.trip is not None
    assert complete(PV, ending.state, ending.state.trip, EndReason.ORPHAN, now).end_time_ms == T0 + 10_000
    readings = [at(0, 30), at(10, 35)]
    active = Run().feed(*readings)
    assert active.state.trip is not None
    orphan = complete(PV, active.state, active.state.trip, EndReason.ORPHAN, now)
    assert (orphan.end_time_ms, orphan.completion_ms, orphan.end_reason) == (
        T0 + 10_000,
        now,  # R: the sweep's clock
        EndReason.ORPHAN,
    )
    assert archived(orphan, readings)[1].breadcrumbCount == 2


def test_a_rarely_reporting_trip_is_staged_at_least_every_12_hours_of_event_time() -> None:
    """Few breadcrumbs, long trip: staging by count alone would leave them to the live table's TTL."""
    machine = TripStateMachine(TripThresholds(segment_breadcrumbs=3600))
    readings = [at(600 * i, 40) for i in range(181)]  # a position every 10 minutes for 30 hours
    run = Run().feed(*readings, machine=machine)
    hours = (
        [(s.from_ms - T0) / 3600_000 for s in run.effects.seals],
        [(s.to_ms - T0) / 3600_000 for s in run.effects.seals],
    )
    assert hours == ([0, 12 + 1 / 3600_000], [12, 24 + 1 / 6])
    assert run.state.trip is not None and run.state.trip.sealed_through_ms is not None
    assert readings[-1].event_time_ms - run.state.trip.sealed_through_ms < 12 * 3600_000


def test_persisted_state_round_trips_exactly() -> None:
    run = Run().feed(at(0, 30, batteryLevel=80.5, heading=1, odometer=5.25), at(7.5, 0), at(9, 3))
    assert run.state.reports_battery_level
    item = TripStateItem(**state_fields(run.state), lastUpdate="2026-01-01T00:00:00.000Z")
    assert state_from_item(TripStateItem.model_validate(item.model_dump()))[0] == run.state


def test_a_redelivered_record_at_or_below_the_mark_changes_nothing() -> None:
    moving, idle = at(70, 30), at(100, 0)  # consumed in event order (processors.settle)
    clean = Run().feed(moving, idle)
    assert clean.status() is TripStatus.ENDING
    persisted = state_from_item(TripStateItem(**state_fields(clean.state), lastUpdate="x"))[0]
    redelivered = Run(state=persisted).feed(moving, idle)  # a crash before the checkpoint
    assert state_fields(redelivered.state) == state_fields(clean.state)
    assert not redelivered.effects.changed and redelivered.effects.completed == []


# --- replay: any redelivery, any batching, any crash point -> the same effects as one clean pass ------

speeds = st.sampled_from([0.0, 0.5, 1.0, 3.0, 5.0, 5.5, 20.0, 60.0])


@st.composite
def streams(draw: st.DrawFn) -> list[VehicleReading]:
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from([1, 5, 60, 200, 301, -1, -30]), speeds | st.none(), st.booleans()),
            max_size=60,
        )
    )
    # Negative steps: records out of event-time order as sent; the machine consumes them in (event time,
    # key) order (processors.settle), which is what a clean pass and a replay must agree on.
    readings, t = [], 0.0
    for dt, speed, located in steps:
        t += dt
        readings.append(at(t, speed, located))
    return sorted(readings, key=lambda r: step(r).order)


def effects_of(completed: list[CompletedTrip]) -> dict[str, CompletedTrip]:
    """Idempotent writes keyed as the stores key them: the last write of a key wins."""
    return {c.trip_id: c for c in completed}


@settings(max_examples=1000, deadline=None)
@given(streams(), st.data())
def test_redelivery_batching_and_crashes_yield_the_effects_of_one_clean_pass(
    readings: list[VehicleReading], data: st.DataObject
) -> None:
    # Small segments, by count and by time (the streams span up to 5 h): both seal paths replay too.
    machine = TripStateMachine(TripThresholds(segment_breadcrumbs=4, segment_max_ms=600_000))
    clean = Run().feed(*readings, machine=machine)

    # The consumer: batches of random size; after each, the state is persisted (through the item
    # shape); sometimes a checkpoint; sometimes a crash, after which the persisted state is reloaded
    # and the stream redelivered from the last checkpoint.
    stored: TripStateItem | None = None
    out = TripEffects()
    position = checkpoint = 0
    crashes = 0
    while position < len(readings):
        size = data.draw(st.integers(1, 8))
        batch = readings[position : position + size]
        state = state_from_item(stored)[0] if stored else VehicleTrips(PV)
        for reading in batch:
            machine.apply(state, step(reading), out)
        crash_before_persist = crashes < 3 and data.draw(st.booleans())
        if crash_before_persist:
            crashes += 1
            position = checkpoint  # effects were written, state was not: redeliver from checkpoint
            continue
        stored = TripStateItem(**state_fields(state), lastUpdate="x")
        position += len(batch)
        if data.draw(st.booleans()):
            checkpoint = position
        elif crashes < 3 and data.draw(st.booleans()):
            crashes += 1
            position = checkpoint  # state persisted beyond the checkpoint: redelivery is a no-op

    final = state_from_item(stored)[0] if stored else VehicleTrips(PV)
    assert state_fields(final) == state_fields(clean.state)
    assert effects_of(out.completed) == effects_of(clean.effects.completed)
    assert set(out.seals) == set(clean.effects.seals)


def test_an_archive_row_has_the_stored_format_and_its_index_the_aggregates() -> None:
    readings = [
        at(0, 31.5, odometer=22683.6, batteryLevel=75.0),
        at(1.25, 32, located=False, heading=10),
        at(2.5, 0),
        at(400, 0),
    ]
    (trip,) = Run().feed(*readings).effects.completed
    rows, item = archived(trip, readings)
    assert rows[0] == {
        "timestamp": "2025-03-05T14:32:01.000Z",
        "lat": 39.7,
        "lng": -104.9,
        "vehicleSpeed": 31.5,
        "odometer": 22683.6,
        "batteryLevel": 75.0,
    }
    assert rows[1]["heading"] == 10 and rows[1]["vehicleSpeed"] == 0
    assert (item.breadcrumbCount, item.maxSpeedMph, item.durationSeconds) == (2, 32.0, 2)
    assert abs(item.avgSpeedMph - item.distanceMiles / (2 / 3600)) < 1  # from the unrounded distance
    assert archive_trip(trip, crumbs_of(readings[::-1] * 2)) == archive_trip(trip, crumbs_of(readings))
