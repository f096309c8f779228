from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.vehicle_state import (
    CHUNK_SIGNALS,
    StateUpdate,
    chunks,
    coalesce,
    outstanding,
    update_request,
)
from schemas.dynamo import from_item
from schemas.records import Location, StreamPosition, VehicleReading
from tests.conftest import AwsEnv
from worker.stores.dynamo_vehicle_state import DynamoVehicleState

PV = "0123456789abcdef0123456789abcdef"
POS = StreamPosition("shardId-000000000000", "1", 0, 0)
NAMES = [f"s{i}" for i in range(12)]
PVS: Iterator[str] = (f"{n:032x}" for n in itertools.count())
"""Fresh vehicles for each example of a hypothesis test, which shares one table across its examples."""


def reading(t: int, pseudo_vin: str = PV, **signals: Any) -> VehicleReading:
    return VehicleReading(pseudo_vin, t, signals, POS)


def plain(update: StateUpdate) -> dict[str, Any]:
    return {name: (obs.at_ms, obs.value) for name, obs in update.signals.items()} | {"@": update.timestamp_ms}


def test_coalesce_keeps_the_newest_value_of_each_signal() -> None:
    (update,) = coalesce(
        [
            reading(1_000, vehicleSpeed=10.0, batteryLevel=80),
            reading(3_000, vehicleSpeed=30.0),
            reading(2_000, batteryLevel=79, location=Location(1.0, 2.0)),  # late, but newest battery
        ]
    ).values()
    assert plain(update) == {
        "vehicleSpeed": (3_000, 30.0),
        "batteryLevel": (2_000, 79),
        "location": (2_000, Location(1.0, 2.0)),
        "@": 3_000,
    }


readings_strategy = st.lists(
    st.builds(
        lambda t, pv, speed, battery: reading(
            t,
            pv,
            **{k: v for k, v in {"vehicleSpeed": speed, "batteryLevel": battery}.items() if v is not None},
        ),
        st.integers(0, 20),
        st.sampled_from(["a" * 32, "b" * 32]),
        st.none() | st.floats(0, 100),
        st.none() | st.integers(0, 100),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(readings_strategy, st.randoms())
def test_coalescing_ignores_order_and_duplicates(readings: list[VehicleReading], rnd: Any) -> None:
    shuffled = readings + readings[: len(readings) // 2]
    rnd.shuffle(shuffled)
    assert {pv: plain(u) for pv, u in coalesce(shuffled).items()} == {
        pv: plain(u) for pv, u in coalesce(readings).items()
    }


def test_the_stored_item_ignores_order_batching_and_duplicates(aws_env: AwsEnv) -> None:
    """Through the real conditional UpdateItem: one batch, or a shuffled, partly duplicated stream cut
    into two batches (a redelivery), store the same item, equal-time ties included."""
    table = aws_env.settings.table_names["vehicle-state"]
    sink = DynamoVehicleState(aws_env.clients.dynamodb, table)
    rng = random.Random(11)

    def stored(pseudo_vin: str, *batches: list[VehicleReading]) -> dict[str, Any]:
        for batch in batches:
            for update in coalesce([replace(r, pseudo_vin=pseudo_vin) for r in batch]).values():
                sink.apply(update)
        key = {"pseudoVin": {"S": pseudo_vin}}
        item = from_item(aws_env.clients.dynamodb.get_item(TableName=table, Key=key)["Item"])
        return {k: v for k, v in item.items() if k != "pseudoVin"}

    for case in range(40):
        readings = []
        for _ in range(rng.randint(1, 12)):
            signals: dict[str, Any] = {
                "vehicleSpeed": rng.choice([None, 0.0, 12.5, 30.0]),
                "batteryLevel": rng.choice([None, 70, 71]),
                "shiftState": rng.choice([None, "D", "P"]),
                "odometer": 100.0,
            }
            at_ms = 1_000 * rng.randint(0, 8)  # few distinct times: equal-time ties are common
            readings.append(reading(at_ms, **{k: v for k, v in signals.items() if v is not None}))
        shuffled = readings + readings[: len(readings) // 2]
        rng.shuffle(shuffled)
        cut = rng.randint(0, len(shuffled))
        once = stored(f"{case:02d}a".ljust(32, "0"), readings)
        assert stored(f"{case:02d}b".ljust(32, "0"), shuffled[:cut], shuffled[cut:]) == once, case


def test_outstanding_is_what_still_beats_the_stored_item() -> None:
    (update,) = coalesce([reading(2_000, vehicleSpeed=20.0, batteryLevel=70)]).values()
    stored = {
        "pseudoVin": PV,
        "timestamp": "1970-01-01T00:00:03.000Z",
        "vehicleSpeed": {"value": 35.0, "at": "1970-01-01T00:00:03.000Z"},
        "batteryLevel": {"value": 71, "at": "1970-01-01T00:00:01.000Z"},
    }
    remainder = outstanding(update, stored)
    assert remainder is not None
    assert plain(remainder) == {"batteryLevel": (2_000, 70), "@": 3_000}
    assert (
        outstanding(update, {**stored, "batteryLevel": {"value": 70, "at": "1970-01-01T00:00:02.000Z"}})
        is None
    )


def test_sink_never_rolls_a_signal_back_and_replays_are_no_ops(aws_env: AwsEnv) -> None:
    table = aws_env.settings.table_names["vehicle-state"]
    sink = DynamoVehicleState(aws_env.clients.dynamodb, table)

    def apply(*readings: VehicleReading) -> int:
        return sum(sink.apply(u) for u in coalesce(readings).values())

    assert apply(reading(1_000, vehicleSpeed=10.0, batteryLevel=80, location=Location(1.5, 2.5))) == 1
    assert apply(reading(5_000, vehicleSpeed=50.0)) == 1
    # Late record: its battery is newer than the stored battery, its speed is not.
    apply(reading(3_000, vehicleSpeed=30.0, batteryLevel=77))
    apply(reading(5_000, vehicleSpeed=50.0))  # exact replay
    item = from_item(aws_env.clients.dynamodb.get_item(TableName=table, Key={"pseudoVin": {"S": PV}})["Item"])
    assert item == {
        "pseudoVin": PV,
        "timestamp": "1970-01-01T00:00:05.000Z",
        "vehicleSpeed": {"value": 50.0, "at": "1970-01-01T00:00:05.000Z"},
        "batteryLevel": {"value": 77, "at": "1970-01-01T00:00:03.000Z"},
        "location": {"value": {"lat": 1.5, "lng": 2.5}, "at": "1970-01-01T00:00:01.000Z"},
    }


def test_one_update_item_per_vehicle_per_batch(aws_env: AwsEnv) -> None:
    sink = DynamoVehicleState(aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"])
    batch = [
        reading(t, pv, vehicleSpeed=float(t)) for t in range(0, 50_000, 1_000) for pv in ("a" * 32, "b" * 32)
    ]
    aws_env.aws.app.reset_counts()
    for update in coalesce(batch).values():
        sink.apply(update)
    assert aws_env.aws.app.requests[("dynamodb", "UpdateItem")] == 2


# --- DynamoDB's expression limits: one condition clause per signal outgrew them at ~75-80 signals --

EXPRESSION_BYTES = 4096
EXPRESSION_OPERATORS = 300
_OPERATORS = re.compile(
    r"\b(?:AND|OR|NOT|BETWEEN|IN|attribute_exists|attribute_not_exists|attribute_type|begins_with|"
    r"contains|size)\b|<>|<=|>=|[=<>]"
)
SNAPSHOT = {f"Tesla{i:03d}": float(i) for i in range(268)} | {"vehicleSpeed": 1.0, "odometer": 2.0}
"""A snapshot after a reconnect: about 270 fields at once."""


def operators(expression: str) -> int:
    """What DynamoDB counts against its 300 operators or functions per expression (``=`` included,
    which only over-counts an update expression's assignments)."""
    return len(_OPERATORS.findall(expression))


def refused_by_dynamodb(request: dict[str, Any]) -> str | None:
    """Why DynamoDB would refuse this request's expressions, per its documented limits, else None."""
    for key in ("UpdateExpression", "ConditionExpression"):
        expression = request.get(key, "")
        if len(expression.encode()) > EXPRESSION_BYTES:
            return f"{key} longer than 4 KB"
        if operators(expression) > EXPRESSION_OPERATORS:
            return f"{key} has more than 300 operators"
    return None


class LimitedDynamoDB:
    """The local AWS with DynamoDB's expression limits: refused the way DynamoDB refuses them."""

    def __init__(self, client: Any) -> None:
        self.client, self.update_items = client, 0

    def update_item(self, **request: Any) -> Any:
        self.update_items += 1
        why = refused_by_dynamodb(request)
        if why is not None:
            error = {"Error": {"Code": "ValidationException", "Message": why}}
            raise ClientError(error, "UpdateItem")  # type: ignore[arg-type]
        return self.client.update_item(**request)


def test_the_limit_check_refuses_what_a_single_request_for_a_snapshot_was() -> None:
    clauses = [f"(attribute_not_exists(#s{i}) OR #s{i}.#at < :t{i})" for i in range(80)]
    assert refused_by_dynamodb({"ConditionExpression": " AND ".join(clauses)}) is not None
    assert refused_by_dynamodb({"ConditionExpression": " AND ".join(clauses[:40])}) is None


def test_every_request_for_a_full_snapshot_is_well_within_the_expression_limits() -> None:
    (update,) = coalesce([VehicleReading(PV, 1_000, SNAPSHOT, POS)]).values()
    older = {"timestamp": {"S": "1970-01-01T00:00:00.000Z"}} | {n: {"S": "old"} for n in SNAPSHOT}
    for stored in (None, older):  # the first attempt, and the retry after a failed condition
        requests = [update_request("t", chunk, stored) for chunk in chunks(update)]
        assert len(requests) == math.ceil(len(SNAPSHOT) / CHUNK_SIGNALS) == 7
        for request in requests:
            for key in ("UpdateExpression", "ConditionExpression"):
                assert len(request[key].encode()) <= EXPRESSION_BYTES // 2, key
                assert operators(request[key]) <= EXPRESSION_OPERATORS * 2 // 3, key
        # Every signal written exactly once, and the item's timestamp by the last request only.
        names = [n for r in requests for k, n in r["ExpressionAttributeNames"].items() if k.startswith("#s")]
        assert sorted(names) == sorted(SNAPSHOT)
        assert ["#ts = :ts" in r["UpdateExpression"] for r in requests] == [False] * 6 + [True]


def test_a_full_snapshot_is_stored_whole_in_a_few_requests_and_replays_as_no_ops(aws_env: AwsEnv) -> None:
    table = aws_env.settings.table_names["vehicle-state"]
    dynamodb = LimitedDynamoDB(aws_env.clients.dynamodb)
    sink = DynamoVehicleState(dynamodb, table)  # type: ignore[arg-type]
    (update,) = coalesce([VehicleReading(PV, 5_000, SNAPSHOT, POS)]).values()
    assert sink.apply(update) == dynamodb.update_items == 7
    assert sink.apply(update) == 7  # a replay: each request's condition fails, nothing is left to write
    item = from_item(aws_env.clients.dynamodb.get_item(TableName=table, Key={"pseudoVin": {"S": PV}})["Item"])
    assert item.pop("timestamp") == "1970-01-01T00:00:05.000Z"
    assert item.pop("pseudoVin") == PV
    assert item == {n: {"value": v, "at": "1970-01-01T00:00:05.000Z"} for n, v in SNAPSHOT.items()}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.dictionaries(st.sampled_from(NAMES), st.integers(0, 3), max_size=9)),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 3),
    st.randoms(),
)
def test_chunked_writes_keep_the_item_a_function_of_the_set_of_records(
    aws_env: AwsEnv, records: list[tuple[int, dict[str, int]]], chunk: int, rnd: Any
) -> None:
    """Tiny chunks, so that every update is split: a shuffled, partly duplicated stream cut into
    batches stores what one batch stores, conditional failures in any chunk included."""
    dynamodb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    sink = DynamoVehicleState(dynamodb, table, chunk_signals=chunk)
    readings = [VehicleReading(PV, 1_000 * t, signals, POS) for t, signals in records]
    stream = readings + readings[: len(readings) // 2]
    rnd.shuffle(stream)
    cuts = sorted(rnd.sample(range(len(stream) + 1), 2))
    stored = []
    for pv, batches in ((next(PVS), [readings]), (next(PVS), [stream[: cuts[0]], stream[cuts[0] :]])):
        for batch in batches:
            for update in coalesce([replace(r, pseudo_vin=pv) for r in batch]).values():
                sink.apply(update)
        got = dynamodb.get_item(TableName=table, Key={"pseudoVin": {"S": pv}}).get("Item", {})
        stored.append({k: v for k, v in from_item(got).items() if k != "pseudoVin"})
    assert stored[0] == stored[1]
