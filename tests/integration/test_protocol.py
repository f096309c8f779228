"""The record processor driven through the MultiLangDaemon protocol, line by line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.pseudonymize import Pseudonymizer
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from tests.conftest import FIXTURES, AwsEnv
from tests.support.harness import (
    ProcessExited,
    ProcessorHarness,
    ShardRecord,
    batches,
    fixture,
    shard_records,
)
from tests.support.oracle import latest_by_vin, leaked, vins_in
from worker.replay import StreamEntry

FLEET = FIXTURES / "fleet-small.jsonl"


def arrived_long_ago(entries: list[StreamEntry]) -> list[ShardRecord]:
    """Records that arrived 10 minutes ago: past D (300 s), so an empty, caught-up poll (the stream clock
    moves to now - 1 s) settles every one of them."""
    return shard_records(entries, arrival_ms=int(time.time() * 1000) - 600_000)


def vehicle_state(env: AwsEnv) -> dict[str, dict[str, Any]]:
    items = env.clients.dynamodb.scan(TableName=env.settings.table_names["vehicle-state"])["Items"]
    return {item["pseudoVin"]["S"]: named_item(from_item(item)) for item in items}


def pseudonymizer(env: AwsEnv) -> Pseudonymizer:
    secret = env.clients.secretsmanager.get_secret_value(SecretId=env.settings.pseudonym_secret_id)
    return Pseudonymizer(secret["SecretString"].encode())


def test_fixture_stream_is_applied_and_checkpointed_at_the_settle_watermark(aws_env: AwsEnv) -> None:
    records = arrived_long_ago(fixture("fleet-small.jsonl"))
    order = {r.sequence_number: i for i, r in enumerate(records)}
    harness = ProcessorHarness({**aws_env.environ, "FLEET_CHECKPOINT_EVERY_SECONDS": "0"})
    harness.initialize()
    asked = [c for batch in batches(records, 100) for c in harness.process(batch)]
    # Each checkpoint stays before the records still settling (every vehicle's newest is): never at the end.
    made = [order[c.sequence_number] for c in asked if c.sequence_number is not None]
    assert made == sorted(made) and all(i < len(records) - 1 for i in made)
    # Caught up: the stream clock passes every arrival + D, everything settles and is checkpointed.
    (idle,) = harness.process([])
    assert idle.sequence_number == records[-1].sequence_number
    assert harness.shutdown_requested() == []  # nothing new: the watermark did not move
    harness.lease_lost()
    assert harness.close() == 0

    state = vehicle_state(aws_env)
    expected = latest_by_vin(FLEET)
    pseudo = pseudonymizer(aws_env)
    assert set(state) == {pseudo.pseudo_vin(vin) for vin in expected}
    for vin, latest in expected.items():
        item = state[pseudo.pseudo_vin(vin)]
        assert item["timestamp"] == latest["timestamp"]
        assert item["vehicleSpeed"] == {"value": latest["vehicleSpeed"], "at": latest["timestamp"]}
        assert item["location"] == {
            "value": {"lat": latest["lat"], "lng": latest["lng"]},
            "at": latest["timestamp"],
        }
        assert item["shiftState"]["value"] == latest["shiftState"]
    assert not leaked(vins_in(FLEET), orjson.dumps(list(state.values())))

    quarantined = [log for log in harness.logs() if log["event"] == "record_dead_lettered"]
    assert sorted(log["reason"] for log in quarantined) == ["invalid_vin", "malformed_json", "not_utf8"]
    assert not leaked(vins_in(FLEET), "\n".join(harness.stderr_lines))


def test_throttled_checkpoint_is_retried_at_the_same_position(aws_env: AwsEnv) -> None:
    records = arrived_long_ago(fixture("fleet-small.jsonl")[:50])
    harness = ProcessorHarness({**aws_env.environ, "FLEET_CHECKPOINT_EVERY_SECONDS": "0"})
    harness.initialize()
    harness.process(records)
    made = harness.process([], checkpoint_errors=["ThrottlingException"])
    assert [(c.sequence_number, c.error) for c in made] == [
        (records[-1].sequence_number, "ThrottlingException"),
        (records[-1].sequence_number, None),
    ]
    harness.lease_lost()
    assert harness.close() == 0


def test_shard_end_always_checkpoints_and_lease_loss_never_does(aws_env: AwsEnv) -> None:
    records = shard_records(fixture("fleet-small.jsonl")[:30])
    ended = ProcessorHarness(aws_env.environ)
    ended.initialize()
    ended.process(records)
    (shard_end,) = ended.shard_ended()
    assert shard_end.sequence_number is None  # "the end of the shard", as the KCL requires
    assert ended.close() == 0

    lost = ProcessorHarness(aws_env.environ, shard_id="shardId-000000000001")
    lost.initialize()
    lost.process(records)
    assert lost.lease_lost() == []
    assert lost.checkpoints == []
    assert lost.close() == 0


def test_shutdown_requested_flushes_then_checkpoints_what_was_consumed(aws_env: AwsEnv) -> None:
    records = arrived_long_ago(fixture("fleet-small.jsonl")[:30])
    harness = ProcessorHarness(aws_env.environ)  # checkpoints every 60 s: none during this test
    harness.initialize()
    assert harness.process(records) == []
    assert harness.process([]) == []  # everything settles; still no checkpoint (time policy)
    (made,) = harness.shutdown_requested()
    assert made.sequence_number == records[-1].sequence_number
    assert vehicle_state(aws_env), "flushed before the checkpoint"
    harness.lease_lost()
    assert harness.close() == 0


def test_a_failed_flush_ends_the_process_before_any_checkpoint(aws_env: AwsEnv) -> None:
    # The vehicle-state table does not exist: the flush before the first checkpoint fails.
    harness = ProcessorHarness(
        {
            **aws_env.environ,
            "FLEET_VEHICLE_STATE_TABLE": "no-such-table",
            "FLEET_CHECKPOINT_EVERY_SECONDS": "0",
        }
    )
    harness.initialize()
    with pytest.raises(ProcessExited) as exited:
        harness.process(arrived_long_ago(fixture("fleet-small.jsonl")[:20]))
    assert exited.value.code not in (0, None)
    assert harness.checkpoints == []
    failure = next(log for log in harness.logs() if log["event"] == "flush_failed")
    assert failure["level"] == "ERROR" and failure["reason"] == "ResourceNotFoundException"


def test_stdout_carries_nothing_but_the_protocol(aws_env: AwsEnv, tmp_path: Path) -> None:
    harness = ProcessorHarness(aws_env.environ)
    harness.initialize()
    harness.process(shard_records(fixture("fleet-small.jsonl")[:10]))
    harness.process([])
    harness.lease_lost()
    assert harness.close() == 0  # any stray stdout line would have failed one of the calls above
