"""Request accounting: what one batch costs in AWS requests and write units, for a fixed fixture.

These pin the batching and coalescing behaviour (one state write per vehicle per batch, breadcrumbs in
25s, the VIN vault written once per vehicle), not speed: see ``make bench`` for that.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from processors.signals import format_time
from tests.conftest import AwsEnv
from tests.harness import ProcessorHarness, ShardRecord, shard_records
from worker.local_aws import AwsRequest, attribute_size, item_size, written_items
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


@pytest.fixture
def processor(aws_env: AwsEnv) -> Any:
    env = aws_env.with_settings(FLEET_TRIP_GAP_SECONDS=str(GAP_SECONDS), FLEET_PSEUDONYM_KEY="accounting")
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
    return Counter(aws_env.aws.app.requests)


def test_one_batch_costs_one_state_write_per_vehicle_and_a_batch_write_per_25_breadcrumbs(
    aws_env: AwsEnv, processor: ProcessorHarness
) -> None:
    records = shard_records(fleet(range(30)))  # 4 vehicles x 30 s = 120 records, one batch
    calls = deliver(aws_env, processor, records)
    breadcrumbs = 2 * 30 + 20  # two vehicles moving throughout; the trip: 10 s driving, stop, 9 s of gap
    assert calls == Counter(
        {
            ("kms", "Encrypt"): 4,  # the VIN vault: once per vehicle
            ("dynamodb", "PutItem"): 4 + 2 + 2 + 1,  # vin-mapping; trip-state x2; the trip's 2 steps; index
            ("dynamodb", "BatchGetItem"): 1,  # trip-state of the 4 vehicles first seen
            ("dynamodb", "UpdateItem"): 4,  # vehicle-state: one conditional update per vehicle
            ("dynamodb", "BatchWriteItem"): math.ceil(breadcrumbs / 25),
            ("dynamodb", "Query"): 1,  # the completed trip's breadcrumbs, for its archive
            ("s3", "PutObject"): 1,  # the archive
        }
    )
    written = aws_env.aws.app.written
    tables = aws_env.settings.table_names
    assert written[("dynamodb", tables["live-breadcrumbs"])].items == breadcrumbs
    assert written[("dynamodb", tables["live-breadcrumbs"])].units == breadcrumbs  # each under 1 KB
    assert written[("dynamodb", tables["vehicle-state"])].items == 4
    assert written[("dynamodb", tables["vin-mapping"])].items == 4
    assert written[("dynamodb", tables["trip-state"])].items == 4
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
            ("dynamodb", "UpdateItem"): 4,
            ("dynamodb", "PutItem"): 2,  # trip-state of the two vehicles still driving; the others idle
            ("dynamodb", "BatchWriteItem"): math.ceil(2 * 30 / 25),
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


def test_write_units_are_billed_per_started_kilobyte_of_each_item() -> None:
    big = orjson.dumps({"TableName": "t", "Item": {"pseudoVin": {"S": "x" * 2500}}})
    assert written_items(AwsRequest("dynamodb", "PutItem", big), {}) == [("t", 9 + 2500)]
    update = orjson.dumps(
        {
            "TableName": "t",
            "Key": {"pseudoVin": {"S": "v"}},
            "UpdateExpression": "SET #ts = :ts, #s0 = :v0",
            "ConditionExpression": "#ts < :ts AND #s0.#at < :t0",
            "ExpressionAttributeNames": {"#ts": "timestamp", "#s0": "vehicleSpeed", "#at": "at"},
            "ExpressionAttributeValues": {":ts": {"S": "2025"}, ":v0": {"N": "73.5"}, ":t0": {"S": "2025"}},
        }
    )
    # key (9 + 1) + timestamp (9 + 4) + vehicleSpeed (12 + 3); the condition's values are not written
    assert written_items(AwsRequest("dynamodb", "UpdateItem", update), {}) == [("t", 10 + 13 + 15)]
    assert written_items(AwsRequest("dynamodb", "GetItem", b"{}"), {}) == []
