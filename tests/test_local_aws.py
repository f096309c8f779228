"""The embedded local AWS: protocols, fault injection and Kinesis-like resharding."""

from __future__ import annotations

import shutil
import subprocess

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.conftest import AwsEnv
from worker.local_aws import AwsRequest, FaultPlan

DATA = frozenset({"vehicle-state"})


def test_http1_and_h2c_prior_knowledge_on_one_port(aws_env: AwsEnv) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    for flag, version in (("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")):
        out = subprocess.run(
            [
                curl,
                "-s",
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                aws_env.aws.endpoint + "/moto-api/",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == version


def test_fault_spec_parsing_and_scopes() -> None:
    plan = FaultPlan.parse("rate=0.2,scope=worker,kinds=throttle+server_error,seed=7", DATA)
    assert (plan.rate, plan.kinds, plan.seed, plan.worker_tables) == (
        0.2,
        ("throttle", "server_error"),
        7,
        DATA,
    )
    data_call = AwsRequest("dynamodb", "UpdateItem", b'{"TableName": "vehicle-state"}')
    lease_call = AwsRequest("dynamodb", "UpdateItem", b'{"TableName": "fleet-ingest"}')
    batch_call = AwsRequest("dynamodb", "BatchWriteItem", b'{"RequestItems": {"vehicle-state": []}}')
    kinesis = AwsRequest("kinesis", "GetRecords", b"{}")
    s3 = AwsRequest("s3", "PutObject", b"")
    worker, kcl = plan, FaultPlan.parse("rate=1,scope=kcl", DATA)
    assert [worker.applies_to(r) for r in (data_call, lease_call, batch_call, kinesis, s3)] == [
        True,
        False,
        True,
        False,
        True,
    ]
    assert [kcl.applies_to(r) for r in (data_call, lease_call, batch_call, kinesis, s3)] == [
        False,
        True,
        False,
        True,
        False,
    ]
    puts = FaultPlan.parse("rate=1,ops=PutItem+PutObject", DATA)
    put_item = AwsRequest("dynamodb", "PutItem", b'{"TableName": "vehicle-state"}')
    assert [puts.applies_to(r) for r in (data_call, put_item, s3, kinesis)] == [False, True, True, False]
    for bad in ("rate=2", "scope=everyone,rate=0.1", "rate=0.1,kinds=meteor", "rate=1,ops=Putitem"):
        with pytest.raises(ValueError):
            FaultPlan.parse(bad, DATA)


def test_injected_faults_look_like_aws_errors(aws_env: AwsEnv) -> None:
    no_retry = Config(retries={"mode": "standard", "total_max_attempts": 1}, s3={"addressing_style": "path"})
    kwargs = {"endpoint_url": aws_env.aws.endpoint, "region_name": "us-east-1", "config": no_retry}
    ddb = boto3.client("dynamodb", **kwargs)  # type: ignore[call-overload]
    s3 = boto3.client("s3", **kwargs)  # type: ignore[call-overload]
    table = aws_env.settings.table_names["vehicle-state"]
    aws_env.aws.app.inject(FaultPlan(rate=1.0, kinds=("throttle",), worker_tables=frozenset({table})))
    with pytest.raises(botocore.exceptions.ClientError) as throttled:
        ddb.get_item(TableName=table, Key={"pseudoVin": {"S": "x"}})
    assert throttled.value.response["Error"]["Code"] in (
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
    )
    with pytest.raises(botocore.exceptions.ClientError) as slow:
        s3.put_object(Bucket=aws_env.settings.archive_bucket, Key="k", Body=b"x")
    assert slow.value.response["Error"]["Code"] == "SlowDown"

    aws_env.aws.app.inject(FaultPlan(rate=1.0, kinds=("unprocessed",), worker_tables=frozenset({table})))
    items = [{"PutRequest": {"Item": {"pseudoVin": {"S": str(i)}}}} for i in range(5)]
    response = ddb.batch_write_item(RequestItems={table: items})
    assert len(response["UnprocessedItems"][table]) == 2
    aws_env.aws.app.inject(None)
    assert ddb.scan(TableName=table)["Count"] == 3
    assert aws_env.aws.app.faults[("dynamodb", "BatchWriteItem", "unprocessed")] == 1


def test_which_requests_fail_depends_on_the_seed_and_the_request_not_on_arrival_order(
    aws_env: AwsEnv,
) -> None:
    no_retry = Config(retries={"mode": "standard", "total_max_attempts": 1})
    ddb = boto3.client(
        "dynamodb", endpoint_url=aws_env.aws.endpoint, region_name="us-east-1", config=no_retry
    )
    table = aws_env.settings.table_names["vehicle-state"]

    def failures(order: list[int], seed: int) -> set[int]:
        aws_env.aws.app.inject(
            FaultPlan(rate=0.5, kinds=("throttle",), seed=seed, worker_tables=frozenset({table}))
        )
        failed = set()
        for i in order:
            try:
                ddb.get_item(TableName=table, Key={"pseudoVin": {"S": f"vehicle-{i}"}})
            except botocore.exceptions.ClientError:
                failed.add(i)
        aws_env.aws.app.inject(None)
        return failed

    forward = failures(list(range(40)), seed=7)
    assert 5 < len(forward) < 35
    assert failures(list(reversed(range(40))), seed=7) == forward
    assert failures(list(range(40)), seed=8) != forward


def test_a_split_shard_closes_routes_to_its_children_and_reports_them(aws_env: AwsEnv) -> None:
    kinesis, stream = aws_env.clients.kinesis, aws_env.settings.stream_name
    (parent, _) = kinesis.list_shards(StreamName=stream)["Shards"]
    keys = [f"vehicle-{i}" for i in range(200)]
    before = {k: kinesis.put_record(StreamName=stream, Data=b"a", PartitionKey=k)["ShardId"] for k in keys}
    start, end = int(parent["HashKeyRange"]["StartingHashKey"]), int(parent["HashKeyRange"]["EndingHashKey"])
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str((start + end) // 2)
    )
    shards = {s["ShardId"]: s for s in kinesis.list_shards(StreamName=stream)["Shards"]}
    children = {sid for sid, s in shards.items() if s.get("ParentShardId") == parent["ShardId"]}
    assert len(children) == 2
    after = {k: kinesis.put_record(StreamName=stream, Data=b"b", PartitionKey=k)["ShardId"] for k in keys}
    assert {after[k] for k in keys if before[k] == parent["ShardId"]} == children

    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=parent["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    page = kinesis.get_records(ShardIterator=iterator)
    assert len(page["Records"]) == sum(
        1 for k in keys if before[k] == parent["ShardId"]
    )  # kept in the parent
    assert "NextShardIterator" not in page
    assert {c["ShardId"] for c in page["ChildShards"]} == children
