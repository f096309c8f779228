"""A shard as Kinesis fills it, and the one harness that drives ``worker.pipeline.Pipeline`` through it.

The delivery model (``/work/shared/STYLE.md`` "Testing against stand-ins"; PRODUCER-FORMATS "How records
arrive"):

- a producer sends a record at a wall time: its event time + ``LATENCY_MS`` (``on_time``), later when it
  retried or buffered it (``sent_late``: the displacement), and maybe again later (a resend: the same bytes,
  another record of the shard);
- the shard holds records in the order they reached it, and Kinesis stamps ``approximateArrivalTimestamp``
  on receipt (``stamp``): arrival is monotone in stream order, several records share a second, and a
  record late in event time is late because it was sent late; its arrival is its slot, never earlier;
- the in-order reference (``in_order``) is the same record set, each record once, sorted by (event time,
  bytes), stamped the same way;
- a shard may split (``Consumer.split_at``): the parent's processor sees a prefix, then ``end_of_shard``
  and its SHARD_END checkpoint; a new ``Pipeline`` on the same stores takes the child shard, whose
  sequence numbers continue the parent's;
- a processor may die after a batch, before its checkpoint (``Consumer.crash_after``): a new ``Pipeline``
  resumes after the last checkpoint, and the shard redelivers what follows (same bytes, sequence numbers
  and arrivals).

What the trip-path redesign changes lives in one place each: the allowed-lateness setting
(``LATENESS_SETTING``), how a pipeline is built (``new_pipeline``), the checkpoints (``Checkpoints``, and
``checkpoint`` at once) and the end of a shard (``end_shard``).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from devtools.settings import settings_from
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from schemas.items import TripIndexItem, TripStateItem
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import TEST_ENV
from tests.support.fakes import MemoryStores, memory_stores
from worker.config import Settings
from worker.pipeline import BatchOutcome, Pipeline
from worker.retry import Retrier
from worker.sweep import sweep
from worker.wiring import TripStores

LATENESS_SETTING = "FLEET_TRIP_LATENESS_SECONDS"
"""Allowed lateness L."""

PARENT_SHARD = "shardId-000000000000"
CHILD_SHARD = "shardId-000000000001"
SEQUENCE_BASE = 10**20
LATENCY_MS = 1000
"""From a vehicle's clock to the shard's, for a record sent on time."""
T0 = 1_741_183_200_000  # 2025-03-05T14:00:00Z
KEY = Pseudonymizer(b"arrival-model-key")
NO_SLEEP = Retrier(sleep=lambda _seconds: None)


def stream_settings(
    *, gap_s: int, lateness_s: int, segment_breadcrumbs: int = 3600, **environ: str
) -> Settings:
    """Settings for a model stream: the trip gap, the allowed lateness L, the segment size; checkpoint
    after every poll and two writers unless ``environ`` says otherwise."""
    return settings_from(
        {
            **TEST_ENV,
            "FLEET_TRIP_GAP_SECONDS": str(gap_s),
            LATENESS_SETTING: str(lateness_s),
            "FLEET_TRIP_SEGMENT_BREADCRUMBS": str(segment_breadcrumbs),
            "FLEET_CHECKPOINT_EVERY_SECONDS": "0",
            "FLEET_WRITE_CONCURRENCY": "2",
            **environ,
        }
    )


def new_pipeline(settings: Settings, stores: MemoryStores) -> Pipeline:
    """A record processor's pipeline for one shard lease (the one place a test builds one)."""
    return Pipeline(settings, stores, KEY, NO_SLEEP)


def checkpoint(pipeline: Pipeline, now_ms: int) -> StreamPosition | None:
    """What the record processor does to checkpoint at once (shutdown): write everything pending, then the
    position the checkpoint may go to (None: it stays where it was)."""
    marks: list[StreamPosition | None] = []
    pipeline.checkpoint(now_ms, marks.append)
    return marks[0]


@dataclass
class Checkpoints:
    """What the record processor does about checkpoints after each poll (``process_records``): call one
    every ``every_ms`` (``Pipeline.begin_checkpoint``: its writes are spread over the next flushes), and
    commit it once they are written. The one place a test checkpoints as the daemon's processor does."""

    every_ms: int
    last_ms: int

    def after_poll(self, pipeline: Pipeline, now_ms: int) -> tuple[bool, StreamPosition | None]:
        """(whether a checkpoint was committed, the position it goes to: None, it stays where it was)."""
        if not pipeline.checkpointing and now_ms - self.last_ms >= self.every_ms:
            pipeline.begin_checkpoint(now_ms)
            self.last_ms = now_ms
        marks: list[StreamPosition | None] = []
        if pipeline.checkpointing and pipeline.end_checkpoint(now_ms, marks.append):
            return True, marks[0]
        return False, None


def end_shard(pipeline: Pipeline, now_ms: int) -> None:
    """SHARD_END: the parent's processor tells its pipeline no later record can come, writes everything
    and checkpoints the end of the shard; the children's processors start after it."""
    pipeline.end_of_shard(now_ms, lambda _position: None)


# --- records -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One record as a producer put it: its vehicle, its event time and its bytes (native format)."""

    vin: str
    t_ms: int
    data: bytes = field(repr=False)

    @property
    def signals(self) -> dict[str, Any]:
        signals: dict[str, Any] = orjson.loads(self.data)["signals"]
        return signals

    @property
    def located(self) -> bool:
        return "lat" in self.signals and "lng" in self.signals

    @property
    def speed(self) -> float | None:
        speed = self.signals.get("vehicleSpeed")
        return None if speed is None else float(speed)


def telemetry(vin: str, t_ms: int, signals: Mapping[str, Any]) -> Sent:
    body = {"vin": vin, "timestamp": format_time(t_ms), "signals": dict(signals)}
    return Sent(vin, t_ms, orjson.dumps(body))


def halves(record: Sent) -> tuple[Sent, Sent]:
    """One instant as two records (a gateway's split): the location in one, everything else in the
    other, the same timestamp."""
    signals = record.signals
    where: dict[str, Any] = {name: signals[name] for name in ("lat", "lng") if name in signals}
    rest = {name: value for name, value in signals.items() if name not in where}
    return telemetry(record.vin, record.t_ms, where), telemetry(record.vin, record.t_ms, rest)


def without(record: Sent, *names: str) -> Sent:
    """The record as a delta producer sends it when ``names`` did not change: left out."""
    return telemetry(record.vin, record.t_ms, {k: v for k, v in record.signals.items() if k not in names})


SPEEDS = {"drive": 30.0, "stop": 0.5, "park": 0.0}


def scripted(
    vin: str,
    script: Sequence[tuple[str, int]],
    start_ms: int,
    unlocated: Iterable[int] = (),
) -> list[Sent]:
    """A vehicle's records at 1 Hz from ``start_ms``: per phase ``(kind, seconds)``, ``drive`` (30-36 mph),
    ``stop`` (0.5 mph) or ``park`` (0 mph), each with odometer and battery, and a location unless its index
    is in ``unlocated``."""
    records: list[Sent] = []
    skip = frozenset(unlocated)
    lat, odometer, battery = 39.7, 1000.0, 90.0
    for kind, seconds in script:
        for i in range(seconds):
            speed = round(SPEEDS[kind] + (i % 5) * 1.5, 1) if kind == "drive" else SPEEDS[kind]
            lat += speed / 3600 / 69.0
            odometer += speed / 3600
            battery -= speed / 3600 * 0.3
            signals: dict[str, Any] = {
                "vehicleSpeed": speed,
                "odometer": round(odometer, 3),
                "batteryLevel": round(battery, 2),
            }
            if len(records) not in skip:
                signals |= {"lat": round(lat, 6), "lng": -104.95}
            records.append(telemetry(vin, start_ms + len(records) * 1000, signals))
    return records


# --- delivery ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """A record in the shard, with the arrival Kinesis stamped on it."""

    sent: Sent
    arrival_ms: int


Send = tuple[Sent, int]
"""A record and the wall time its producer sent it."""


def on_time(record: Sent) -> Send:
    return record, record.t_ms + LATENCY_MS


def sent_late(record: Sent, by_ms: int) -> Send:
    """Sent ``by_ms`` after it would have been (a producer's retry, a buffer sent after a drop)."""
    return record, record.t_ms + LATENCY_MS + by_ms


def stamp(sends: Iterable[Send]) -> list[Delivered]:
    """The shard as Kinesis fills it: records in the order they reach it (send time; ties by event time,
    then bytes), each stamped on receipt, never before it was sent nor before the record ahead of it."""
    shard: list[Delivered] = []
    clock: int | None = None
    for record, sent_ms in sorted(sends, key=lambda s: (s[1], s[0].t_ms, s[0].data)):
        clock = sent_ms if clock is None else max(clock, sent_ms)
        shard.append(Delivered(record, clock))
    return shard


def in_order(records: Iterable[Sent]) -> list[Delivered]:
    """The reference stream: the record set (each once) sorted by (event time, bytes), every record sent
    on time, stamped in that delivery order."""
    unique = sorted(set(records), key=lambda r: (r.t_ms, r.data))
    return stamp(map(on_time, unique))


# --- the consumer ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consumer:
    """How the record processor goes through the shard: it polls (GetRecords) after each pause, takes
    what has arrived by then (up to a limit) and processes it, an empty, caught-up batch too."""

    sizes: tuple[int, ...] = ()
    """Most records one poll returns, cycled over the non-empty batches (empty: no limit)."""
    pauses_ms: tuple[int, ...] = (1000,)
    """Wall time from one poll to the next, cycled (a consumer catching up polls at once; a slow one
    later)."""
    fetch_ms: int = 250
    """From a record's arrival to the earliest poll that returns it."""
    crash_after: tuple[int, ...] = ()
    """Numbers of the non-empty batches after which the processor dies before checkpointing."""
    crash_mid_checkpoint: bool = False
    """The processor also dies after a non-empty batch while a checkpoint's spread writes are under way."""
    max_crashes: int = 2
    split_at: int | None = None
    """Index of the first record on the child shard (None: no split)."""
    settle_after_ms: int = 3_600_000
    """The last poll, empty and caught up, this long after the last arrival: everything settles."""


Observer = Callable[[int, BatchOutcome, MemoryStores], None]
"""Called after every ``process`` with the poll's wall clock, its outcome and the stores (what a reader
sees at that moment)."""


@dataclass
class Run:
    stores: MemoryStores
    late_for_machine: int = 0
    late_after_archive: int = 0
    crashes: int = 0
    polls: int = 0


MAX_IDLE_POLLS = 120
"""A longer pause between arrivals is skipped to its last poll."""


class _Processor:
    """The record processor(s) of one run: the wall clock, the batches, the checkpoints."""

    def __init__(self, settings: Settings, consumer: Consumer, run: Run, observe: Observer | None) -> None:
        self.settings = settings
        self.consumer = consumer
        self.run = run
        self.observe = observe
        self.now = 0
        self.batches = 0
        self.every_ms = int(settings.checkpoint_every_seconds * 1000)

    def process(self, pipeline: Pipeline, records: Sequence[KinesisRecord], caught_up: bool) -> None:
        outcome = pipeline.process(records, now_ms=self.now, caught_up=caught_up)
        self.run.late_for_machine += outcome.late_for_machine
        self.run.late_after_archive += outcome.late_after_archive
        self.run.polls += 1
        if self.observe is not None:
            self.observe(self.now, outcome, self.run.stores)

    def shard(self, shard: Sequence[KinesisRecord], lo: int, hi: int) -> Pipeline:
        """Process ``shard[lo:hi]`` to its end, crashes and redeliveries included; returns the pipeline
        left running."""
        consumer = self.consumer
        pipeline = new_pipeline(self.settings, self.run.stores)
        position = checkpointed = lo
        checkpoints = Checkpoints(self.every_ms, self.now)
        while position < hi:
            pause = consumer.pauses_ms[self.run.polls % len(consumer.pauses_ms)]
            due = shard[position].position.arrival_ms + consumer.fetch_ms
            self.now += pause
            if due - self.now > MAX_IDLE_POLLS * pause:
                self.now = due - pause  # a long silence: its last empty poll, then the record
            available = self.now - consumer.fetch_ms
            limit = consumer.sizes[self.batches % len(consumer.sizes)] if consumer.sizes else hi
            end = position
            while end < hi and end - position < limit and shard[end].position.arrival_ms <= available:
                end += 1
            records = shard[position:end]
            position = end
            caught_up = position >= hi or shard[position].position.arrival_ms > available
            self.process(pipeline, records, caught_up)
            if records:
                batch, self.batches = self.batches, self.batches + 1
                mid_checkpoint = consumer.crash_mid_checkpoint and pipeline.checkpointing
                if (
                    batch in consumer.crash_after or mid_checkpoint
                ) and self.run.crashes < consumer.max_crashes:
                    pipeline.close()  # what it buffered is lost: the next owner replays from the checkpoint
                    pipeline = new_pipeline(self.settings, self.run.stores)
                    position, self.run.crashes = checkpointed, self.run.crashes + 1
                    checkpoints = Checkpoints(self.every_ms, self.now)
                    continue
            committed, mark = checkpoints.after_poll(pipeline, self.now)
            if committed and mark is not None:  # the first record a restart redelivers
                checkpointed = int(mark.sequence_number) - SEQUENCE_BASE + 1
        return pipeline


def kinesis(stream: Sequence[Delivered], split_at: int | None = None) -> list[KinesisRecord]:
    """The shard's records: sequence numbers in stream order, continuing on the child after a split."""
    split = len(stream) if split_at is None else split_at
    return [
        KinesisRecord(
            d.sent.data,
            d.sent.vin,
            StreamPosition(
                PARENT_SHARD if i < split else CHILD_SHARD, str(SEQUENCE_BASE + i), 0, d.arrival_ms
            ),
        )
        for i, d in enumerate(stream)
    ]


def run(
    stream: Sequence[Delivered],
    settings: Settings,
    consumer: Consumer | None = None,
    *,
    stores: MemoryStores | None = None,
    observe: Observer | None = None,
) -> Run:
    """Deliver ``stream`` to record processors as ``consumer`` says, then one empty, caught-up poll
    ``settle_after_ms`` after the last arrival, a checkpoint, and the orphan sweep then, as production
    runs it (it completes a vehicle whose unsettled records a split handed to a child shard that never
    heard from it again: the records wait in its item, docs/design.md)."""
    consumer = consumer or Consumer()
    result = Run(stores or memory_stores())
    if not stream:
        return result
    split = (
        consumer.split_at if consumer.split_at is not None and 0 < consumer.split_at < len(stream) else None
    )
    shard = kinesis(stream, split)
    processor = _Processor(settings, consumer, result, observe)
    processor.now = stream[0].arrival_ms + consumer.fetch_ms - consumer.pauses_ms[0]
    if split is not None:
        parent = processor.shard(shard, 0, split)
        end_shard(parent, processor.now)
        parent.close()
    pipeline = processor.shard(shard, split or 0, len(shard))
    processor.now = max(processor.now, stream[-1].arrival_ms) + consumer.settle_after_ms
    processor.process(pipeline, [], caught_up=True)
    checkpoint(pipeline, processor.now)
    pipeline.close()
    stores = result.stores
    sweep(settings, TripStores(stores.trips, stores.trail, stores.archive), now_ms=processor.now)
    return result


# --- what a run left -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """The archive a run left: S3 objects under ``trips/`` and ``trip-segments/`` (bytes) and the
    ``trips-index`` items."""

    trips: dict[str, bytes]
    segments: dict[str, bytes]
    index: dict[tuple[str, str], TripIndexItem]

    def rows(self, key: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = orjson.loads(gzip.decompress(self.trips[key]))
        return rows

    def segment_rows(self, key: str) -> list[list[Any]]:
        rows: list[list[Any]] = orjson.loads(gzip.decompress(self.segments[key]))
        return rows

    def segment_crumbs(self, key: str) -> list[list[Any]]:
        """A segment's rows without their arrival second (rows are ``[tMs, arrivalS, lat, ...]``), a
        volatile attribute: another delivery of the same records stamps other arrivals."""
        return [[row[0], *row[2:]] for row in self.segment_rows(key)]

    def index_by_start(self) -> dict[str, TripIndexItem]:
        return {item.startTime: item for item in self.index.values()}


def archive_of(stores: MemoryStores) -> Archive:
    objects = dict(stores.archive.objects)
    return Archive(
        trips={k: v for k, v in objects.items() if k.startswith("trips/")},
        segments={k: v for k, v in objects.items() if k.startswith("trip-segments/")},
        index=dict(stores.archive.index),
    )


def open_trips(stores: MemoryStores) -> dict[str, TripStateItem]:
    """The trip-state items a reader would see now."""
    return dict(stores.trips.items)
