"""A checkpoint's writes are spread over the flushes after it is called for (``Pipeline.begin_checkpoint``),
and it goes to the watermark of that moment once they are written: at a full shard what is pending at any
moment is about two writes a vehicle, which written at once held the shard's next poll back for seconds
every minute (docs/perf/full-shard.md). Through the whole ``Pipeline`` on the in-memory stores, and through
the record processor with a scripted checkpointer."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import orjson
import pytest
from amazon_kclpy.messages import InitializeInput

from devtools.settings import settings_from
from processors.frontier import ShardProgress
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from processors.vehicle_state import named_item
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import TEST_ENV
from tests.support.fakes import MemoryStores, memory_stores
from tests.support.harness import RecordingCheckpointer, ShardRecord, process_records_input
from worker.config import Settings
from worker.pipeline import Pipeline
from worker.record_processor import FleetRecordProcessor
from worker.retry import Retrier

SHARD = "shardId-000000000000"
KEY = Pseudonymizer(b"spread-checkpoint-tests-key")
VINS = [f"1HGCM82633A{n:06d}" for n in range(120)]
T0 = 1_800_000_000_000
POLL_MS = 250
CALLED_AT_S = 40
"""The checkpoint is called for after this many seconds of the fleet."""


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()  # the processor's initialize freezes what exists; undo it for the rest of the session


def parked(second: int, first_sequence: int) -> list[KinesisRecord]:
    """Every vehicle's record of ``second``: parked, repeating its values (liveness only after the first)."""
    out = []
    for i, vin in enumerate(VINS):
        data = orjson.dumps(
            {
                "vin": vin,
                "timestamp": format_time(T0 + second * 1000),
                "signals": {"vehicleSpeed": 0.0, "lat": 39.7, "lng": -104.9, "shiftState": "P"},
            }
        )
        position = StreamPosition(SHARD, str(first_sequence + i), 0, T0 + second * 1000)
        out.append(KinesisRecord(data, vin, position))
    return out


def settings_for(tmp_path: Path) -> Settings:
    settings = settings_from({**TEST_ENV, "FLEET_HEARTBEAT_PATH": str(tmp_path)})
    assert settings.checkpoint_every_seconds == 60  # the shipped interval: its writes spread over 10 s
    return settings


def new_pipeline(settings: Settings) -> tuple[Pipeline, MemoryStores]:
    stores = memory_stores()
    return Pipeline(settings, stores, KEY, Retrier(sleep=lambda _s: None)), stores


def commit_at(
    commits: list[tuple[int, StreamPosition | None]], now_ms: int, position: StreamPosition | None
) -> None:
    commits.append((now_ms, position))


def polls(seconds: range) -> list[tuple[int, int]]:
    """(now, second) of each poll: the daemon polls every 250 ms, a second's records in its first poll."""
    return [(T0 + s * 1000 + 100 + p * POLL_MS, s) for s in seconds for p in range(1000 // POLL_MS)]


def test_a_checkpoint_s_writes_are_spread_and_it_goes_to_the_watermark_of_when_it_was_called_for(
    tmp_path: Path,
) -> None:
    pipeline, stores = new_pipeline(settings_for(tmp_path))
    counting = stores.vehicle_state
    sequence = 1
    for now, second in polls(range(CALLED_AT_S)):
        first = now == T0 + second * 1000 + 100
        pipeline.process(parked(second, sequence) if first else [], now)
        sequence += len(VINS) if first else 0
    called_ms = now
    target = pipeline.watermark()
    assert target is not None
    written = counting.writes.total()
    pipeline.begin_checkpoint(called_ms)
    at_call = counting.writes.total() - written
    spread, polls_in_spread = pipeline.spread_ms, pipeline.spread_ms // POLL_MS
    assert pipeline.checkpointing and at_call == math.ceil(len(VINS) / polls_in_spread), "a first share"

    commits: list[tuple[int, StreamPosition | None]] = []
    per_poll: list[int] = []
    for now, second in polls(range(CALLED_AT_S, CALLED_AT_S + 15)):
        before = counting.writes.total()
        first = now == T0 + second * 1000 + 100
        pipeline.process(parked(second, sequence) if first else [], now)
        sequence += len(VINS) if first else 0
        if pipeline.checkpointing:
            per_poll.append(counting.writes.total() - before)
            pipeline.end_checkpoint(now, partial(commit_at, commits, now))
    pipeline.close()

    [(committed_ms, position)] = commits
    assert position == target, "the watermark of the call, not of the commit"
    assert spread == 10_000
    assert called_ms + spread - POLL_MS <= committed_ms <= called_ms + spread + POLL_MS
    # Every vehicle had a liveness update pending at the call: each is written once, a share a poll.
    assert at_call + sum(per_poll) == len(VINS)
    assert max(per_poll) <= math.ceil(len(VINS) * POLL_MS / spread) + 1, per_poll
    stored = [named_item(stores.vehicle_state.items[KEY.pseudo_vin(vin)]) for vin in VINS]
    called_second = format_time(T0 + (CALLED_AT_S - 1) * 1000)
    assert all(item["timestamp"] >= called_second for item in stored), "durable through the call"
    newest = format_time(T0 + (CALLED_AT_S + 14) * 1000)
    assert any(item["timestamp"] < newest for item in stored), "what came after is not forced"
    for vin in VINS[:5]:
        crumbs = stores.trail.read(KEY.pseudo_vin(vin), T0, T0 + (CALLED_AT_S - 1) * 1000)
        assert len(crumbs) == CALLED_AT_S, "every crumb received by the call is written"


def test_a_checkpoint_at_once_supersedes_one_under_way(tmp_path: Path) -> None:
    pipeline, stores = new_pipeline(settings_for(tmp_path))
    counting = stores.vehicle_state
    now = T0 + 100
    pipeline.process(parked(0, 1), now)
    pipeline.begin_checkpoint(now)
    pipeline.process(parked(1, 1 + len(VINS)), now + 1000)
    assert pipeline.checkpointing and counting.writes.total() < len(VINS)
    marks: list[StreamPosition | None] = []
    pipeline.checkpoint(now + 1100, marks.append)  # shutdown: everything, at once
    assert counting.writes.total() >= len(VINS) and not pipeline.checkpointing
    assert marks == [pipeline.watermark()]
    assert not pipeline.end_checkpoint(now + 1200, marks.append) and len(marks) == 1
    pipeline.close()


def test_the_record_processor_reports_the_progress_of_the_call_once_its_writes_are_written(
    tmp_path: Path,
) -> None:
    """The progress item vouches for what had been received when the checkpoint was called for (the sweep
    reads it), and it is written after that is durable, right before the checkpoint."""
    settings = settings_for(tmp_path)
    clock = {"now": T0 / 1000}
    stores = memory_stores()
    pipeline = Pipeline(settings, stores, KEY, Retrier(sleep=lambda _s: None))
    reports: list[ShardProgress] = []
    record = stores.progress.record

    def seen(progress: ShardProgress) -> int:
        reports.append(progress)
        return record(progress)

    stores.progress.record = seen  # type: ignore[method-assign]
    processor = FleetRecordProcessor(
        settings,
        pipeline_factory=lambda: pipeline,
        clock=lambda: clock["now"],
        wall_clock=lambda: clock["now"],
    )
    start = {
        "action": "initialize",
        "shardId": SHARD,
        "sequenceNumber": "TRIM_HORIZON",
        "subSequenceNumber": 0,
    }
    processor.initialize(InitializeInput(start))
    checkpointer = RecordingCheckpointer()
    arrivals: dict[int, int] = {}
    sequence = 1
    for now, second in polls(range(90)):
        clock["now"] = now / 1000
        first = now == T0 + second * 1000 + 100
        batch = parked(second, sequence) if first else []
        sequence += len(batch)
        if batch:
            arrivals[now] = batch[-1].position.arrival_ms
        delivered = [shard_record(r) for r in batch]
        processor.process_records(process_records_input(delivered, checkpointer, 1000 if batch else 0))

    # Called for 60 s after initialize; its writes spread over 10 s, then the report and the checkpoint.
    [report] = reports
    called_ms = T0 + 60_000 + 100
    assert report.written_ms >= called_ms + pipeline.spread_ms - POLL_MS
    assert report.last_arrival_ms == max(a for at, a in arrivals.items() if at <= called_ms)
    assert report.caught_up_ms is not None and report.caught_up_ms <= called_ms
    assert len(checkpointer.calls) == 1


def shard_record(record: KinesisRecord) -> ShardRecord:
    position = record.position
    return ShardRecord(record.data, record.partition_key, position.sequence_number, position.arrival_ms)


def test_a_clock_that_stands_still_holds_a_checkpoint_back_no_longer_than_the_spread_s_polls(
    tmp_path: Path,
) -> None:
    pipeline, stores = new_pipeline(settings_for(tmp_path))
    now = T0 + 100
    pipeline.process(parked(0, 1), now)
    pipeline.begin_checkpoint(now)
    commits: list[StreamPosition | None] = []
    flushes = 0
    while not pipeline.end_checkpoint(now, commits.append):
        pipeline.process([], now)  # the wall clock stands still (or stepped back): polls still come
        flushes += 1
        assert flushes <= pipeline.spread_ms // POLL_MS, "the spread's polls have passed"
    assert commits == [pipeline.watermark()] and stores.vehicle_state.writes.total() == len(VINS)
    pipeline.close()


def driving(second: int, first_sequence: int) -> list[KinesisRecord]:
    out = []
    for i, vin in enumerate(VINS[:40]):
        signals = {"vehicleSpeed": 30.0, "shiftState": "D", "lat": 39.7 + second * 1e-4, "lng": -104.9}
        data = orjson.dumps({"vin": vin, "timestamp": format_time(T0 + second * 1000), "signals": signals})
        position = StreamPosition(SHARD, str(first_sequence + i), 0, T0 + second * 1000)
        out.append(KinesisRecord(data, vin, position))
    return out


def test_a_vehicle_staged_and_due_in_one_flush_is_written_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Driving vehicles are due (live progress) while staged: two writes of one item in one flush would
    race each other's version and re-plan (``trip_state_conflict``)."""
    pipeline, _ = new_pipeline(settings_for(tmp_path))
    sequence, commits = 1, list[StreamPosition | None]()
    for now, second in polls(range(70)):
        first = now == T0 + second * 1000 + 100
        batch = driving(second, sequence) if first else []
        sequence += len(batch)
        pipeline.process(batch, now)
        if second == 45 and now == T0 + second * 1000 + 100 + 2 * POLL_MS:
            pipeline.begin_checkpoint(now)
        if pipeline.checkpointing:
            pipeline.end_checkpoint(now, commits.append)
    pipeline.close()
    assert len(commits) == 1
    assert not [r for r in caplog.records if "trip_state_conflict" in r.getMessage()]
