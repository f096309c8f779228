from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.vehicle_state import StateUpdate, VehicleStateSink, coalesce, outstanding
from schemas.dynamo import from_item
from schemas.records import Location, StreamPosition, VehicleReading
from tests.conftest import AwsEnv

PV = "0123456789abcdef0123456789abcdef"
POS = StreamPosition("shardId-000000000000", "1", 0, 0)


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
    sink = VehicleStateSink(aws_env.clients.dynamodb, table)
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
    sink = VehicleStateSink(aws_env.clients.dynamodb, table)

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
    sink = VehicleStateSink(aws_env.clients.dynamodb, aws_env.settings.table_names["vehicle-state"])
    batch = [
        reading(t, pv, vehicleSpeed=float(t)) for t in range(0, 50_000, 1_000) for pv in ("a" * 32, "b" * 32)
    ]
    aws_env.aws.app.reset_counts()
    for update in coalesce(batch).values():
        sink.apply(update)
    assert aws_env.aws.app.requests[("dynamodb", "UpdateItem")] == 2
