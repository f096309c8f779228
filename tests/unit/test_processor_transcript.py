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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_from(
        {**TEST_ENV, "FLEET_CHECKPOINT_EVERY_RECORDS": "1", "FLEET_HEARTBEAT_PATH": str(tmp_path)}
    )


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


def process(records: Sequence[ShardRecord]) -> dict[str, Any]:
    return {"action": "processRecords", "records": [r.message() for r in records], "millisBehindLatest": 0}


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
    processor = FleetRecordProcessor(settings, pipeline_factory=lambda: pipeline)
    output = io.StringIO()
    lines = "".join(orjson.dumps(message).decode() + "\n" for message in daemon)
    loop = kcl.KCLProcess(
        processor, input_file=io.StringIO(lines), output_file=output, error_file=io.StringIO()
    )
    try:
        loop.run()
    finally:
        said += [orjson.loads(line) for line in output.getvalue().splitlines() if line.strip()]


def test_a_batch_is_checkpointed_at_its_last_record_and_a_throttled_checkpoint_is_asked_again(
    settings: Settings,
) -> None:
    records = shard_records(fixture("trips.jsonl"))[:40]
    last = records[-1].sequence_number
    said: list[dict[str, Any]] = []
    daemon = [
        initialize(),
        process(records),
        checkpoint_answer(last, "ThrottlingException"),
        checkpoint_answer(last),
        {"action": "shardEnded"},
        checkpoint_answer(None),
    ]
    converse(settings, memory_stores(), daemon, said)
    assert said == [
        {"action": "status", "responseFor": "initialize"},
        {"action": "checkpoint", "sequenceNumber": last, "subSequenceNumber": 0},
        {"action": "checkpoint", "sequenceNumber": last, "subSequenceNumber": 0},
        {"action": "status", "responseFor": "processRecords"},
        {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None},
        {"action": "status", "responseFor": "shardEnded"},
    ]


def test_a_failed_write_ends_the_process_and_nothing_is_checkpointed(settings: Settings) -> None:
    stores = memory_stores()
    stores.vehicle_state.always = TransientError("SlowDown")
    said: list[dict[str, Any]] = []
    with pytest.raises(SystemExit) as exited:
        converse(settings, stores, [initialize(), process(shard_records(fixture("trips.jsonl"))[:40])], said)
    assert exited.value.code == EXIT_BATCH_FAILED
    assert said == [{"action": "status", "responseFor": "initialize"}]


def test_a_lost_lease_is_answered_without_a_checkpoint(settings: Settings) -> None:
    stores = memory_stores()
    records = shard_records(fixture("trips.jsonl"))[:5]
    said: list[dict[str, Any]] = []
    daemon = [
        initialize(),
        process(records),
        checkpoint_answer(records[-1].sequence_number),
        {"action": "leaseLost"},
    ]
    converse(settings, stores, daemon, said)
    assert [s["action"] for s in said] == ["status", "checkpoint", "status", "status"]
    assert said[-1] == {"action": "status", "responseFor": "leaseLost"}
    assert stores.vehicle_state.items, "the batch was applied before the lease went"
