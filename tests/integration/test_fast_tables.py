"""The bench's fast tables (``devtools.local_aws.fast_tables``) answer, refuse and bill as the strict local
AWS does: one script of requests, the worker's own ones among them, sent to both; answers, refusals and
write units compared."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from devtools.local_aws import LocalAws
from devtools.local_aws.fast_tables import FastLocalAws, Unsupported, parse_condition
from processors.vehicle_state import Observation, StateUpdate
from tests.conftest import AwsEnv, fresh_env
from worker.stores.dynamo_trail import update_request as trail_update
from worker.stores.dynamo_vehicle_state import DynamoVehicleState
from worker.stores.dynamo_vehicle_state import update_request as state_update

STATE, TRAIL, TRIPS, VAULT, INDEX = (
    "vehicle-state",
    "live-breadcrumbs",
    "trip-state",
    "vin-mapping",
    "trips-index",
)
FAST = (STATE, TRAIL, TRIPS, VAULT, INDEX)


@pytest.fixture
def both(local_aws: LocalAws) -> Iterator[tuple[AwsEnv, Any, FastLocalAws]]:
    """The session's strict local AWS, bootstrapped, and a fast one over the same moto backends whose
    ``vehicle-state`` and trail data planes are its own."""
    env = fresh_env(local_aws)
    fast_tables = [env.settings.table_names[name] for name in FAST]
    with FastLocalAws(fast_tables) as fast:
        client = boto3.client(
            "dynamodb",
            endpoint_url=fast.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        yield env, client, fast


def _answer(client: Any, operation: str, request: dict[str, Any]) -> dict[str, Any]:
    """What botocore makes of the answer: the parsed response or the error's code and item."""
    try:
        response = getattr(client, operation)(**copy.deepcopy(request))
    except botocore.exceptions.ClientError as error:
        return {
            "error": error.response["Error"]["Code"],
            "item": error.response.get("Item"),
            "reasons": [r.get("Code") for r in error.response.get("CancellationReasons", [])],
        }
    response.pop("ResponseMetadata", None)
    # moto answers a ConsumedCapacity nobody asked for (AWS sends none unless asked), and not AWS's
    # figure: the bill is compared on the tallies below.
    response.pop("ConsumedCapacity", None)
    if response.get("ItemCollectionMetrics") == {}:  # moto's empty one; AWS sends it only when asked
        del response["ItemCollectionMetrics"]
    return dict(response)


def _script(env: AwsEnv) -> list[tuple[str, dict[str, Any]]]:
    state, trail = env.settings.table_names[STATE], env.settings.table_names[TRAIL]
    first = StateUpdate(
        "pv-1", 2_000, {"speed": Observation(2_000, 31.5), "shiftState": Observation(2_000, "D")}
    )
    older = StateUpdate("pv-1", 1_000, {"speed": Observation(1_000, 12.0)})
    newer = StateUpdate("pv-1", 3_000, {"speed": Observation(3_000, 40.0), "lat": Observation(3_000, 3.5)})
    big = "x" * 300_000
    return [
        ("update_item", state_update(state, first, None)),
        ("update_item", state_update(state, first, None)),  # a replay: the condition fails, ALL_OLD
        ("update_item", state_update(state, older, None)),  # older: refused by the condition
        ("update_item", state_update(state, newer, None)),
        ("update_item", state_update(state, newer, {})),  # "stored nothing" guards on a stored item: fail
        ("update_item", state_update(state, StateUpdate("pv-2", 5, {"speed": Observation(5, 1.0)}), None)),
        (  # > 400 KB once applied: ValidationException, nothing stored, nothing billed
            "update_item",
            {
                "TableName": state,
                "Key": {"pseudoVin": {"S": "pv-2"}},
                "UpdateExpression": "SET #a = :a, #b = :b",
                "ExpressionAttributeNames": {"#a": "a", "#b": "b"},
                "ExpressionAttributeValues": {":a": {"S": big}, ":b": {"S": big}},
            },
        ),
        (  # an expression over 4 KB: refused before it runs
            "update_item",
            {
                "TableName": state,
                "Key": {"pseudoVin": {"S": "pv-3"}},
                "UpdateExpression": "SET " + ", ".join(f"#n{i} = :v" for i in range(700)),
                "ExpressionAttributeNames": {f"#n{i}": f"n{i}" for i in range(700)},
                "ExpressionAttributeValues": {":v": {"N": "1"}},
            },
        ),
        ("update_item", trail_update_request(trail, "pv-1", 7, {"0": "a", "1": "b"}, {}, 99)),
        ("update_item", trail_update_request(trail, "pv-1", 7, {"0": "c"}, {}, 98)),  # slot 0 held: fails
        ("update_item", trail_update_request(trail, "pv-1", 7, {"0": "c"}, {"0": "a"}, 120)),  # a swap
        ("update_item", trail_update_request(trail, "pv-1", 8, {"2": "d"}, {}, 120)),
        *_trip_and_vault_requests(env),
        ("get_item", {"TableName": state, "Key": {"pseudoVin": {"S": "pv-1"}}, "ConsistentRead": True}),
        ("get_item", {"TableName": state, "Key": {"pseudoVin": {"S": "nobody"}}}),
        (
            "batch_get_item",
            {
                "RequestItems": {
                    state: {
                        "Keys": [{"pseudoVin": {"S": "pv-1"}}, {"pseudoVin": {"S": "pv-2"}}],
                        "ConsistentRead": True,
                        "ProjectionExpression": "pseudoVin, #ms",
                        "ExpressionAttributeNames": {"#ms": "ts"},
                    }
                }
            },
        ),
        (
            "query",
            {
                "TableName": trail,
                "ConsistentRead": True,
                "KeyConditionExpression": "pseudoVin = :pv AND #b BETWEEN :b0 AND :b1",
                "ExpressionAttributeNames": {"#b": "bucket"},
                "ExpressionAttributeValues": {":pv": {"S": "pv-1"}, ":b0": {"N": "7"}, ":b1": {"N": "8"}},
            },
        ),
    ]


def _trip_and_vault_requests(env: AwsEnv) -> list[tuple[str, dict[str, Any]]]:
    """The shapes of ``dynamo_trips``, ``vin_vault`` and ``dynamo_progress`` (worker/stores)."""
    trips, vault = env.settings.table_names[TRIPS], env.settings.table_names[VAULT]
    key = {"pseudoVin": {"S": "pv-1"}}
    item = {**key, "status": {"S": "ACTIVE"}, "lastUpdate": {"S": "v1"}, "tripStart": {"N": "1000"}}

    def create(start: int) -> dict[str, Any]:
        return {
            "TransactItems": [
                {
                    "ConditionCheck": {
                        "TableName": vault,
                        "Key": key,
                        "ConditionExpression": "attribute_not_exists(m) OR m.hwm < :start",
                        "ExpressionAttributeValues": {":start": {"N": str(start)}},
                    }
                },
                {
                    "Put": {
                        "TableName": trips,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(pseudoVin)",
                    }
                },
            ]
        }

    def put(expected: str, version: str) -> dict[str, Any]:
        return {
            "TableName": trips,
            "Item": {**item, "lastUpdate": {"S": version}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            "ConditionExpression": "lastUpdate = :expected",
            "ExpressionAttributeValues": {":expected": {"S": expected}},
        }

    def mark(hwm: int) -> dict[str, Any]:
        return {
            "TableName": vault,
            "Key": key,
            "UpdateExpression": "SET m = :m",
            "ConditionExpression": "attribute_not_exists(m) OR m.hwm <= :hwm",
            "ExpressionAttributeValues": {":m": {"M": {"hwm": {"N": str(hwm)}}}, ":hwm": {"N": str(hwm)}},
        }

    def remember(ciphertext: bytes) -> dict[str, Any]:
        return {
            "TableName": vault,
            "Key": key,
            "UpdateExpression": "SET encryptedVin = if_not_exists(encryptedVin, :c), "
            "createdAt = if_not_exists(createdAt, :now)",
            "ExpressionAttributeValues": {":c": {"B": ciphertext}, ":now": {"S": "2026-12-05T09:00:00Z"}},
        }

    def progress(fields: dict[str, Any]) -> dict[str, Any]:
        names = ("writtenAt", "caughtUpAt")
        update = "SET " + ", ".join(f"#{n} = :{n}" for n in fields)
        if absent := [n for n in names if n not in fields]:
            update += " REMOVE " + ", ".join(f"#{n}" for n in absent)
        return {
            "TableName": vault,
            "Key": {"pseudoVin": {"S": "_progress#shard-0"}},
            "UpdateExpression": update,
            "ExpressionAttributeNames": {f"#{n}": n for n in names},
            "ExpressionAttributeValues": {f":{n}": v for n, v in fields.items()},
        }

    return [
        ("update_item", remember(b"first")),
        ("update_item", remember(b"second")),  # if_not_exists keeps the first
        ("transact_write_items", create(500)),
        ("transact_write_items", create(500)),  # the item exists: cancelled, both items billed twice
        ("put_item", put("v1", "v2")),
        ("put_item", put("v1", "v3")),  # stale: the stored item comes back
        ("update_item", mark(2000)),
        ("update_item", mark(1500)),  # a lower mark: refused by the register
        ("transact_write_items", create(1800)),  # the mark is newer than the start: cancelled
        (
            "batch_get_item",
            {
                "RequestItems": {
                    trips: {"Keys": [key], "ConsistentRead": True},
                    vault: {"Keys": [key], "ConsistentRead": True, "ProjectionExpression": "pseudoVin, m"},
                }
            },
        ),
        (
            "delete_item",
            {
                "TableName": trips,
                "Key": key,
                "ConditionExpression": "lastUpdate = :expected",
                "ExpressionAttributeValues": {":expected": {"S": "v1"}},
            },
        ),  # stale
        (
            "delete_item",
            {
                "TableName": trips,
                "Key": key,
                "ConditionExpression": "lastUpdate = :expected",
                "ExpressionAttributeValues": {":expected": {"S": "v2"}},
            },
        ),
        ("update_item", progress({"writtenAt": {"N": "1"}, "caughtUpAt": {"N": "1"}})),
        ("update_item", progress({"writtenAt": {"N": "2"}})),  # caughtUpAt removed
        ("get_item", {"TableName": vault, "Key": {"pseudoVin": {"S": "_progress#shard-0"}}}),
        ("get_item", {"TableName": vault, "Key": key}),
        ("get_item", {"TableName": trips, "Key": key}),
    ]


def trail_update_request(
    table: str, pseudo_vin: str, bucket: int, slots: dict[str, str], expected: dict[str, str], expires: int
) -> dict[str, Any]:
    class Remainder:  # the fields trail_update reads
        def __init__(self) -> None:
            self.slots, self.expected, self.expires_at = slots, expected, expires

    return trail_update(table, pseudo_vin, bucket, Remainder())  # type: ignore[arg-type]


def test_the_same_requests_get_the_same_answers_refusals_and_bills(
    both: tuple[AwsEnv, Any, FastLocalAws],
) -> None:
    env, fast_client, fast = both
    strict_client = env.clients.dynamodb
    script = _script(env)
    strict_answers, fast_answers = [], []
    for operation, request in script:
        strict_answers.append(_answer(strict_client, operation, request))
        fast_answers.append(_answer(fast_client, operation, request))
    for step, ((operation, _), strict, quick) in enumerate(
        zip(script, strict_answers, fast_answers, strict=True)
    ):
        assert quick == strict, f"step {step}: {operation}"
    # The script exercised every path: a success, a failed condition with its item, both kinds of refusal.
    errors = [a.get("error") for a in strict_answers]
    assert errors.count("ConditionalCheckFailedException") >= 5 and errors.count("ValidationException") == 2
    assert errors.count("TransactionCanceledException") == 2
    assert any(a.get("item") for a in strict_answers)
    written_strict = {t: (w.items, w.bytes, w.units) for (_, t), w in env.aws.app.written.items()}
    written_fast = {t: (w.items, w.bytes, w.units) for (_, t), w in fast.app.written.items()}
    assert written_fast == written_strict and written_strict
    assert fast.app.refusals() == env.aws.app.refused and env.aws.app.refused
    assert fast.app.operations_seen() == env.aws.app.operations_seen()


def test_the_worker_store_converges_alike(both: tuple[AwsEnv, Any, FastLocalAws]) -> None:
    """``DynamoVehicleState.apply`` (conditions, ALL_OLD, the next round) leaves the same item in both."""
    env, fast_client, _ = both
    table = env.settings.table_names[STATE]
    updates = [
        StateUpdate("pv-9", t, {"speed": Observation(t, float(t % 70)), "odometer": Observation(t, t / 10)})
        for t in (5_000, 3_000, 7_000, 7_000, 6_000)
    ]
    updates.append(StateUpdate("pv-9", 4_000, {"gear": Observation(4_000, "R")}))
    # Older than the item but one signal newer: the second round guards that signal's stored value (=).
    updates.append(StateUpdate("pv-9", 6_500, {"speed": Observation(8_000, 5.0)}))
    for client in (env.clients.dynamodb, fast_client):
        store = DynamoVehicleState(client, table)
        for update in updates:
            store.apply(copy.deepcopy(update))
    key = {"pseudoVin": {"S": "pv-9"}}
    strict = env.clients.dynamodb.get_item(TableName=table, Key=key)["Item"]
    assert fast_client.get_item(TableName=table, Key=key)["Item"] == strict
    assert strict["ts"] == {"N": "7000"}
    assert any(v.get("L", [None])[-1] == {"N": "8000"} for v in strict.values())  # the second round ran


def test_a_request_shape_it_does_not_serve_is_refused_not_guessed(
    both: tuple[AwsEnv, Any, FastLocalAws],
) -> None:
    env, fast_client, _ = both
    table = env.settings.table_names[STATE]
    with pytest.raises(botocore.exceptions.ClientError, match="fast tables"):
        fast_client.update_item(
            TableName=table,
            Key={"pseudoVin": {"S": "pv-1"}},
            UpdateExpression="ADD #c :one",
            ExpressionAttributeNames={"#c": "count"},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    with pytest.raises(Unsupported):
        parse_condition("begins_with(#a, :p)", {"#a": "a"})


def test_kinesis_shards_answer_as_moto_does_without_its_quadratic_cost(
    both: tuple[AwsEnv, Any, FastLocalAws],
) -> None:
    """``fast_kinesis`` (patched in by ``FastLocalAws``) against moto's own methods, on twin shards."""
    from moto.kinesis.models import Shard

    from devtools.local_aws import fast_kinesis

    assert fast_kinesis.ORIGINAL, "FastLocalAws patched the shards"
    ours, moto = Shard(0, 0, 2**128), Shard(0, 0, 2**128)
    for i in range(300):
        args = (f"vin-{i % 7}", f"record {i}".encode(), "")
        assert fast_kinesis.put_record(ours, *args) == fast_kinesis.ORIGINAL["put_record"](moto, *args)
    for name in ("get_max_sequence_number", "get_min_sequence_number"):
        assert getattr(fast_kinesis, name)(ours) == fast_kinesis.ORIGINAL[name](moto)
    for last, limit in ((0, None), (0, 10), (57, 100), (299, 5), (300, 5), (10**6, None), (150, 0)):
        mine = fast_kinesis.get_records(ours, str(last), limit)
        theirs = fast_kinesis.ORIGINAL["get_records"](moto, str(last), limit)
        assert [r.data for r in mine[0]] == [r.data for r in theirs[0]], (last, limit)
        assert mine[1] == theirs[1], (last, limit)
    moto.records.clear()  # as resharding replaces a shard's records: the key list follows
    ours.records.clear()
    assert fast_kinesis.get_records(ours, "0", None)[0] == []
    fast_kinesis.put_record(ours, "vin", b"after", "")
    assert [r.data for r in fast_kinesis.get_records(ours, "0", None)[0]] == [b"after"]
