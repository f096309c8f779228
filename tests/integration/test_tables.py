from __future__ import annotations

from schemas.tables import ALL_TABLES, LIVE_BREADCRUMBS, TRIP_STATE, TRIPS_INDEX, VEHICLE_STATE, VIN_MAPPING
from tests.conftest import AwsEnv
from worker.bootstrap import bootstrap


def test_keys_follow_the_platform_design() -> None:
    assert VEHICLE_STATE.key_names == ("pseudoVin",)
    assert TRIP_STATE.key_names == ("pseudoVin",)
    assert VIN_MAPPING.key_names == ("pseudoVin",)
    assert TRIPS_INDEX.key_names == ("pseudoVin", "tripId")
    assert TRIPS_INDEX.ttl_attribute == "expiresAt"
    (index,) = TRIPS_INDEX.indexes
    assert (index.name, index.partition_key.name, index.sort_key and index.sort_key.name) == (
        "tripDate-index",
        "tripDate",
        "startTime",
    )
    assert LIVE_BREADCRUMBS.ttl_attribute == "expiresAt"


def test_create_request_declares_exactly_the_key_attributes() -> None:
    request = TRIPS_INDEX.create_table_request("t")
    assert {d["AttributeName"] for d in request["AttributeDefinitions"]} == {
        "pseudoVin",
        "tripId",
        "tripDate",
        "startTime",
    }
    assert request["GlobalSecondaryIndexes"][0]["IndexName"] == "tripDate-index"
    assert "GlobalSecondaryIndexes" not in VEHICLE_STATE.create_table_request("v")


def test_bootstrap_creates_every_table_as_declared_and_is_idempotent(aws_env: AwsEnv) -> None:
    dynamodb = aws_env.clients.dynamodb
    for spec in ALL_TABLES:
        table = dynamodb.describe_table(TableName=aws_env.settings.table_name(spec))["Table"]
        assert [k["AttributeName"] for k in table["KeySchema"]] == list(spec.key_names)
        ttl = dynamodb.describe_time_to_live(TableName=table["TableName"])["TimeToLiveDescription"]
        if spec.ttl_attribute:
            assert ttl["AttributeName"] == spec.ttl_attribute
            assert ttl["TimeToLiveStatus"] == "ENABLED"
    again = bootstrap(aws_env.settings, aws_env.clients, shards=2)
    assert again.created == []
    assert len(again.existing) == 10  # the stream, 5 tables, bucket, key, secret, key fingerprint
    shards = aws_env.clients.kinesis.list_shards(StreamName=aws_env.settings.stream_name)["Shards"]
    assert len(shards) == 2
