"""The record processor driven through the MultiLangDaemon protocol, line by line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.pseudonymize import Pseudonymizer
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from tests.conftest import FIXTURES, AwsEnv
from tests.support.harness import ProcessExited, ProcessorHarness, batches, fixture, shard_records
from tests.support.oracle import latest_by_vin, leaked, vins_in

FLEET = FIXTURES / "fleet-small.jsonl"


def vehicle_state(env: AwsEnv) -> dict[str, dict[str, Any]]:
    items = env.clients.dynamodb.scan(TableName=env.settings.table_names["vehicle-state"])["Items"]
    return {item["pseudoVin"]["S"]: named_item(from_item(item)) for item in items}


def pseudonymizer(env: AwsEnv) -> Pseudonymizer:
    secret = env.clients.secretsmanager.get_secret_value(SecretId=env.settings.pseudonym_secret_id)
    return Pseudonymizer(secret["SecretString"].encode())


def test_fixture_stream_is_applied_and_checkpointed_by_policy(aws_env: AwsEnv) -> None:
    records = shard_records(fixture("fleet-small.jsonl"))
    harness = ProcessorHarness({**aws_env.environ, "FLEET_CHECKPOINT_EVERY_RECORDS": "400"})
    harness.initialize()
    asked = [harness.process(batch) for batch in batches(records, 100)]
    # 400 records pending -> checkpoint at the end of the 4th batch, the 8th, ...
    assert [i for i, made in enumerate(asked) if made] == [3, 7]
    assert asked[3][0].sequence_number == records[399].sequence_number
    # The shard goes idle: what was applied since is checkpointed at once.
    (idle,) = harness.process([])
    assert idle.sequence_number == records[-1].sequence_number
    assert harness.shutdown_requested() == []  # nothing left to checkpoint
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
    records = shard_records(fixture("fleet-small.jsonl")[:50])
    harness = ProcessorHarness(aws_env.environ)
    harness.initialize()
    assert harness.process(records) == []
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


def test_shutdown_requested_checkpoints_what_was_applied(aws_env: AwsEnv) -> None:
    records = shard_records(fixture("fleet-small.jsonl")[:30])
    harness = ProcessorHarness(aws_env.environ)
    harness.initialize()
    assert harness.process(records) == []
    (made,) = harness.shutdown_requested()
    assert made.sequence_number == records[-1].sequence_number
    harness.lease_lost()
    assert harness.close() == 0


def test_a_failed_batch_ends_the_process_before_any_checkpoint(aws_env: AwsEnv) -> None:
    # The vehicle-state table does not exist: every write of the batch fails.
    harness = ProcessorHarness({**aws_env.environ, "FLEET_VEHICLE_STATE_TABLE": "no-such-table"})
    harness.initialize()
    with pytest.raises(ProcessExited) as exited:
        harness.process(shard_records(fixture("fleet-small.jsonl")[:20]))
    assert exited.value.code not in (0, None)
    assert harness.checkpoints == []
    failure = next(log for log in harness.logs() if log["event"] == "batch_failed")
    assert failure["level"] == "ERROR" and failure["reason"] == "ResourceNotFoundException"


def test_stdout_carries_nothing_but_the_protocol(aws_env: AwsEnv, tmp_path: Path) -> None:
    harness = ProcessorHarness(aws_env.environ)
    harness.initialize()
    harness.process(shard_records(fixture("fleet-small.jsonl")[:10]))
    harness.process([])
    harness.lease_lost()
    assert harness.close() == 0  # any stray stdout line would have failed one of the calls above
