"""The archive is a function of the record set, on streams delivered as Kinesis delivers them.

``test_order_property`` gives each record one arrival (its event time + 1 s) whatever its place in the
stream: a record displaced in the stream keeps an arrival from before the records it follows, which no
shard does. Here arrival is stamped in stream order (``tests/support/streams.py``): a record late in event
time is late because its producer sent it late, and arrives then. Over that model: 1-3 vehicles on one
shard, each a random drive/stop/park script at 1 Hz ending parked past the gap, some instants sent as two
records (location | the rest), some records unlocated, some sent late by less than the allowed lateness
L, some resent later (the same bytes), random poll sizes and pauses, up to two crashes (a new pipeline
from the last checkpoint) and at most one shard split. The archive (S3 objects under ``trips/``: bytes;
under ``trip-segments/``: every crumb), and the ``trips-index`` items (whole: ``expiresAt`` is to be
event-time based) equal the in-order stream's: the same record set, each once, sorted by (event time,
bytes), sent on time.

A segment row also keeps its crumb's arrival second, which docs/design.md lists among the volatile
attributes ("what records' arrival times decide"): another delivery stamps other arrivals, so segment
bytes are compared without it. It matters only through the archive (a trip's rows are the crumbs that
arrived by its completion point), whose bytes are compared whole.

Each comparison is its own assertion, so hypothesis reports (and shrinks) each kind of difference apart:
rows lost, rows that differ, segments, index items. ``test_within_lateness_no_record_is_lost_at_a_seal``
is the same property restricted to what the defect of segment seals needs (no instant split, no shard
split; ``expiresAt``, arrival-based today, left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.signals import format_time
from tests.support.streams import (
    T0,
    Archive,
    Consumer,
    Send,
    Sent,
    archive_of,
    halves,
    in_order,
    on_time,
    run,
    scripted,
    sent_late,
    stamp,
    stream_settings,
)

GAP_S, LATENESS_S, SEGMENT = 60, 15, 10
SETTINGS = stream_settings(gap_s=GAP_S, lateness_s=LATENESS_S, segment_breadcrumbs=SEGMENT)
VINS = ("1FTEW1EP5MKD00021", "5YJ3E1EA7KF317000", "1HGCM82633A004352")
REFERENCE = Consumer()  # caught up: a poll a second, each record processed 250 ms after its arrival


@dataclass(frozen=True)
class Vehicle:
    script: tuple[tuple[str, int], ...]
    """Phases before the final parking (``GAP_S + 5`` s, which completes every trip)."""
    start_ms: int
    """After ``T0``."""
    unlocated: frozenset[int]
    """Indexes of records without a location."""
    halved: frozenset[int]
    """Indexes of (located) instants sent as two records: the location, and the rest."""
    late: tuple[tuple[int, int], ...]
    """(index among the vehicle's records, instants halved into two, ms sent late), each < L."""


@dataclass(frozen=True)
class Plan:
    vehicles: tuple[Vehicle, ...]
    resends: tuple[tuple[int, int, int], ...]
    """(vehicle, record index, ms after its first send): the same bytes again."""
    consumer: Consumer
    split_permille: int | None
    """Where in the delivered stream the shard splits (None: it does not)."""
    checkpoint_s: int = 0
    """``FLEET_CHECKPOINT_EVERY_SECONDS``: 0 checkpoints after every poll; otherwise each checkpoint's
    writes are spread over a sixth of it, and a crash may come in the middle of that."""

    def records(self) -> list[list[Sent]]:
        """Each vehicle's records as sent (an instant halved gives two), in event order."""
        out: list[list[Sent]] = []
        for vin, vehicle in zip(VINS, self.vehicles, strict=False):
            script = [*vehicle.script, ("park", GAP_S + 5)]
            sent: list[Sent] = []
            for i, record in enumerate(scripted(vin, script, T0 + vehicle.start_ms, vehicle.unlocated)):
                sent += halves(record) if i in vehicle.halved and record.located else [record]
            out.append(sent)
        return out

    def sends(self) -> list[Send]:
        sends: list[Send] = []
        for vehicle, records in zip(self.vehicles, self.records(), strict=True):
            late = {index % len(records): ms for index, ms in vehicle.late}
            first = [sent_late(r, late[i]) if i in late else on_time(r) for i, r in enumerate(records)]
            sends += first
        by_vehicle = self.records()
        for v, index, after_ms in self.resends:
            records = by_vehicle[v % len(by_vehicle)]
            record = records[index % len(records)]
            sent_ms = next(ms for r, ms in sends if r == record)
            sends.append((record, sent_ms + after_ms))
        return sends


phases = st.lists(
    st.tuples(st.sampled_from(["drive", "stop", "park"]), st.integers(min_value=3, max_value=60)),
    min_size=1,
    max_size=3,
).map(tuple)


@st.composite
def plans(draw: st.DrawFn, *, split_instants: bool = True, split_shard: bool = True) -> Plan:
    vehicles: list[Vehicle] = []
    for _ in range(draw(st.integers(1, 3))):
        script = draw(phases)
        total = sum(seconds for _, seconds in script) + GAP_S + 5
        index = st.integers(0, total - 1)
        late = draw(st.dictionaries(index, st.integers(1, (LATENESS_S - 1) * 1000), max_size=8))
        vehicles.append(
            Vehicle(
                script=script,
                start_ms=draw(st.integers(0, 30_999)),
                unlocated=draw(st.frozensets(index, max_size=3)),
                halved=draw(st.frozensets(index, max_size=3)) if split_instants else frozenset(),
                late=tuple(sorted(late.items())),
            )
        )
    resends = draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 3 * GAP_S * 1000)),
            max_size=3,
        )
    )
    consumer = Consumer(
        sizes=tuple(draw(st.lists(st.integers(1, 60), min_size=1, max_size=3))),
        pauses_ms=tuple(draw(st.lists(st.sampled_from([1000, 250, 5000, 20_000]), min_size=1, max_size=2))),
        crash_after=tuple(draw(st.lists(st.integers(0, 40), max_size=2))),
        crash_mid_checkpoint=draw(st.booleans()),
    )
    split = draw(st.none() | st.integers(1, 999)) if split_shard else None
    return Plan(tuple(vehicles), tuple(resends), consumer, split, draw(st.sampled_from([0, 6, 60])))


def outcomes(plan: Plan) -> tuple[Archive, Archive]:
    """(as delivered, in order)."""
    delivered = stamp(plan.sends())
    split = None if plan.split_permille is None else max(1, len(delivered) * plan.split_permille // 1000)
    consumer = Consumer(
        sizes=plan.consumer.sizes,
        pauses_ms=plan.consumer.pauses_ms,
        crash_after=plan.consumer.crash_after,
        crash_mid_checkpoint=plan.consumer.crash_mid_checkpoint,
        split_at=split,
    )
    settings = SETTINGS.model_copy(update={"checkpoint_every_seconds": float(plan.checkpoint_s)})
    got = archive_of(run(delivered, settings, consumer).stores)
    want = archive_of(run(in_order(r for rs in plan.records() for r in rs), SETTINGS, REFERENCE).stores)
    return got, want


def clock(timestamp: str) -> str:
    return timestamp[11:19]


def rows_lost(got: Archive, want: Archive) -> str:
    """The in-order archive's rows missing from ``got`` (and rows it has that the in-order one has not),
    per trip, with where the in-order stream sealed that trip's segments."""
    lines: list[str] = []
    for key in sorted(got.trips.keys() | want.trips.keys()):
        have = {r["timestamp"] for r in got.rows(key)} if key in got.trips else set()
        need = {r["timestamp"] for r in want.rows(key)} if key in want.trips else set()
        if have == need:
            continue
        prefix = key.replace("trips/", "trip-segments/").removesuffix(".json.gz") + "/"
        seals = [
            format_time(want.segment_rows(s)[-1][0]) for s in sorted(want.segments) if s.startswith(prefix)
        ]
        lost, extra = [clock(t) for t in sorted(need - have)], [clock(t) for t in sorted(have - need)]
        lines.append(
            f"{key.rsplit('/', 1)[-1][:20]}: {len(need)} rows in order, {len(have)} as delivered; "
            f"lost {lost}, extra {extra}; in-order seals after {[clock(t) for t in seals]}"
        )
    return "\n".join(lines)


def without_arrivals(archive: Archive) -> dict[str, list[list[object]]]:
    return {key: archive.segment_crumbs(key) for key in archive.segments}


def index_without_expiry(archive: Archive) -> dict[tuple[str, str], dict[str, object]]:
    return {key: item.model_dump(exclude={"expiresAt"}) for key, item in archive.index.items()}


def differing(got: dict[str, bytes], want: dict[str, bytes]) -> list[str]:
    return sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))


def assert_as_in_order(plan: Plan) -> None:
    got, want = outcomes(plan)
    lost = rows_lost(got, want)
    assert not lost, f"archive rows differ from the in-order stream's:\n{lost}"
    assert not differing(got.trips, want.trips), "archives whose bytes differ from the in-order stream's"
    assert without_arrivals(got) == without_arrivals(want), "segments' crumbs differ"
    assert index_without_expiry(got) == index_without_expiry(want), "trips-index items differ"
    assert got.index == want.index, "trips-index items differ in expiresAt"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_an_archive_is_the_in_order_streams_whatever_the_delivery(plan: Plan) -> None:
    assert_as_in_order(plan)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(split_instants=False, split_shard=False))
def test_within_lateness_no_record_is_lost_at_a_seal(plan: Plan) -> None:
    """Defect 1 alone (no equal instants, no splits): the variant that isolates it on a failing build."""
    assert_as_in_order(plan)


@settings(max_examples=40, deadline=None)
@given(plans())
def test_the_model_stamps_arrival_in_stream_order_and_bounds_displacement(plan: Plan) -> None:
    """The model itself: arrival never decreases along the shard; no record (but a resend, which repeats
    one) follows a record of its vehicle L or more later in event time; every record is delivered."""
    delivered = stamp(plan.sends())
    assert all(a.arrival_ms <= b.arrival_ms for a, b in pairwise(delivered))
    assert {d.sent for d in delivered} == {r for rs in plan.records() for r in rs}
    newest: dict[str, int] = {}
    first: set[Sent] = set()
    for d in delivered:
        if d.sent not in first:
            first.add(d.sent)
            assert newest.get(d.sent.vin, d.sent.t_ms) - d.sent.t_ms < LATENESS_S * 1000
        newest[d.sent.vin] = max(newest.get(d.sent.vin, d.sent.t_ms), d.sent.t_ms)


@pytest.mark.xfail(
    strict=True,
    reason="known defect (2026-12-05, found by this property): an instant sent as two records whose halves "
    "straddle a shard split is counted twice towards the trip's segment size, so every later segment "
    "boundary moves by one crumb; the trip's archive itself equals the in-order stream's",
)
def test_an_instant_halved_across_a_shard_split_keeps_the_segment_boundaries() -> None:
    drive = (("drive", 3),)
    plan = Plan(
        vehicles=(
            Vehicle(drive, start_ms=196, unlocated=frozenset(), halved=frozenset(), late=()),
            Vehicle(drive, start_ms=195, unlocated=frozenset(), halved=frozenset([0]), late=()),
        ),
        resends=(),
        consumer=Consumer(sizes=(1,), pauses_ms=(1000,)),
        split_permille=1,
        checkpoint_s=0,
    )
    got, want = outcomes(plan)
    assert not rows_lost(got, want) and not differing(got.trips, want.trips), "the archives are equal"
    assert without_arrivals(got) == without_arrivals(want), "segments' crumbs differ"
