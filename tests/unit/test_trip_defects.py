"""Defects of the trip write path, each shown on a stream delivered as Kinesis delivers it
(``tests/support/streams.py``: arrival stamped in stream order, a late record late because it was sent late).

Written before the redesign of the trip write path, against the public ``Pipeline`` API on the in-memory
stores: most of these fail on the code they were written against, each naming its defect. What a trip must
hold is counted from the records sent, independently of the worker, and its archive is compared with the
in-order stream's (the same records sorted by event time, each sent on time).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest

from processors.signals import format_time, parse_time
from schemas.items import TripStateItem
from tests.support.fakes import MemoryStores
from tests.support.streams import (
    T0,
    Archive,
    Consumer,
    Delivered,
    Sent,
    archive_of,
    halves,
    in_order,
    on_time,
    open_trips,
    run,
    scripted,
    sent_late,
    stamp,
    stream_settings,
    telemetry,
    without,
)
from worker.config import Settings
from worker.pipeline import BatchOutcome

VIN = "1FTEW1EP5MKD00021"
GAP_S, LATENESS_S = 60, 15
SMALL = stream_settings(gap_s=GAP_S, lateness_s=LATENESS_S)
START_MPH, END_MPH = 5.0, 1.0  # the shipped thresholds


def at(seconds: float) -> int:
    return T0 + int(seconds * 1000)


def clock(t_ms: int) -> str:
    return format_time(t_ms)[11:23]


def located_between(records: Sequence[Sent], start_ms: int, end_ms: int) -> list[str]:
    """The row timestamps an archive of the trip ``[start, end]`` must hold: every located instant."""
    return sorted({format_time(r.t_ms) for r in records if r.located and start_ms <= r.t_ms <= end_ms})


def only_trip(archive: Archive, what: str) -> tuple[str, list[str]]:
    """The one archived trip's S3 key and its rows' timestamps."""
    keys = sorted(archive.trips)
    starts = sorted(clock(parse_time(i.startTime)) for i in archive.index.values())
    assert len(archive.index) == len(keys) == 1, (
        f"{what}: {len(keys)} trips archived (starting {starts}), not 1"
    )
    return keys[0], [row["timestamp"] for row in archive.rows(keys[0])]


def assert_same_archive(got: Archive, want: Archive) -> None:
    assert got.trips.keys() == want.trips.keys()
    for key, body in want.trips.items():
        assert got.trips[key] == body, f"{key}: the archive's bytes differ from the in-order stream's"
    assert got.index == want.index


@dataclass(frozen=True)
class Seen:
    """What a reader saw after one poll."""

    now_ms: int
    trip_states: tuple[TripStateItem, ...]
    archived: frozenset[str]
    """Trip ids in ``trips-index``."""


def watched(
    stream: Sequence[Delivered], settings: Settings = SMALL, consumer: Consumer | None = None
) -> tuple[Archive, list[Seen], int]:
    """Run ``stream``; the archive, what a reader saw after every poll, and the records counted late for
    the trip machine."""
    seen: list[Seen] = []

    def observe(now_ms: int, _outcome: BatchOutcome, stores: MemoryStores) -> None:
        items = tuple(open_trips(stores).values())
        seen.append(Seen(now_ms, items, frozenset(trip for _, trip in stores.archive.index)))

    result = run(stream, settings, consumer, observe=observe)
    return archive_of(result.stores), seen, result.late_for_machine


# --- 1. segment seals lose records ----------------------------------------------------------------------


def test_a_record_retried_across_a_segment_seal_is_archived() -> None:
    """A 46-breadcrumb trip staged in segments of 10. Before each of its four seals, the record just
    before the sealing one is a producer's retry, sent 2 or 3 s late: delivered one or two slots after the
    sealing record, in a later arrival second. Every located record of the trip is in its archive."""
    segment = 10
    settings = stream_settings(gap_s=GAP_S, lateness_s=LATENESS_S, segment_breadcrumbs=segment)
    records = scripted(VIN, [("park", 5), ("drive", 45), ("park", GAP_S + 10)], T0)
    start, stop = at(5), at(50)  # the first moving record; the first one parked
    trip = [r for r in records if start <= r.t_ms <= stop and r.located]
    sealing = [trip[k - 1] for k in range(segment, len(trip), segment)]  # its 10th, 20th, 30th, 40th
    retried = {trip[trip.index(s) - 1].t_ms: 2000 + 1000 * (n % 2) for n, s in enumerate(sealing)}
    delivered = stamp(sent_late(r, retried[r.t_ms]) if r.t_ms in retried else on_time(r) for r in records)
    slots = [d.sent.t_ms for d in delivered]
    arrival = {d.sent.t_ms: d.arrival_ms for d in delivered}
    for seal, late in zip(sealing, sorted(retried), strict=True):
        assert 1 <= slots.index(late) - slots.index(seal.t_ms) <= 2  # one or two slots after the seal...
        assert arrival[late] // 1000 > arrival[seal.t_ms] // 1000  # ...in a later arrival second

    got = archive_of(run(delivered, settings).stores)
    want = archive_of(run(in_order(records), settings).stores)

    expected = located_between(records, start, stop)
    assert len(expected) == 46 and only_trip(want, "in order")[1] == expected
    _, rows = only_trip(got, "as delivered")
    lost = [clock(parse_time(t)) for t in expected if t not in rows]
    assert not lost, (
        f"{len(lost)} of {len(expected)} breadcrumbs lost, each a retry delivered just after a segment "
        f"seal: {', '.join(lost)} (seals at {', '.join(clock(s.t_ms) for s in sealing)})"
    )
    assert_same_archive(got, want)


# --- 2. one instant as two records -------------------------------------------------------------------------


def test_an_instant_sent_as_two_records_keeps_its_own_speed() -> None:
    """Mid-drive, a gateway splits one instant: its vehicleSpeed in one record, its location in another
    sent 100 ms later, one timestamp. The archive's row at that instant has the location and that
    instant's speed, as when the instant comes as one record: the same archive."""
    records = scripted(VIN, [("park", 5), ("drive", 30), ("park", GAP_S + 10)], T0)
    index = 5 + 12
    instant = records[index]
    where, rest = halves(instant)
    previous_speed = records[index - 1].speed
    assert instant.speed is not None and instant.speed != previous_speed
    sends = [*map(on_time, records[:index]), on_time(rest), sent_late(where, 100)]
    sends += map(on_time, records[index + 1 :])

    got = archive_of(run(stamp(sends), SMALL).stores)
    want = archive_of(run(stamp(map(on_time, records)), SMALL).stores)

    key, _ = only_trip(got, "the instant as two records")
    row = next((r for r in got.rows(key) if r["timestamp"] == format_time(instant.t_ms)), None)
    assert row is not None, f"no archive row at {clock(instant.t_ms)}, the instant sent as two records"
    assert (row["lat"], row["lng"]) == (instant.signals["lat"], instant.signals["lng"])
    assert row.get("vehicleSpeed") == instant.speed, (
        f"the row at {clock(instant.t_ms)} has speed {row.get('vehicleSpeed')}; the instant's is "
        f"{instant.speed} ({previous_speed} is the previous instant's)"
    )
    assert_same_archive(got, want)


def test_a_stop_sent_as_two_records_ends_the_trip_there() -> None:
    """The stop's speed (0) and its location come as two records of one instant; then the parked vehicle
    reports its location and battery every second, but not its speed (a delta producer: it did not
    change). The trip goes ENDING at the stop and, once the gap has passed, is archived ending there, as
    when the same data comes one record per instant."""
    script = scripted(VIN, [("park", 5), ("drive", 30), ("park", GAP_S + 10)], T0)
    stop = script[35]
    assert stop.speed == 0.0 and (script[34].speed or 0.0) > START_MPH
    whole = [*script[:36], *(without(r, "vehicleSpeed") for r in script[36:])]
    where, rest = halves(stop)
    split = [*whole[:35], rest, where, *whole[36:]]

    got, seen, _ = watched(in_order(split))
    want, _, _ = watched(in_order(whole))

    assert [i.endTime for i in want.index.values()] == [format_time(stop.t_ms)]  # the reference
    states = sorted({(i.status, i.gapStartTime or "") for s in seen for i in s.trip_states})
    assert ("ENDING", format_time(stop.t_ms)) in states, (
        f"trip-state never ENDING at the stop {clock(stop.t_ms)} sent as two records; it showed {states}"
    )
    assert [i.endTime for i in got.index.values()] == [format_time(stop.t_ms)]
    assert_same_archive(got, want)


# --- 3. a shard split with a vehicle's records unsettled across it -------------------------------------


def test_a_split_shard_with_a_vehicle_unsettled_across_it_keeps_one_trip() -> None:
    """A trip stops at 14:00:35 and, 59 s later (within the 60 s gap), drives on until 14:02:05. The
    record that resumes it, 14:01:34, is a producer's retry sent 3.5 s late; meanwhile the shard split:
    the parent ends with 14:01:35-14:01:37 (at or after stop + gap, still unsettled) and the child shard
    starts with 14:01:34. One trip, as in order: its id, S3 key, every breadcrumb, the same bytes."""
    records = scripted(
        VIN, [("park", 5), ("drive", 30), ("park", 59), ("drive", 31), ("park", GAP_S + 10)], T0
    )
    resume, stop, final = records[94], records[35], records[125]
    assert resume.t_ms - stop.t_ms < GAP_S * 1000 <= records[95].t_ms - stop.t_ms
    assert (resume.speed or 0.0) > START_MPH and stop.speed == final.speed == 0.0
    delivered = stamp(sent_late(r, 3500) if r is resume else on_time(r) for r in records)
    split_at = [d.sent for d in delivered].index(resume)
    parent = [d.sent.t_ms for d in delivered[:split_at]]
    assert parent[-3:] == [at(95), at(96), at(97)] and max(parent) - resume.t_ms < LATENESS_S * 1000

    got = archive_of(run(delivered, SMALL, Consumer(split_at=split_at)).stores)
    want = archive_of(run(in_order(records), SMALL).stores)

    expected = located_between(records, at(5), final.t_ms)
    want_key, want_rows = only_trip(want, "in order")
    assert want_rows == expected
    got_key, got_rows = only_trip(got, "split across shards")
    assert got_key == want_key
    assert got_rows == expected, f"{len(got_rows)} of {len(expected)} breadcrumbs archived"
    assert_same_archive(got, want)


# --- 4. a parked vehicle receiving a moving record 30 h late ---------------------------------------------


def test_a_moving_record_30_h_late_to_a_parked_vehicle_starts_no_trip() -> None:
    """A parked vehicle (0 mph, located) reports every second for 3 min 20 s; 2 min in, a record of it
    moving (40 mph) arrives with an event time 30 h earlier, far beyond the allowed lateness. Chosen
    expectation: no trip at all (neither archived nor open in trip-state at any poll), not even one
    confined to that old instant; the record is counted late (``late_for_machine``)."""
    parked = scripted(VIN, [("park", 200)], T0)
    old = telemetry(VIN, at(90) - 30 * 3600_000, {"vehicleSpeed": 40.0, "lat": 39.61, "lng": -104.8})
    delivered = stamp([*map(on_time, parked), sent_late(old, 30 * 3600_000 + 30_500)])
    assert [d.sent for d in delivered].index(old) == 121  # after 14:02:00, 2 min into the parked stream

    got, seen, late = watched(delivered)

    spans = sorted(
        {(i.tripId or "", i.startTime or "", i.status) for s in seen for i in s.trip_states if i.tripId}
    )
    archived = [(i.startTime, i.endTime) for i in got.index.values()]
    assert not archived and not got.trips, f"trips archived (start, end): {archived}"
    assert not spans, f"trip-state held trips (id, start, status): {spans}"
    assert late >= 1, "the record 30 h late was not counted late for the machine"


# --- 5. live trip-state: what a reader sees while a trip happens -----------------------------------------

LIVE_GAP_S, LIVE_LATENESS_S = 300, 30
LIVE_SETTINGS = stream_settings(
    gap_s=LIVE_GAP_S, lateness_s=LIVE_LATENESS_S, FLEET_CHECKPOINT_EVERY_SECONDS="60"
)
PARKED_S = LIVE_GAP_S + LIVE_LATENESS_S + 15  # the gap, then the allowed lateness, pass in event time
LIVE_SCRIPT = [("park", 5), ("drive", 150), ("park", PARKED_S), ("drive", 90), ("park", PARKED_S)]
LIVE_CONSUMER = Consumer(pauses_ms=(250,), fetch_ms=1000)  # each record processed 1 s after its arrival
BUDGET_MS = 3000
TRAIL_MS = 15_000


@dataclass(frozen=True)
class Drive:
    """A trip as the records say it, independently of the worker: the first record above the start
    speed, the last one above it, the first one at or below the end speed after it."""

    start: Sent
    last_moving: Sent
    stop: Sent


def drives(records: Sequence[Sent]) -> list[Drive]:
    found: list[Drive] = []
    start: Sent | None = None
    for previous, record in pairwise(records):
        speed = record.speed or 0.0
        if start is None and speed > START_MPH:
            start = record
        elif start is not None and speed <= END_MPH:
            found.append(Drive(start, previous, record))
            start = None
    return found


@dataclass(frozen=True)
class LiveRun:
    records: list[Sent]
    arrival: dict[int, int]
    """Event time -> arrival."""
    drives: list[Drive]
    seen: list[Seen]
    newest: list[int | None]
    """Per poll: the newest event time the processor had received."""
    archive: Archive


@pytest.fixture(scope="module")
def live() -> LiveRun:
    records = scripted(VIN, LIVE_SCRIPT, T0)
    stream = in_order(records)
    arrivals = [d.arrival_ms for d in stream]
    archive, seen, _ = watched(stream, LIVE_SETTINGS, LIVE_CONSUMER)
    newest = []
    for s in seen:
        received = bisect_right(arrivals, s.now_ms - LIVE_CONSUMER.fetch_ms)
        newest.append(stream[received - 1].sent.t_ms if received else None)
    found = drives(records)
    assert [(d.stop.t_ms - d.start.t_ms) // 1000 for d in found] == [150, 90]
    return LiveRun(records, {d.sent.t_ms: d.arrival_ms for d in stream}, found, seen, newest, archive)


def showing(seen: Seen, drive: Drive) -> TripStateItem | None:
    """The trip-state item of ``drive``, if a reader sees it."""
    start = format_time(drive.start.t_ms)
    return next((i for i in seen.trip_states if i.startTime == start), None)


def first(live: LiveRun, drive: Drive, status: str) -> tuple[int, TripStateItem] | None:
    for seen in live.seen:
        item = showing(seen, drive)
        if item is not None and item.status == status:
            return seen.now_ms, item
    return None


def test_live_trip_state_shows_a_start_within_3_s_of_its_arrival(live: LiveRun) -> None:
    for drive in live.drives:
        shown = first(live, drive, "ACTIVE")
        assert shown is not None, f"the trip starting {clock(drive.start.t_ms)} never showed ACTIVE"
        now, item = shown
        delay = now - live.arrival[drive.start.t_ms]
        assert item.tripId
        assert delay <= BUDGET_MS, (
            f"trip-state shows the trip starting {clock(drive.start.t_ms)} {delay / 1000:.2f} s after the "
            f"record's arrival (at most {BUDGET_MS / 1000:.0f} s)"
        )


def test_live_trip_state_shows_a_stop_within_3_s_of_its_arrival(live: LiveRun) -> None:
    for drive in live.drives:
        shown = next(
            (
                (s.now_ms, i)
                for s in live.seen
                if (i := showing(s, drive)) is not None
                and i.status == "ENDING"
                and i.gapStartTime == format_time(drive.stop.t_ms)
            ),
            None,
        )
        assert shown is not None, f"the stop at {clock(drive.stop.t_ms)} never showed (ENDING)"
        delay = shown[0] - live.arrival[drive.stop.t_ms]
        assert delay <= BUDGET_MS, (
            f"trip-state shows the stop at {clock(drive.stop.t_ms)} {delay / 1000:.2f} s after the "
            f"record's arrival (at most {BUDGET_MS / 1000:.0f} s)"
        )


def test_live_trip_state_trails_the_newest_record_by_at_most_15_s_while_driving(live: LiveRun) -> None:
    """At every poll while driving, ``lastEventTime`` is at most 15 s behind the newest record received,
    and ``breadcrumbCount`` counts at least the trip's located records up to 15 s before it."""
    worst: tuple[int, str] = (0, "")
    for drive in live.drives:
        for seen, newest in zip(live.seen, live.newest, strict=True):
            if newest is None or not drive.start.t_ms + TRAIL_MS <= newest < drive.stop.t_ms:
                continue
            item = showing(seen, drive)
            through = parse_time(item.lastEventTime) if item and item.lastEventTime else drive.start.t_ms - 1
            lag = newest - through
            needed = len(located_between(live.records, drive.start.t_ms, newest - TRAIL_MS))
            counted = item.breadcrumbCount if item else 0
            if counted < needed:
                lag = max(lag, TRAIL_MS + 1)
            if lag > worst[0]:
                shown = (
                    f"{item.status} through {clock(through)}, {counted} breadcrumbs" if item else "nothing"
                )
                worst = (lag, f"at {clock(seen.now_ms)}, newest {clock(newest)}: {shown} ({needed} due)")
    assert worst[0] <= TRAIL_MS, (
        f"trip-state trails the newest record by up to {worst[0] / 1000:.1f} s while driving (at most "
        f"{TRAIL_MS // 1000} s): {worst[1]}"
    )


def test_live_a_trip_shorter_than_the_gap_shows_while_it_happens(live: LiveRun) -> None:
    short = live.drives[1]
    assert (short.stop.t_ms - short.start.t_ms) < LIVE_GAP_S * 1000
    shown = first(live, short, "ACTIVE")
    assert shown is not None and shown[0] < live.arrival[short.stop.t_ms], (
        f"the {(short.stop.t_ms - short.start.t_ms) // 1000} s trip never showed in trip-state while it "
        "happened"
    )


def test_live_trip_id_is_the_archived_one(live: LiveRun) -> None:
    archived = live.archive.index_by_start()
    assert len(archived) == len(live.drives)
    for drive in live.drives:
        shown = first(live, drive, "ACTIVE")
        assert shown is not None and shown[1].tripId
        item = archived[format_time(drive.start.t_ms)]
        assert item.tripId == shown[1].tripId
        assert item.s3Key.endswith(f"/{shown[1].tripId}.json.gz") and item.s3Key in live.archive.trips


def test_live_archive_appears_within_gap_and_30_s_of_the_last_moving_record(live: LiveRun) -> None:
    """The on-time archive (the live view's completion) is in trips-index within gap + 30 s of the last
    moving record's arrival, though the allowed lateness is 30 s: the final one follows L later."""
    assert LIVE_LATENESS_S >= 30
    limit_ms = (LIVE_GAP_S + 30) * 1000
    for drive in live.drives:
        trip = live.archive.index_by_start()[format_time(drive.start.t_ms)].tripId
        appeared = next((s.now_ms for s in live.seen if trip in s.archived), None)
        assert appeared is not None
        delay = appeared - live.arrival[drive.last_moving.t_ms]
        print(
            f"trip {clock(drive.start.t_ms)}-{clock(drive.stop.t_ms)}: archived {delay / 1000:.2f} s after "
            f"its last moving record's arrival (gap {LIVE_GAP_S} s, lateness {LIVE_LATENESS_S} s)"
        )
        assert delay <= limit_ms, (
            f"archived {delay / 1000:.2f} s after the last moving record (limit {limit_ms / 1000:.0f} s)"
        )
        assert not live.archive.index_by_start()[format_time(drive.start.t_ms)].provisional  # final at last


def test_a_moving_record_late_within_l_after_the_on_time_archive_revises_it_to_the_in_order_trip() -> None:
    """The trip's on-time archive is written when the live view completes it (stop + gap). A moving
    record of the gap, late by less than L, arrives after it: the trip resumed, in order. The final
    archive and index item are the in-order stream's; the on-time one stays as what it was."""
    records = scripted(VIN, [("park", 5), ("drive", 45), ("park", 54), ("drive", 1), ("park", 80)], T0)
    resumed = next(r for r in records if r.t_ms == at(104))
    late_by = (LATENESS_S - 3) * 1000
    delivered = stamp(sent_late(r, late_by) if r is resumed else on_time(r) for r in records)
    arrival = {d.sent.t_ms: d.arrival_ms for d in delivered}
    assert arrival[at(104)] > arrival[at(50 + GAP_S)]  # after the record that completes it without it

    result = run(delivered, SMALL)
    got, want = archive_of(result.stores), archive_of(run(in_order(records), SMALL).stores)
    _, rows = only_trip(want, "in order")
    assert rows == located_between(records, at(5), at(105))  # in order: one trip, resumed, stopped at 105
    assert_same_archive(got, want)
    on_time_keys = [k for k in result.stores.archive.objects if k.startswith("trips-provisional/")]
    assert any(k.endswith(f"/{at(50)}.json.gz") for k in on_time_keys), on_time_keys  # ended at 50, first
    assert result.late_after_archive == 0
