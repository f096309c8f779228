from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.local_aws.limits import item_size
from processors.signals import format_time
from processors.vehicle_state import (
    CHUNK_SIGNALS,
    Observation,
    StateUpdate,
    chunks,
    coalesce,
    named_item,
    outstanding,
    stored_observations,
)
from schemas.dynamo import from_item, to_attribute
from schemas.records import Location, SignalValue, StreamPosition, VehicleReading
from schemas.signal_codes import TESLA_FIELD_NUMBERS, encode
from tests.conftest import AwsEnv
from worker.stores.dynamo_vehicle_state import DynamoVehicleState, update_request

PV = "0123456789abcdef0123456789abcdef"
POS = StreamPosition("shardId-000000000000", "1", 0, 0)
NAMES = [f"s{i}" for i in range(12)]
PVS: Iterator[str] = (f"{n:032x}" for n in itertools.count())
locations = st.builds(Location, st.sampled_from([39.7, 39.75, -33.9]), st.sampled_from([-104.9, 18.4]))
"""Decoding builds ``location`` only from lat/lng; another signal may hold a map of the same shape."""
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
    stored = {"pseudoVin": PV, "ts": 3_000, "v": [35.0, 3_000], "b": [71, 1_000]}
    remainder = outstanding(update, stored)
    assert remainder is not None
    assert plain(remainder) == {"batteryLevel": (2_000, 70), "@": 3_000}
    assert outstanding(update, {**stored, "b": [70, 2_000]}) is None
    # An equal-time tie goes to the greater canonical value, whichever was stored first.
    assert outstanding(update, {**stored, "b": [69, 2_000]}) is not None
    assert outstanding(update, {**stored, "b": [71, 2_000]}) is None


def test_stored_observations_decode_codes_and_skip_what_is_not_a_signal() -> None:
    item = {
        "pseudoVin": PV,
        "ts": 9_000,
        "l": [[1.5, -2.5], 8_000],
        "t6": [398.5, 9_000],
        "~tirePsi": [{"fl": 41}, 7_000],
        "m": {"hwm": 1},  # reserved: never a signal
        "vehicleSpeed": {"value": 1.0, "at": "1970-01-01T00:00:01.000Z"},  # the old shape: not a code
        "v": "not [value, atMs]",
    }
    ts, observations = stored_observations(item)
    assert ts == 9_000
    assert observations == {
        "location": Observation(8_000, Location(1.5, -2.5)),
        "PackVoltage": Observation(9_000, 398.5),
        "tirePsi": Observation(7_000, {"fl": 41}),
    }
    assert named_item(item) == {
        "pseudoVin": PV,
        "timestamp": "1970-01-01T00:00:09.000Z",
        "location": {"value": {"lat": 1.5, "lng": -2.5}, "at": "1970-01-01T00:00:08.000Z"},
        "PackVoltage": {"value": 398.5, "at": "1970-01-01T00:00:09.000Z"},
        "tirePsi": {"value": {"fl": 41}, "at": "1970-01-01T00:00:07.000Z"},
    }


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
        "ts": 5_000,
        "v": [50.0, 5_000],
        "b": [77, 3_000],
        "l": [[1.5, 2.5], 1_000],
    }
    assert named_item(item) == {
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
SNAPSHOT = {name: float(i) for i, name in enumerate(sorted(TESLA_FIELD_NUMBERS)[:266])} | {
    "vehicleSpeed": 1.0,
    "odometer": 2.0,
    "Field9999": 3.0,  # a field newer than our protos
    "x" * 250: 4.0,  # an unknown signal with a long name
}
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
    clauses = [f"(attribute_not_exists(#s{i}) OR #s{i}[1] < :t{i})" for i in range(80)]
    assert refused_by_dynamodb({"ConditionExpression": " AND ".join(clauses)}) is not None
    assert refused_by_dynamodb({"ConditionExpression": " AND ".join(clauses[:40])}) is None


def test_every_request_for_a_full_snapshot_is_well_within_the_expression_limits() -> None:
    (update,) = coalesce([VehicleReading(PV, 1_000, SNAPSHOT, POS)]).values()
    older = {"ts": {"N": "0"}} | {encode(n): {"S": "old"} for n in SNAPSHOT}
    for stored in (None, older):  # the first attempt, and the retry after a failed condition
        requests = [update_request("t", chunk, stored) for chunk in chunks(update)]
        assert len(requests) == math.ceil(len(SNAPSHOT) / CHUNK_SIGNALS) == 7
        for request in requests:
            for key in ("UpdateExpression", "ConditionExpression"):
                assert len(request[key].encode()) <= EXPRESSION_BYTES // 2, key
                assert operators(request[key]) <= EXPRESSION_OPERATORS * 2 // 3, key
        # Every signal written exactly once, and the item's timestamp by the last request only.
        names = [n for r in requests for k, n in r["ExpressionAttributeNames"].items() if k.startswith("#s")]
        assert sorted(names) == sorted(map(encode, SNAPSHOT))
        assert ["#ts = :ts" in r["UpdateExpression"] for r in requests] == [False] * 6 + [True]


def test_a_full_snapshot_is_stored_whole_in_a_few_requests_and_replays_as_no_ops(aws_env: AwsEnv) -> None:
    table = aws_env.settings.table_names["vehicle-state"]
    dynamodb = LimitedDynamoDB(aws_env.clients.dynamodb)
    sink = DynamoVehicleState(dynamodb, table)  # type: ignore[arg-type]
    (update,) = coalesce([VehicleReading(PV, 5_000, SNAPSHOT, POS)]).values()
    assert sink.apply(update) == dynamodb.update_items == 7
    assert sink.apply(update) == 7  # a replay: each request's condition fails, nothing is left to write
    item = from_item(aws_env.clients.dynamodb.get_item(TableName=table, Key={"pseudoVin": {"S": PV}})["Item"])
    assert item.pop("ts") == 5_000
    assert item.pop("pseudoVin") == PV
    assert item == {encode(n): [v, 5_000] for n, v in SNAPSHOT.items()}


class Crash(Exception):
    """The process dies: nothing after it runs."""


class CrashingDynamoDB:
    """Passes ``update_item`` through until ``after`` calls were made, then crashes (once)."""

    def __init__(self, client: Any, after: int) -> None:
        self.client, self.after = client, after

    def update_item(self, **request: Any) -> Any:
        if self.after == 0:
            self.after = -1
            raise Crash
        self.after -= 1
        return self.client.update_item(**request)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6),
            st.builds(
                lambda others, location: others | ({} if location is None else {"location": location}),
                st.dictionaries(st.sampled_from(NAMES), st.integers(0, 3) | locations, max_size=9),
                st.none() | locations,
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 3),
    st.integers(0, 12),
    st.randoms(),
)
def test_chunked_writes_keep_the_item_a_function_of_the_set_of_records(
    aws_env: AwsEnv, records: list[tuple[int, dict[str, Any]]], chunk: int, crash_after: int, rnd: Any
) -> None:
    """Tiny chunks, so that every update is split: a shuffled, partly duplicated stream cut into
    batches stores what one batch stores, conditional failures in any chunk included, and so does a
    delivery the process crashed in the middle of (after ``crash_after`` requests, between or inside
    an update's chunks), delivered again from the start of the batch (no checkpoint was made)."""
    dynamodb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    sink = DynamoVehicleState(dynamodb, table, chunk_signals=chunk)
    readings = [VehicleReading(PV, 1_000 * t, signals, POS) for t, signals in records]
    stream = readings + readings[: len(readings) // 2]
    rnd.shuffle(stream)
    cut = rnd.randint(0, len(stream))
    stored = []
    for pv, batches in ((next(PVS), [readings]), (next(PVS), [stream[:cut], stream[cut:]])):
        for number, batch in enumerate(batches):
            updates = coalesce([replace(r, pseudo_vin=pv) for r in batch]).values()
            if number == 1:
                crashing = DynamoVehicleState(CrashingDynamoDB(dynamodb, crash_after), table, chunk)  # type: ignore[arg-type]
                try:
                    for update in updates:
                        crashing.apply(update)
                except Crash:
                    pass
            for update in updates:
                sink.apply(update)
        got = dynamodb.get_item(TableName=table, Key={"pseudoVin": {"S": pv}}).get("Item", {})
        stored.append({k: v for k, v in from_item(got).items() if k != "pseudoVin"})
    assert stored[0] == stored[1]


# --- item size: DynamoDB bills every write on the whole item ---------------------------------------------

T0 = 1_741_185_121_123
NATIVE: dict[str, SignalValue] = {
    "vehicleSpeed": 66.3,
    "location": Location(39.778009, -104.87855),
    "heading": 96,
    "odometer": 6141.53,
    "batteryLevel": 58,
    "batteryRange": 180.7,
    "shiftState": "D",
}
"""A native record's 7 signals (``fleet-small.jsonl``)."""
TESLA_40: dict[str, SignalValue] = {
    "vehicleSpeed": 64.2, "location": Location(37.394123, -122.150432), "heading": 271.5,
    "odometer": 18234.56, "batteryLevel": 72.4, "soc": 74.1, "batteryRange": 201.35, "shiftState": "D",
    "PackVoltage": 398.51, "PackCurrent": -12.3, "ChargeState": "Idle", "BmsFullchargecomplete": False,
    "DCDCEnable": True, "IsolationResistance": 2870.0, "PedalPosition": 18.4, "BrakePedal": False,
    "DiStateR": "DriveStateDrive", "DiHeatsinkTR": 42.5, "DiAxleSpeedR": 812.3, "DiTorquemotor": 95.2,
    "DiStatorTempR": 55.0, "DiVBatR": 397.9, "DiMotorCurrentR": 143.0, "GpsState": True,
    "NumBrickVoltageMax": 41, "BrickVoltageMax": 4.012, "NumBrickVoltageMin": 12, "BrickVoltageMin": 3.998,
    "NumModuleTempMax": 3, "ModuleTempMax": 31.5, "NumModuleTempMin": 1, "ModuleTempMin": 29.0,
    "RatedRange": 205.2, "Hvil": "HvilStatusFault", "InsideTemp": 21.5, "OutsideTemp": 14.0,
    "TpmsPressureFl": 2.9, "TpmsPressureFr": 2.875, "TpmsPressureRl": 2.85, "TpmsPressureRr": 2.9,
}  # fmt: skip
"""A Tesla vehicle's 40 most frequent fields (8 become canonical signals), at realistic values."""


def legacy_item(pseudo_vin: str, signals: dict[str, SignalValue], at_ms: int) -> dict[str, Any]:
    """The item as it was stored before signal codes: ``{"value": ..., "at": ISO-8601}`` per signal name."""
    at = {"S": format_time(at_ms)}
    return {"pseudoVin": {"S": pseudo_vin}, "timestamp": at} | {
        name: {"M": {"value": to_attribute(value), "at": at}} for name, value in signals.items()
    }


def test_a_vehicle_state_item_bills_one_write_unit(
    aws_env: AwsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measured by the local AWS's item-size rules on the stored item: a native item within 200 B, a Tesla
    40-field item within 1 KB, so that every update of either bills 1 WU (they were 433 B and ~2.4 KB)."""
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    sink = DynamoVehicleState(ddb, table)
    assert len(TESLA_40) == 40 and set(TESLA_40) - set(NATIVE) <= TESLA_FIELD_NUMBERS.keys() | {"soc"}
    sizes = {}
    for label, pv, signals in (("native 7", "a" * 32, NATIVE), ("Tesla 40", "b" * 32, TESLA_40)):
        # Every signal at its own time, as deltas leave them.
        for offset, (name, value) in enumerate(signals.items()):
            sink.apply(StateUpdate(pv, T0, {name: Observation(T0 - 1_000 * offset, value)}))
        stored = ddb.get_item(TableName=table, Key={"pseudoVin": {"S": pv}})["Item"]
        assert len(stored) == len(signals) + 2
        aws_env.aws.app.reset_counts()
        sink.apply(StateUpdate(pv, T0 + 1_000, {"vehicleSpeed": Observation(T0 + 1_000, 12.5)}))
        assert aws_env.aws.app.written[("dynamodb", table)].units == 1, label
        sizes[label] = (item_size(legacy_item(pv, signals, T0)), item_size(stored))
    with capsys.disabled():
        print("\nvehicle-state item bytes (before -> after):", sizes)
    assert sizes["native 7"][1] <= 200
    assert sizes["Tesla 40"][1] <= 1_024
    assert sizes["Tesla 40"][0] > 2 * 1_024  # the old shape billed 3 WU per update


def test_an_attribute_of_another_shape_under_a_code_is_overwritten_not_retried_forever(
    aws_env: AwsEnv,
) -> None:
    """``v`` holding something else than ``[value, atMs]`` (say an unknown signal named ``v`` in the old
    ``{"value", "at"}`` shape) fails the ``#s[1] < :t`` guard; the retry guards on the stored value."""
    ddb, table = aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"]
    old = {"M": {"value": {"N": "1"}, "at": {"S": "1970-01-01T00:00:09.000Z"}}}
    ddb.put_item(TableName=table, Item={"pseudoVin": {"S": PV}, "v": old, "timestamp": {"S": "x"}})
    assert (
        DynamoVehicleState(ddb, table).apply(
            StateUpdate(PV, 2_000, {"vehicleSpeed": Observation(2_000, 5.0)})
        )
        == 2
    )
    item = from_item(ddb.get_item(TableName=table, Key={"pseudoVin": {"S": PV}})["Item"])
    assert item == {"pseudoVin": PV, "v": [5.0, 2_000], "ts": 2_000, "timestamp": "x"}
