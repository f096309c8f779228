"""The embedded local AWS: protocols, fault injection and Kinesis-like resharding."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from devtools.local_aws.faults import FaultPlan
from devtools.local_aws.limits import AwsRequest, item_size
from tests.conftest import AwsEnv

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


def refused(call: Any, *args: Any, **kwargs: Any) -> tuple[str, int]:
    """The error code and HTTP status botocore reports for a call the local AWS must refuse."""
    with pytest.raises(botocore.exceptions.ClientError) as error:
        call(*args, **kwargs)
    response = error.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"S": "leaf"}
    for _ in range(levels):
        value = {"M": {"a": value}}
    return value


def sized_item(size: int, key: str = "v") -> dict[str, Any]:
    item = {"pseudoVin": {"S": key}, "blob": {"S": ""}}
    item["blob"]["S"] = "x" * (size - item_size(item))
    return item


def test_dynamodb_limits_are_refused_as_dynamodb_refuses_them_and_nothing_is_stored(aws_env: AwsEnv) -> None:
    ddb, tables = aws_env.clients.dynamodb, aws_env.settings.table_names
    state, ranged = tables["vehicle-state"], tables["trips-index"]  # a string sort key (tripId)
    key = {"pseudoVin": {"S": "v"}}
    many_operators = "NOT NOT " + " AND ".join(f"#a = :v{i}" for i in range(150))
    calls: dict[str, tuple[Any, dict[str, Any]]] = {
        "expression_too_long": (
            ddb.update_item,
            {"TableName": state, "Key": key, "UpdateExpression": "SET #" + "n" * 4095 + " = :v"},
        ),
        "too_many_operators": (
            ddb.put_item,
            {
                "TableName": state,
                "Item": key,
                "ConditionExpression": many_operators,
                "ExpressionAttributeNames": {"#a": "a"},
                "ExpressionAttributeValues": {f":v{i}": {"N": str(i)} for i in range(150)},
            },
        ),
        "nesting_too_deep": (ddb.put_item, {"TableName": state, "Item": {**key, "deep": nested(33)}}),
        "item_too_large": (ddb.put_item, {"TableName": state, "Item": sized_item(400 * 1024 + 1)}),
        "batch_write_too_many": (
            ddb.batch_write_item,
            {
                "RequestItems": {
                    state: [{"PutRequest": {"Item": {"pseudoVin": {"S": str(i)}}}} for i in range(26)]
                }
            },
        ),
        "batch_get_too_many": (
            ddb.batch_get_item,
            {"RequestItems": {state: {"Keys": [{"pseudoVin": {"S": str(i)}} for i in range(101)]}}},
        ),
        "transaction_too_many": (
            ddb.transact_write_items,
            {
                "TransactItems": [
                    {"Put": {"TableName": state, "Item": {"pseudoVin": {"S": str(i)}}}} for i in range(101)
                ]
            },
        ),
        "partition_key_too_long": (
            ddb.put_item,
            {"TableName": state, "Item": {"pseudoVin": {"S": "k" * 2049}}},
        ),
        "sort_key_too_long": (
            ddb.put_item,
            {"TableName": ranged, "Item": {"pseudoVin": {"S": "v"}, "tripId": {"S": "t" * 1025}}},
        ),
    }
    for reason, (call, kwargs) in calls.items():
        assert refused(call, **kwargs) == ("ValidationException", 400), reason
    assert sorted(reason for _, _, reason in aws_env.aws.app.refused.elements()) == sorted(calls)
    assert ddb.scan(TableName=state)["Count"] == 0
    assert ddb.scan(TableName=ranged)["Count"] == 0


def test_dynamodb_requests_at_the_limits_pass(aws_env: AwsEnv) -> None:
    ddb, tables = aws_env.clients.dynamodb, aws_env.settings.table_names
    state, ranged = tables["vehicle-state"], tables["trips-index"]  # a string sort key (tripId)
    ddb.put_item(TableName=state, Item=sized_item(400 * 1024, key="big"))  # moto's own 405,000 is lifted
    ddb.put_item(TableName=state, Item={"pseudoVin": {"S": "deep"}, "deep": nested(32)})
    ddb.put_item(TableName=state, Item={"pseudoVin": {"S": "k" * 2048}})
    ddb.put_item(TableName=ranged, Item={"pseudoVin": {"S": "v"}, "tripId": {"S": "t" * 1024}})
    ddb.batch_write_item(
        RequestItems={state: [{"PutRequest": {"Item": {"pseudoVin": {"S": str(i)}}}} for i in range(25)]}
    )
    # 4,096 bytes of expression, with every attribute name under the 255-byte limit on a single name.
    names = [f"p{i:03}" for i in range(4096 // 5)]  # "p000," ... 5 bytes each with the comma
    projection = ",".join(names) + ",p" + "x" * (4096 - len(",".join(names)) - 2)
    assert len(projection) == 4096
    ddb.get_item(TableName=state, Key={"pseudoVin": {"S": "0"}}, ProjectionExpression=projection)
    stored = ddb.get_item(TableName=state, Key={"pseudoVin": {"S": "big"}})["Item"]
    assert item_size(stored) == 400 * 1024
    assert ddb.scan(TableName=state, Select="COUNT")["Count"] == 3 + 25
    assert not aws_env.aws.app.refused


def test_an_update_that_would_leave_an_item_over_400_kb_is_refused_and_changes_nothing(
    aws_env: AwsEnv,
) -> None:
    ddb, state = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    ddb.put_item(TableName=state, Item=sized_item(300 * 1024))
    key = {"pseudoVin": {"S": "v"}}

    def grow(by: int) -> dict[str, Any]:
        return {
            "TableName": state,
            "Key": key,
            "UpdateExpression": "SET #more = :more",
            "ExpressionAttributeNames": {"#more": "more"},
            "ExpressionAttributeValues": {":more": {"S": "y" * (by - len("more"))}},
        }

    assert refused(ddb.update_item, **grow(100 * 1024 + 1)) == ("ValidationException", 400)
    assert item_size(ddb.get_item(TableName=state, Key=key)["Item"]) == 300 * 1024  # rolled back
    assert aws_env.aws.app.refused == Counter({("dynamodb", "UpdateItem", "item_too_large"): 1})
    ddb.update_item(**grow(100 * 1024))
    assert item_size(ddb.get_item(TableName=state, Key=key)["Item"]) == 400 * 1024
    # An update creating the item is undone too.
    created = {**grow(400 * 1024), "Key": {"pseudoVin": {"S": "new"}}}
    assert refused(ddb.update_item, **created) == ("ValidationException", 400)
    assert "Item" not in ddb.get_item(TableName=state, Key={"pseudoVin": {"S": "new"}})


def test_kinesis_limits_are_refused_with_kinesis_error_codes(aws_env: AwsEnv) -> None:
    kinesis, stream = aws_env.clients.kinesis, aws_env.settings.stream_name
    mib = 1024 * 1024
    assert refused(
        kinesis.put_records, StreamName=stream, Records=[{"Data": b"x", "PartitionKey": "k"}] * 501
    ) == ("ValidationException", 400)
    assert refused(kinesis.put_record, StreamName=stream, Data=b"x", PartitionKey="k" * 257) == (
        "ValidationException",
        400,
    )
    assert refused(kinesis.put_record, StreamName=stream, Data=b"x" * (mib - 2), PartitionKey="abc") == (
        "InvalidArgumentException",
        400,
    )
    five = [{"Data": b"x" * (mib - 1), "PartitionKey": "k"}] * 5
    assert refused(
        kinesis.put_records, StreamName=stream, Records=[*five, {"Data": b"", "PartitionKey": "k"}]
    ) == (
        "InvalidArgumentException",
        400,
    )
    assert (
        kinesis.put_records(StreamName=stream, Records=[{"Data": b"x", "PartitionKey": "k" * 256}] * 500)[
            "FailedRecordCount"
        ]
        == 0
    )
    assert kinesis.put_record(StreamName=stream, Data=b"x" * (mib - 3), PartitionKey="abc")["ShardId"]


def test_an_s3_key_over_1024_bytes_is_refused_with_key_too_long(aws_env: AwsEnv) -> None:
    s3, bucket = aws_env.clients.s3, aws_env.settings.archive_bucket
    assert refused(s3.put_object, Bucket=bucket, Key="é" * 512 + "k", Body=b"x") == ("KeyTooLongError", 400)
    s3.put_object(Bucket=bucket, Key="é" * 512, Body=b"x")  # 1,024 bytes in UTF-8
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["é" * 512]


def test_a_put_with_if_none_match_on_an_existing_key_is_refused_with_412_and_stores_nothing(
    aws_env: AwsEnv,
) -> None:
    """Write-once objects (archives, segments, dead letters) rely on S3 refusing ``If-None-Match: *``."""
    s3, bucket = aws_env.clients.s3, aws_env.settings.archive_bucket
    aws_env.aws.app.reset_counts()
    s3.put_object(Bucket=bucket, Key="trips/a.json.gz", Body=b"first", IfNoneMatch="*")
    assert refused(s3.put_object, Bucket=bucket, Key="trips/a.json.gz", Body=b"second", IfNoneMatch="*") == (
        "PreconditionFailed",
        412,
    )
    assert s3.get_object(Bucket=bucket, Key="trips/a.json.gz")["Body"].read() == b"first"
    written = aws_env.aws.app.written[("s3", bucket)]
    assert (written.requests, written.items, written.bytes) == (2, 1, 5)  # the refusal is billed, not stored
    s3.put_object(Bucket=bucket, Key="trips/a.json.gz", Body=b"plain")  # unconditional: S3 overwrites
    assert s3.get_object(Bucket=bucket, Key="trips/a.json.gz")["Body"].read() == b"plain"


def test_every_operation_served_is_recorded_refused_ones_included(aws_env: AwsEnv) -> None:
    ddb, state = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    ddb.get_item(TableName=state, Key={"pseudoVin": {"S": "v"}})
    refused(ddb.put_item, TableName=state, Item={"pseudoVin": {"S": "k" * 2049}})
    seen = aws_env.aws.app.operations_seen()
    assert seen == Counter({("dynamodb", "GetItem"): 1, ("dynamodb", "PutItem"): 1})
    seen.clear()  # a copy: the app's record is untouched
    assert aws_env.aws.app.operations_seen()[("dynamodb", "GetItem")] == 1
