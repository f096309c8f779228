"""The record processor in-process, through amazon-kclpy's own ``KCLProcess`` loop, the way amazon-kclpy
tests itself: a scripted daemon transcript on an in-memory input, the processor's answers read back line
by line, the stores in memory. The same messages as the real MultiLangDaemon sends; no JVM, no AWS."""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from amazon_kclpy import kcl

from devtools.settings import settings_from
from processors.errors import TransientError
from processors.frontier import ShardProgress
from processors.pseudonymize import Pseudonymizer
from tests.conftest import TEST_ENV
from tests.support.fakes import MemoryStores, memory_stores
from tests.support.harness import ShardRecord, fixture, shard_records
from worker.config import Settings
from worker.pipeline import Pipeline
from worker.record_processor import EXIT_BATCH_FAILED, FleetRecordProcessor
from worker.retry import Retrier

SHARD = "shardId-000000000000"
KEY = Pseudonymizer(b"transcript-tests-key")
ARRIVAL_MS = 1_764_547_200_000
NOW = (ARRIVAL_MS + 400_000) / 1000
"""The processor's wall clock: past every record's arrival + D (300 s), so an empty, caught-up poll
settles everything buffered; a batch alone settles nothing (its arrivals are all the same)."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Every poll is a checkpoint opportunity (the time policy at 0 s).
    return settings_from(
        {**TEST_ENV, "FLEET_CHECKPOINT_EVERY_SECONDS": "0", "FLEET_HEARTBEAT_PATH": str(tmp_path)}
    )


def records_of(name: str, count: int) -> list[ShardRecord]:
    return shard_records(fixture(name), arrival_ms=ARRIVAL_MS)[:count]


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()  # initialize freezes what exists; undo it for the rest of the session


def initialize() -> dict[str, Any]:
    return {
        "action": "initialize",
        "shardId": SHARD,
        "sequenceNumber": "TRIM_HORIZON",
        "subSequenceNumber": 0,
    }


def process(records: Sequence[ShardRecord], millis_behind: int = 0) -> dict[str, Any]:
    return {
        "action": "processRecords",
        "records": [r.message() for r in records],
        "millisBehindLatest": millis_behind,
    }


def checkpoint_answer(sequence_number: str | None, error: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "action": "checkpoint",
        "sequenceNumber": sequence_number,
        "subSequenceNumber": 0,
    }
    if error is not None:
        answer["error"] = error
    return answer


def converse(
    settings: Settings, stores: MemoryStores, daemon: list[dict[str, Any]], said: list[dict[str, Any]]
) -> None:
    """Run ``KCLProcess`` over the daemon's side of the conversation and put the processor's side, parsed,
    in ``said`` (also what it said before exiting, when it exits)."""
    pipeline = Pipeline(settings, stores, KEY, Retrier(sleep=lambda _seconds: None))
    processor = FleetRecordProcessor(settings, pipeline_factory=lambda: pipeline, wall_clock=lambda: NOW)
    output = io.StringIO()
    lines = "".join(orjson.dumps(message).decode() + "\n" for message in daemon)
    loop = kcl.KCLProcess(
        processor, input_file=io.StringIO(lines), output_file=output, error_file=io.StringIO()
    )
    try:
        loop.run()
    finally:
        said += [orjson.loads(line) for line in output.getvalue().splitlines() if line.strip()]


def test_checkpoints_stay_before_unsettled_records_and_a_throttled_checkpoint_is_asked_again(
    settings: Settings,
) -> None:
    records = records_of("trips.jsonl", 40)
    last = records[-1].sequence_number
    said: list[dict[str, Any]] = []
    daemon = [
        initialize(),
        process(records),  # all unsettled: the watermark is before the first record, nothing to checkpoint
        process([]),  # caught up: the stream clock moves to now - 1 s, everything settles
        checkpoint_answer(last, "ThrottlingException"),
        checkpoint_answer(last),
        process([]),  # nothing new: the watermark did not move, no checkpoint
        {"action": "shardEnded"},
        checkpoint_answer(None),
    ]
    stores = memory_stores()
    converse(settings, stores, daemon, said)
    assert said == [
        {"action": "status", "responseFor": "initialize"},
        {"action": "status", "responseFor": "processRecords"},
        {"action": "checkpoint", "sequenceNumber": last, "subSequenceNumber": 0},
        {"action": "checkpoint", "sequenceNumber": last, "subSequenceNumber": 0},
        {"action": "status", "responseFor": "processRecords"},
        {"action": "status", "responseFor": "processRecords"},
        {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None},
        {"action": "status", "responseFor": "shardEnded"},
    ]
    assert stores.vehicle_state.items and stores.trips.items, "flushed before the first checkpoint"


def test_a_failed_flush_ends_the_process_and_nothing_is_checkpointed(settings: Settings) -> None:
    stores = memory_stores()
    stores.vehicle_state.always = TransientError("SlowDown")
    said: list[dict[str, Any]] = []
    with pytest.raises(SystemExit) as exited:
        converse(settings, stores, [initialize(), process(records_of("trips.jsonl", 40)), process([])], said)
    assert exited.value.code == EXIT_BATCH_FAILED
    # The checkpoint after the batch flushes first; the flush fails: exit 3, no checkpoint line.
    assert said == [{"action": "status", "responseFor": "initialize"}]


@pytest.mark.parametrize("fails", [False, True])
def test_shutdown_requested_flushes_then_checkpoints(settings: Settings, fails: bool) -> None:
    settings = settings.model_copy(update={"checkpoint_every_seconds": 3600.0})
    records = records_of("trips.jsonl", 40)
    stores = memory_stores()
    said: list[dict[str, Any]] = []
    daemon = [initialize(), process(records), process([]), {"action": "shutdownRequested"}]
    if fails:
        stores.vehicle_state.always = TransientError("SlowDown")
        with pytest.raises(SystemExit) as exited:
            converse(settings, stores, daemon, said)
        assert exited.value.code == EXIT_BATCH_FAILED
        assert [s["action"] for s in said] == ["status", "status", "status"]  # no checkpoint line
        assert not stores.vehicle_state.items
        return
    daemon.append(checkpoint_answer(records[-1].sequence_number))
    converse(settings, stores, daemon, said)
    assert said[-2:] == [
        {"action": "checkpoint", "sequenceNumber": records[-1].sequence_number, "subSequenceNumber": 0},
        {"action": "status", "responseFor": "shutdownRequested"},
    ]
    # Nothing was due before (B is not over at the batch's receipt): all written by the shutdown flush.
    assert len(stores.vehicle_state.items) == len({r.partition_key for r in records})


def test_a_lost_lease_drops_the_buffers_without_a_flush_or_a_checkpoint(settings: Settings) -> None:
    settings = settings.model_copy(update={"checkpoint_every_seconds": 3600.0})
    stores = memory_stores()
    said: list[dict[str, Any]] = []
    daemon = [initialize(), process(records_of("trips.jsonl", 5)), {"action": "leaseLost"}]
    converse(settings, stores, daemon, said)
    assert [s["action"] for s in said] == ["status", "status", "status"]
    assert said[-1] == {"action": "status", "responseFor": "leaseLost"}
    assert not stores.vehicle_state.items, "the next owner replays from the last checkpoint"


def test_each_checkpoint_reports_the_shard_s_progress_after_its_flush(settings: Settings) -> None:
    """The orphan sweep reads these reports instead of the stream. Each checkpoint writes one (a
    checkpoint that does not move too: the shard is still current), after the flush that put everything
    received into trip-state; the end of the shard writes the last."""
    records = records_of("trips.jsonl", 40)
    last = records[-1].sequence_number
    stores = memory_stores()
    reports: list[tuple[ShardProgress, int]] = []
    record = stores.progress.record

    def seen(progress: ShardProgress) -> int:
        reports.append((progress, len(stores.vehicle_state.items)))  # what the flush wrote before it
        return record(progress)

    stores.progress.record = seen  # type: ignore[method-assign]
    said: list[dict[str, Any]] = []
    daemon = [
        initialize(),
        process(records, millis_behind=5_000),  # a backlog: vouches for what it received only
        process([]),  # caught up: everything settles and is written, then the checkpoint
        checkpoint_answer(last),
        process([]),  # the watermark did not move: no checkpoint, a report all the same
        {"action": "shardEnded"},
        checkpoint_answer(None),
    ]
    converse(settings, stores, daemon, said)
    now_ms = int(NOW * 1000)
    assert [report for report, _ in reports] == [
        ShardProgress(SHARD, now_ms, ARRIVAL_MS, None, 5_000),
        ShardProgress(SHARD, now_ms, ARRIVAL_MS, now_ms, 0),
        ShardProgress(SHARD, now_ms, ARRIVAL_MS, now_ms, 0),
        ShardProgress(SHARD, now_ms, ARRIVAL_MS, now_ms, 0, ended=True),
    ]
    # B is not over at the batch's receipt: only the checkpoint's flush wrote the vehicles' states.
    assert reports[0][1] == len({r.partition_key for r in records}), "reported after the flush"
    assert stores.progress.items == {SHARD: reports[-1][0]}
    assert [s["action"] for s in said].count("checkpoint") == 2


def test_a_failed_progress_report_ends_the_process_before_the_checkpoint(settings: Settings) -> None:
    stores = memory_stores()
    stores.progress.always = TransientError("ProvisionedThroughputExceededException")
    said: list[dict[str, Any]] = []
    with pytest.raises(SystemExit) as exited:
        converse(settings, stores, [initialize(), process(records_of("trips.jsonl", 40)), process([])], said)
    assert exited.value.code == EXIT_BATCH_FAILED
    assert said == [{"action": "status", "responseFor": "initialize"}], "no checkpoint line"
    assert stores.trips.items, "the flush before it was written"
