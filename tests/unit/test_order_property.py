"""Issue 17's property: a trip's archive is a function of the vehicle's records, not of their order.

Any permutation of a vehicle's stream in which no record moves by more than the gap (in event time), plus
redeliveries of any ranges (a producer's resends; a processor that crashed and a new one resuming from its
last checkpoint), yields byte-identical archive objects (trips and staged segments) and identical index
items as the in-order stream. Driven through the production write path (``worker.pipeline.Pipeline``:
decode, settle buffer, trip machine, trail buffer, executor, archiver) on the in-memory stores. Every
stream ends parked for longer than the gap, so every trip is completed by the stream (the orphan sweep
judges silence by the wall clock and is tested elsewhere).

A record's arrival is a fact of the record (its event time + 1 s), the same in every order: a completion
point R is the arrival of the record that completed the trip, and the index's ``expiresAt`` and a segment's
raw crumbs carry arrivals, so the in-order and the permuted stream must give each record the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.settings import settings_from
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from schemas.items import TripIndexItem
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import TEST_ENV
from tests.support.fakes import MemoryStores, memory_stores
from worker.config import Settings
from worker.pipeline import Pipeline
from worker.retry import Retrier

GAP_SECONDS = 60
SHARD = "shardId-000000000000"
KEY = Pseudonymizer(b"order-property-key")
VIN = "1FTEW1EP5MKD00021"
T0 = 1_741_183_200_000  # 2025-03-05T14:00:00Z
ARRIVAL_DELAY_MS = 1000
NO_SLEEP = Retrier(sleep=lambda _seconds: None)
SETTINGS: Settings = settings_from(
    {
        **TEST_ENV,
        "FLEET_TRIP_GAP_SECONDS": str(GAP_SECONDS),
        "FLEET_TRIP_SEGMENT_BREADCRUMBS": "40",  # long drives are staged in segments too
        "FLEET_CHECKPOINT_EVERY_SECONDS": "0",
        "FLEET_WRITE_CONCURRENCY": "2",
    }
)


@dataclass(frozen=True)
class Record:
    data: bytes
    t_ms: int

    @property
    def arrival_ms(self) -> int:
        return self.t_ms + ARRIVAL_DELAY_MS


phases = st.lists(
    st.tuples(st.sampled_from(["drive", "stop", "park"]), st.integers(min_value=3, max_value=80)),
    min_size=1,
    max_size=5,
)


def scripted(script: Sequence[tuple[str, int]], offset_ms: int, unlocated: frozenset[int]) -> list[Record]:
    """The vehicle's records in event order, 1 Hz; ``unlocated``: indexes of records without a fix."""
    records: list[Record] = []
    lat, odometer, battery = 39.7, 1000.0, 90.0
    for kind, seconds in script:
        for i in range(seconds):
            speed = round(30 + (i % 5) * 1.5, 1) if kind == "drive" else (0.5 if kind == "stop" else 0.0)
            lat += speed / 3600 / 69.0
            odometer += speed / 3600
            battery -= speed / 3600 * 0.3
            t = T0 + offset_ms + len(records) * 1000
            signals: dict[str, object] = {
                "vehicleSpeed": speed,
                "odometer": round(odometer, 3),
                "batteryLevel": round(battery, 2),
            }
            if len(records) not in unlocated:
                signals |= {"lat": round(lat, 6), "lng": -104.95}
            body = {"vin": VIN, "timestamp": format_time(t), "signals": signals}
            records.append(Record(orjson.dumps(body), t))
    return records


@dataclass
class Outcome:
    objects: dict[str, bytes]
    index: dict[tuple[str, str], TripIndexItem]


def kinesis(delivered: Sequence[Record], first: int) -> list[KinesisRecord]:
    """Sequence numbers by position in what the shard holds (a resend is a new Kinesis record)."""
    return [
        KinesisRecord(r.data, VIN, StreamPosition(SHARD, str(10**20 + first + i), 0, r.arrival_ms))
        for i, r in enumerate(delivered)
    ]


def run(delivered: Sequence[Record], sizes: Sequence[int], crashes: Sequence[bool]) -> Outcome:
    """Deliver the shard in batches of ``sizes`` (cycled). After a batch, ``crashes`` (cycled) says
    whether the processor checkpoints (flush everything, then the watermark) or dies without flushing,
    a new one resuming after the last checkpoint on the same stores. Then an empty, caught-up poll an
    hour later settles everything, and a checkpoint flush."""
    stores: MemoryStores = memory_stores()
    shard = kinesis(delivered, 0)
    end_ms = max(r.t_ms for r in delivered) + 3_600_000
    pipeline = Pipeline(SETTINGS, stores, KEY, NO_SLEEP)
    position, batch, checkpointed, restarts = 0, 0, 0, 0
    while position < len(shard):
        records = shard[position : position + sizes[batch % len(sizes)]]
        now = max(r.position.arrival_ms for r in records)
        pipeline.process(records, now_ms=now)
        position += len(records)
        if crashes[batch % len(crashes)] and restarts < 3:
            pipeline.close()  # whatever it buffered is lost: the next owner replays from the checkpoint
            pipeline = Pipeline(SETTINGS, stores, KEY, NO_SLEEP)
            position, restarts = checkpointed, restarts + 1
        else:
            pipeline.flush(now, everything=True)
            mark = pipeline.watermark()
            if mark is not None:
                checkpointed = int(mark.sequence_number) - 10**20 + 1
        batch += 1
    pipeline.process([], now_ms=end_ms, caught_up=True)
    pipeline.flush(end_ms, everything=True)
    pipeline.close()
    assert not stores.trips.items, "the stream ends parked for longer than the gap: every trip archived"
    return Outcome(dict(stores.archive.objects), dict(stores.archive.index))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Record], list[Record], list[int], list[bool]]:
    """(in order, as delivered, batch sizes, crashes)."""
    script = [*draw(phases), ("park", GAP_SECONDS + 5)]
    total = sum(seconds for _, seconds in script)
    unlocated = frozenset(draw(st.sets(st.integers(0, max(total - 1, 0)), max_size=5)))
    records = scripted(script, draw(st.integers(0, 999)), unlocated)
    # Each record is delivered at its event time + a displacement below the gap: no record ever follows
    # one more than the gap later than itself in event time.
    displacement = st.one_of(st.just(0), st.integers(0, (GAP_SECONDS - 1) * 1000))
    moved = draw(st.lists(displacement, min_size=len(records), max_size=len(records)))
    order = sorted(range(len(records)), key=lambda i: (records[i].t_ms + moved[i], i))
    delivered = [records[i] for i in order]
    for _ in range(draw(st.integers(0, 3))):  # a resend of a range, anywhere after it
        start = draw(st.integers(0, len(delivered) - 1))
        end = draw(st.integers(start + 1, min(len(delivered), start + 30)))
        at = draw(st.integers(end, len(delivered)))
        delivered[at:at] = delivered[start:end]
    sizes = draw(st.lists(st.integers(1, 60), min_size=1, max_size=4))
    crashes = draw(st.lists(st.booleans(), min_size=1, max_size=4).filter(lambda c: any(c) or len(c) == 1))
    return records, delivered, sizes, crashes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_any_bounded_permutation_with_redeliveries_archives_what_the_in_order_stream_archives(
    stream: tuple[list[Record], list[Record], list[int], list[bool]],
) -> None:
    in_order, delivered, sizes, crashes = stream
    expected = run(in_order, [len(in_order)], [False])
    got = run(delivered, sizes, crashes)
    assert got.index == expected.index
    assert got.objects.keys() == expected.objects.keys()
    for key, body in expected.objects.items():
        assert got.objects[key] == body, key
