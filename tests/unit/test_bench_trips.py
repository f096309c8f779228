"""The trips scenario's instruments (bench/trips.py): its workload is one trip per vehicle as the trip rules
see it, and the helpers read a reader's view as the method says. No timing is asserted: the figures are
the benchmark's."""

from __future__ import annotations

import math

from bench import report, trips
from bench.e2e import Put, percentile
from bench.trips import ABSENT, ACTIVE, ENDING, IDLE, Drive, Read, Shown
from processors.decode import DecodeLimits, Decoder
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from processors.trips import TripEffects, TripStateMachine, VehicleTrips, step_of
from schemas.records import StreamPosition, TelemetryRecord

KEY = b"bench-trips-key"
T0 = 1_750_000_000_000


def _drives(vehicles: int = 20) -> list[Drive]:
    return trips.plan(vehicles, T0, gap_s=300, lateness_s=30, pseudo=Pseudonymizer(KEY))


def test_the_drives_span_60_to_120_s_with_a_90_s_one_and_park_past_the_gap_and_lateness() -> None:
    drives = _drives()
    seconds = sorted(d.drive_seconds for d in drives)
    assert seconds[0] >= 60 and seconds[-1] == 120
    assert trips.SHORT_TRIP_SECONDS in seconds
    assert all(d.parked_until_ms - d.stop_ms == (300 + 30 + 30) * 1000 for d in drives)
    assert all(d.first_moving_ms - d.from_ms >= trips.LEAD_SECONDS * 1000 for d in drives)
    assert len({d.stop_ms // 1000 for d in drives}) == len(drives)  # one stop a second at most


def test_each_vehicle_makes_one_trip_from_its_first_moving_record_to_its_stop() -> None:
    """Through the real decoder and trip machine: the ids, starts and stops the figures look for."""
    drives = _drives(6)
    by_vin = {d.vin: d for d in drives}
    decoder, pseudo = Decoder(DecodeLimits(max_event_age_ms=10**15)), Pseudonymizer(KEY)
    machine = TripStateMachine()
    states: dict[str, VehicleTrips] = {}
    effects = TripEffects()
    for n, produced in enumerate(trips.records(drives)):
        drive = by_vin[produced.vin]
        record = decoder.decode(produced.data, produced.event_ms + 200)
        assert isinstance(record, TelemetryRecord)
        speed = record.signals["vehicleSpeed"]
        assert isinstance(speed, int | float)
        moving = drive.first_moving_ms <= produced.event_ms < drive.stop_ms
        assert speed > 5 if moving else speed == 0
        position = StreamPosition("shardId-000000000000", str(10**20 + n), 0, produced.event_ms + 200)
        reading = pseudo.reading(record, position)
        state = states.setdefault(reading.pseudo_vin, VehicleTrips(reading.pseudo_vin))
        machine.apply(state, step_of(reading, produced.data), effects)
        trip = state.trip
        if produced.event_ms == drive.first_moving_ms:
            assert trip is not None and trip.trip_id == drive.trip_id
            assert trip.start_time_ms == drive.first_moving_ms
        if produced.event_ms == drive.stop_ms:
            assert trip is not None and trip.status == ENDING and trip.gap_start_ms == drive.stop_ms
    completed = {c.pseudo_vin: c for c in effects.completed}
    assert {d.pseudo_vin for d in drives} == set(completed)
    assert all(completed[d.pseudo_vin].trip_id == d.trip_id for d in drives)


def _drive() -> Drive:
    return Drive("VIN", "pv", T0, T0 + 10_000, T0 + 20_000, T0 + 400_000, 30.0)


def _puts(drive: Drive) -> list[Put]:
    """A record a second, each put at 100 + its second (monotonic seconds)."""
    return [Put("pv", t, 100.0 + (t - T0) / 1000) for t in range(drive.from_ms, drive.stop_ms + 5000, 1000)]


def test_the_first_read_showing_a_start_or_a_stop_is_when_it_became_visible() -> None:
    drive = _drive()
    active = Shown(ACTIVE, drive.trip_id, drive.first_moving_ms, drive.first_moving_ms, 1)
    wrong_start = Shown(ACTIVE, drive.trip_id, drive.first_moving_ms + 1000, drive.first_moving_ms, 1)
    ending = Shown(ENDING, drive.trip_id, drive.first_moving_ms, drive.stop_ms, 11, drive.stop_ms)
    reads = [
        Read(110.0, 110.1, {}),
        Read(110.3, 110.4, {"pv": wrong_start}),
        Read(110.6, 110.7, {"pv": active}),
        Read(120.5, 120.6, {"pv": ending}),
    ]
    assert trips.first_showing(reads, "pv", trips.started(drive)) == 110.7
    assert trips.first_showing(reads, "pv", trips.stopped(drive)) == 120.6
    assert trips.first_showing(reads[:3], "pv", trips.stopped(drive)) is None


def test_progress_behind_counts_what_was_put_before_each_read_while_driving() -> None:
    drive = _drive()
    puts = _puts(drive)
    last = drive.first_moving_ms + 3000  # shows 4 records (t0+10 s .. t0+13 s)
    reads = [
        Read(109.5, 109.6, {}),  # before the first moving record was put: not a driving read
        Read(116.5, 116.6, {"pv": Shown(ACTIVE, drive.trip_id, drive.first_moving_ms, last, 4)}),
        Read(119.9, 120.0, {"pv": Shown(ACTIVE, drive.trip_id, drive.first_moving_ms, last + 3000, 7)}),
        Read(120.5, 120.6, {"pv": Shown(ACTIVE, drive.trip_id, drive.first_moving_ms, last, 4)}),  # stopped
        Read(117.0, 117.1, {"pv": Shown(ENDING, drive.trip_id, drive.first_moving_ms, last, 4)}),
    ]
    behind = trips.progress_behind(drive, puts, reads)
    # At 116.5 the records of t0+10..16 s were put (7): the newest is 3 s past the shown one, 3 uncounted.
    assert [(b.seconds, b.records) for b in behind] == [(3.0, 3), (3.0, 3)]


def test_the_timeline_and_what_a_reader_would_call_a_regression() -> None:
    drive = _drive()
    a = Shown(ACTIVE, drive.trip_id, drive.first_moving_ms, drive.first_moving_ms + 5000, 6)
    back = Shown(ACTIVE, drive.trip_id, drive.first_moving_ms, drive.first_moving_ms + 4000, 5)
    ending = Shown(ENDING, drive.trip_id, drive.first_moving_ms, drive.stop_ms, 11, drive.stop_ms)
    reads = [
        Read(1.0, 1.1, {"pv": a}),
        Read(2.0, 2.1, {"pv": back}),
        Read(3.0, 3.1, {"pv": ending}),
        Read(4.0, 4.1, {"pv": a}),
        Read(5.0, 5.1, {"pv": Shown(IDLE)}),
        Read(6.0, 6.1, {}),
    ]
    assert trips.timeline(reads, "pv", origin=3.0) == [
        (-1.9, ACTIVE, drive.trip_id),
        (0.1, ENDING, drive.trip_id),
        (1.1, ACTIVE, drive.trip_id),
        (2.1, IDLE, None),
        (3.1, ABSENT, None),
    ]
    found = trips.regressions(reads, "pv")
    assert any("lastEventTime back" in f for f in found)
    assert any("breadcrumbCount back" in f for f in found)
    assert "ACTIVE again after ENDING" in found


def test_a_trip_state_item_reads_as_its_live_fields() -> None:
    item = {
        "pseudoVin": {"S": "pv"},
        "status": {"S": "ENDING"},
        "tripId": {"S": "trip_x"},
        "startTime": {"S": format_time(T0)},
        "lastEventTime": {"S": format_time(T0 + 5000)},
        "breadcrumbCount": {"N": "6"},
        "gapStartTime": {"S": format_time(T0 + 4000)},
    }
    assert trips.shown_of(item) == Shown(ENDING, "trip_x", T0, T0 + 5000, 6, T0 + 4000)
    assert trips.shown_of({"pseudoVin": {"S": "pv"}, "status": {"S": "IDLE"}}) == Shown(IDLE)


def test_percentiles_are_nearest_rank_and_a_trip_never_seen_misses() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 21)], 0.99) == 20.0  # 20 trips: p99 is the largest
    assert percentile([1.0, math.inf], 0.99) is None


def test_the_trip_targets_read_the_scenario_and_say_by_how_much_one_is_missed() -> None:
    summary = {
        "vehicles": 20,
        "start_p99_s": 1.2,
        "stop_p99_s": None,
        "behind_seconds_max": 11.0,
        "behind_records_max": 11.0,
        "short_trip_shown": True,
        "ids_equal": 19,
        "archive_p99_s": 331.5,
        "archive_target_s": 330.0,
    }
    verdicts = report.trip_targets(summary)
    assert verdicts["trip_start_p99_s"]["met"] and verdicts["trip_short_shown"]["met"]
    assert not verdicts["trip_stop_p99_s"]["met"]  # never seen misses
    assert not verdicts["trip_ids_equal_share"]["met"]
    assert report._met(verdicts, "trip_archive_p99_s", " s") == "MISSED (<= 330) by 1.5 s"
