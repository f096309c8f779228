"""The one reader of the KCL's lease table: status, the drain check, the demo and chaos all use it."""

from __future__ import annotations

from tests.conftest import AwsEnv, create_lease_table
from worker.leases import Lease, lease_checkpoints, lease_owners, read_leases
from worker.shards import drained


def test_no_lease_table_reads_as_no_leases(aws_env: AwsEnv) -> None:
    assert read_leases(aws_env.clients.dynamodb, aws_env.settings.application_name) == {}
    assert lease_checkpoints(aws_env.settings, aws_env.clients) == {}
    assert not drained(aws_env.settings, aws_env.clients, {"shardId-000000000000": "1"})


def test_a_lease_without_checkpoint_or_owner_is_none_to_status_and_empty_to_the_drain_check(
    aws_env: AwsEnv,
) -> None:
    create_lease_table(aws_env)
    dynamodb, table = aws_env.clients.dynamodb, aws_env.settings.application_name
    dynamodb.put_item(
        TableName=table,
        Item={
            "leaseKey": {"S": "shardId-000000000000"},
            "leaseOwner": {"S": "worker-a"},
            "checkpoint": {"S": "49650"},
            "ownerSwitchesSinceCheckpoint": {"N": "2"},
        },
    )
    dynamodb.put_item(TableName=table, Item={"leaseKey": {"S": "shardId-000000000001"}})

    assert read_leases(dynamodb, table) == {
        "shardId-000000000000": Lease("shardId-000000000000", "worker-a", "49650", 2),
        "shardId-000000000001": Lease("shardId-000000000001", None, None, None),
    }
    assert lease_checkpoints(aws_env.settings, aws_env.clients) == {
        "shardId-000000000000": "49650",
        "shardId-000000000001": "",
    }
    assert lease_owners(aws_env.settings, aws_env.clients) == {
        "shardId-000000000000": "worker-a",
        "shardId-000000000001": "",
    }
    assert drained(aws_env.settings, aws_env.clients, {"shardId-000000000000": "49650"})
    assert not drained(aws_env.settings, aws_env.clients, {"shardId-000000000001": "1"})


def test_every_page_of_the_lease_table_is_read(aws_env: AwsEnv) -> None:
    create_lease_table(aws_env)
    dynamodb, table = aws_env.clients.dynamodb, aws_env.settings.application_name
    padding = "x" * 300_000  # four items fill more than one 1 MB scan page
    for shard in range(5):
        dynamodb.put_item(
            TableName=table,
            Item={
                "leaseKey": {"S": f"shardId-{shard:012d}"},
                "checkpoint": {"S": "1"},
                "pad": {"S": padding},
            },
        )
    assert len(read_leases(dynamodb, table)) == 5
