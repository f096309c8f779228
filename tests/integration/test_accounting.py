"""Request accounting: what one batch costs in AWS requests and write units, for a fixed fixture.

These pin the batching and coalescing behaviour (one state write per vehicle per flush, one trail write
per vehicle and 15 s bucket, the VIN vault written once per vehicle, trip-state on transitions and at
checkpoints), not speed: see ``make bench`` for that. A delivery is a batch, then the empty poll after it
(the records arrived an hour ago: everything settles), each followed by a checkpoint
(``FLEET_CHECKPOINT_EVERY_SECONDS=0``).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest

from devtools.local_aws.billing import Written, write_units, written_items, written_keys
from devtools.local_aws.limits import AwsRequest, KeySchema, attribute_size, item_size
from processors.signals import format_time
from processors.trail import bucket_of
from tests.conftest import AwsEnv
from tests.support.harness import ProcessorHarness, ShardRecord, shard_records
from worker.replay import StreamEntry

GAP_SECONDS = 10
VINS = {"moving-1": "5YJ3E1EA7KF317001", "moving-2": "5YJ3E1EA7KF317002", "trip": "5YJ3E1EA7KF317003"}
PARKED = "5YJ3E1EA7KF317004"
T0 = (int(time.time()) - 600) * 1000


def speed(vehicle: str, second: int) -> float:
    if vehicle.startswith("moving"):
        return 30.0
    if vehicle == "trip":  # drives 10 s, stops: ENDING at 10 s, completed by the record at 20 s
        return 30.0 if second < 10 else 0.0
    return 0.0


def second_of_fleet(second: int) -> list[StreamEntry]:
    """One record per vehicle, all signals, 1 Hz: the 4 vehicles interleaved as a shard sees them."""
    entries = []
    for i, (name, vin) in enumerate([*VINS.items(), ("parked", PARKED)]):
        moving = speed(name, second) > 0
        record = {
            "vin": vin,
            "timestamp": format_time(T0 + second * 1000 + i * 10),
            "signals": {
                "vehicleSpeed": speed(name, second),
                "lat": 39.7 + i / 100 + (second * 0.0001 if moving else 0),
                "lng": -104.9,
                "heading": 90,
                "odometer": 1000.0 + second / 100,
                "batteryLevel": 80,
                "shiftState": "D" if moving else "P",
            },
        }
        entries.append(StreamEntry(orjson.dumps(record), vin))
    return entries


def fleet(seconds: range) -> list[StreamEntry]:
    return [entry for second in seconds for entry in second_of_fleet(second)]


def trail_buckets(seconds: range) -> int:
    """(vehicle, 15 s bucket) pairs the records of ``seconds`` fall in: every record is a crumb, parked or
    moving, in a trip or not."""
    return len({(i, bucket_of(T0 + second * 1000 + i * 10)) for second in seconds for i in range(4)})


@pytest.fixture
def processor(aws_env: AwsEnv) -> Any:
    env = aws_env.with_settings(
        FLEET_TRIP_GAP_SECONDS=str(GAP_SECONDS),
        FLEET_PSEUDONYM_KEY="accounting",
        FLEET_CHECKPOINT_EVERY_SECONDS="0",
    )
    harness = ProcessorHarness(env.environ)
    harness.initialize()
    yield harness
    harness.lease_lost()
    assert harness.close() == 0


def deliver(
    aws_env: AwsEnv, harness: ProcessorHarness, records: list[ShardRecord]
) -> Counter[tuple[str, str]]:
    aws_env.aws.app.reset_counts()
    harness.process(records)
    harness.process([])
    return Counter(aws_env.aws.app.requests)


def test_one_batch_costs_one_state_write_per_vehicle_and_one_trail_write_per_bucket(
    aws_env: AwsEnv, processor: ProcessorHarness
) -> None:
    records = shard_records(fleet(range(30)))  # 4 vehicles x 30 s = 120 records, one batch
    calls = deliver(aws_env, processor, records)
    buckets = trail_buckets(range(30))
    assert 4 * 2 <= buckets <= 4 * 3
    assert calls == Counter(
        {
            ("kms", "Encrypt"): 4,  # the VIN vault: once per vehicle not in it yet
            # the trips-index item; the two vehicles still driving, at the checkpoint flush after the empty
            # poll (their exact machine consumed the batch since their live trip created the item)
            ("dynamodb", "PutItem"): 1 + 2,
            # trip-state items are created checking the vehicle's mark: the two vehicles still driving (as
            # the live view starts them, in the batch's flush), and the completed trip's outbox (its live
            # trip started and ended within the batch: no item before the exact machine completed it)
            ("dynamodb", "TransactWriteItems"): 2 + 1,
            # trip-state and marks of the 4 vehicles first seen; the vault's lookup of them
            ("dynamodb", "BatchGetItem"): 2,
            # vehicle-state: one per vehicle; the vault; the completed trip's mark; the trail: per bucket;
            # the shard's progress report, at each checkpoint (one after the batch, one after the poll)
            ("dynamodb", "UpdateItem"): 4 + 4 + 1 + buckets + 2,
            ("dynamodb", "DeleteItem"): 1,  # trip-state holds open trips only: the archived one goes
            ("dynamodb", "Query"): 1,  # the completed trip's trail, for its archive
            ("s3", "PutObject"): 1,  # the archive
        }
    )
    written = aws_env.aws.app.written
    tables = aws_env.settings.table_names
    assert written[("dynamodb", tables["live-breadcrumbs"])].items == buckets
    assert written[("dynamodb", tables["live-breadcrumbs"])].units == buckets  # each under 1 KB
    assert written[("dynamodb", tables["vehicle-state"])].items == 4
    # the vault x4, the mark, the 3 creations' condition checks (2 units each: a transaction), the 2
    # progress reports (under 1 KB: a unit each)
    assert written[("dynamodb", tables["vin-mapping"])].items == 4 + 1 + 3 + 2
    assert written[("dynamodb", tables["vin-mapping"])].units == 4 + 1 + 3 * 2 + 2
    # 3 creations (2 units each); 2 checkpoint writes; the archived trip's item deleted (its mark holds
    # what remains)
    assert written[("dynamodb", tables["trip-state"])].items == 3 + 2 + 1
    assert written[("dynamodb", tables["trip-state"])].units == 3 * 2 + 2 + 1
    archive = written[("s3", aws_env.settings.archive_bucket)]
    assert (archive.requests, archive.items, archive.units) == (1, 1, 1)
    (key,) = [
        o["Key"]
        for o in aws_env.clients.s3.list_objects_v2(Bucket=aws_env.settings.archive_bucket)["Contents"]
    ]
    head = aws_env.clients.s3.head_object(Bucket=aws_env.settings.archive_bucket, Key=key)
    assert archive.bytes == head["ContentLength"]


def test_a_later_batch_of_known_vehicles_reads_nothing_and_skips_the_vault(
    aws_env: AwsEnv, processor: ProcessorHarness
) -> None:
    deliver(aws_env, processor, shard_records(fleet(range(30))))
    calls = deliver(aws_env, processor, shard_records(fleet(range(30, 60)), first=1000))
    assert calls == Counter(
        {
            ("dynamodb", "UpdateItem"): 4 + trail_buckets(range(30, 60)) + 2,  # + 2 progress reports
            ("dynamodb", "PutItem"): 2,  # trip-state of the two vehicles still driving; the others idle
        }
    )


def test_item_sizes_follow_dynamodbs_rules() -> None:
    item = {
        "pseudoVin": {"S": "abc"},  # 9 + 3
        "n": {"N": "-123.450"},  # 1 + (5 significant digits + 1) // 2 + 1
        "m": {"M": {"a": {"BOOL": True}}},  # 1 + 3 + (1 + 1 + 1)
        "l": {"L": [{"S": "xy"}]},  # 1 + 3 + (2 + 1)
    }
    assert attribute_size({"N": "0.0010"}) == 2
    assert item_size(item) == 12 + 5 + 7 + 7


def test_write_units_are_the_larger_whole_item_before_and_after_per_started_kilobyte() -> None:
    assert write_units(0, 9 + 2500) == 3  # a new 2.5 KB item
    assert write_units(3000, 500) == 3  # shrinking is billed at the size it had
    assert write_units(0, 0) == 1  # deleting nothing, or a failed condition on no item: one unit
    assert write_units(1024, 1024) == 1
    update = AwsRequest(
        "dynamodb",
        "UpdateItem",
        orjson.dumps({"TableName": "t", "Key": {"pseudoVin": {"S": "v"}}, "UpdateExpression": "SET a = :a"}),
    )
    batch = AwsRequest(
        "dynamodb",
        "BatchWriteItem",
        orjson.dumps(
            {
                "RequestItems": {
                    "c": [
                        {
                            "PutRequest": {
                                "Item": {"pseudoVin": {"S": "v"}, "ts": {"S": "1"}, "x": {"N": "1"}}
                            }
                        },
                        {"DeleteRequest": {"Key": {"pseudoVin": {"S": "v"}, "ts": {"S": "0"}}}},
                    ]
                }
            }
        ),
    )
    schemas: dict[str, KeySchema] = {"t": ("pseudoVin", None), "c": ("pseudoVin", "ts")}
    assert written_keys(update, schemas.get) == [("t", {"pseudoVin": {"S": "v"}})]
    assert written_keys(batch, schemas.get) == [
        ("c", {"pseudoVin": {"S": "v"}, "ts": {"S": "1"}}),  # the key of the item put, not the item
        ("c", {"pseudoVin": {"S": "v"}, "ts": {"S": "0"}}),
    ]
    assert (
        written_keys(update, lambda _table: None) == []
    )  # no such table: moto refuses it, AWS bills nothing
    assert written_keys(AwsRequest("dynamodb", "GetItem", b"{}"), schemas.get) == []
    assert written_items(AwsRequest("dynamodb", "PutItem", b"{}"), {}) == []  # billed from the backend


def sized_item(size: int, key: str = "v") -> dict[str, Any]:
    """An item of exactly ``size`` bytes by DynamoDB's rules."""
    item = {"pseudoVin": {"S": key}, "blob": {"S": ""}}
    item["blob"]["S"] = "x" * (size - item_size(item))
    return item


def billed(aws_env: AwsEnv, table: str) -> Written:
    return aws_env.aws.app.written.get(("dynamodb", table), Written())


def test_a_small_update_of_a_3_kb_item_bills_the_whole_item(aws_env: AwsEnv) -> None:
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    ddb.put_item(TableName=table, Item=sized_item(3000))
    aws_env.aws.app.reset_counts()
    ddb.update_item(
        TableName=table,
        Key={"pseudoVin": {"S": "v"}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "speed"},
        ExpressionAttributeValues={":s": {"N": "73"}},
    )
    assert billed(aws_env, table) == Written(requests=1, items=1, bytes=3000 + 5 + 2, units=3)


def test_an_update_that_shrinks_a_3_kb_item_to_half_a_kb_bills_the_larger_size(aws_env: AwsEnv) -> None:
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    ddb.put_item(TableName=table, Item=sized_item(3000))
    aws_env.aws.app.reset_counts()
    ddb.update_item(
        TableName=table,
        Key={"pseudoVin": {"S": "v"}},
        UpdateExpression="SET #b = :b",
        ExpressionAttributeNames={"#b": "blob"},
        ExpressionAttributeValues={
            ":b": {"S": "x" * (512 - item_size({"pseudoVin": {"S": "v"}, "blob": {"S": ""}}))}
        },
    )
    assert item_size(ddb.get_item(TableName=table, Key={"pseudoVin": {"S": "v"}})["Item"]) == 512
    assert billed(aws_env, table) == Written(requests=1, items=1, bytes=3000, units=3)


def test_a_failed_conditional_put_on_a_2_kb_item_bills_the_stored_item(aws_env: AwsEnv) -> None:
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    ddb.put_item(TableName=table, Item=sized_item(2000))
    aws_env.aws.app.reset_counts()
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(
            TableName=table,
            Item={"pseudoVin": {"S": "v"}},
            ConditionExpression="attribute_not_exists(pseudoVin)",
        )
    assert billed(aws_env, table) == Written(requests=1, items=1, bytes=2000, units=2)


def test_a_batch_write_of_3_small_items_bills_3_units(aws_env: AwsEnv) -> None:
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    ddb.batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": {"pseudoVin": {"S": str(i)}}}} for i in range(3)]}
    )
    assert billed(aws_env, table) == Written(requests=1, items=3, bytes=3 * (9 + 1), units=3)


def test_a_delete_bills_the_deleted_items_size_and_at_least_one_unit(aws_env: AwsEnv) -> None:
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    ddb.put_item(TableName=table, Item=sized_item(3000))
    aws_env.aws.app.reset_counts()
    ddb.delete_item(TableName=table, Key={"pseudoVin": {"S": "v"}})
    ddb.delete_item(TableName=table, Key={"pseudoVin": {"S": "v"}})  # nothing left to delete
    assert billed(aws_env, table) == Written(requests=2, items=2, bytes=3000, units=3 + 1)


def test_requests_dynamodb_refuses_bill_nothing(aws_env: AwsEnv) -> None:
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    with pytest.raises(ddb.exceptions.ClientError):
        ddb.put_item(TableName=table, Item={"pseudoVin": {"S": "k" * 2049}})
    with pytest.raises(ddb.exceptions.ResourceNotFoundException):
        ddb.put_item(TableName="no-such-table", Item={"pseudoVin": {"S": "v"}})
    assert aws_env.aws.app.written == {}


def test_a_transaction_bills_two_units_per_started_kb_of_each_item_condition_checks_included(
    aws_env: AwsEnv,
) -> None:
    ddb, tables = aws_env.clients.dynamodb, aws_env.settings.table_names
    marks, trips = tables["vin-mapping"], tables["trip-state"]
    ddb.put_item(TableName=marks, Item=sized_item(1500))
    aws_env.aws.app.reset_counts()

    def create(condition: str) -> None:
        ddb.transact_write_items(
            TransactItems=[
                {"ConditionCheck": {"TableName": marks, "Key": {"pseudoVin": {"S": "v"}},
                                    "ConditionExpression": condition}},
                {"Put": {"TableName": trips, "Item": {"pseudoVin": {"S": "v"}},
                         "ConditionExpression": "attribute_not_exists(pseudoVin)"}},
            ]
        )  # fmt: skip

    create("attribute_exists(pseudoVin)")
    assert billed(aws_env, marks) == Written(requests=1, items=1, bytes=1500, units=2 * 2)
    assert billed(aws_env, trips) == Written(requests=1, items=1, bytes=9 + 1, units=2 * 1)
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        create("attribute_not_exists(pseudoVin)")  # cancelled: still billed, as AWS does
    assert billed(aws_env, marks).units == 2 * 2 * 2 and billed(aws_env, trips).units == 2 * 2
