"""Fuzzing the boundary: no record, whatever its bytes, can fail a batch.

Every property draws whole batches (several records, several vehicles), because the failures that stop a
shard are the ones a single record causes for the batch around it. ``make test`` runs a few hundred
examples of each; ``make fuzz`` runs ``FLEET_FUZZ_SCALE`` times as many.

- decode + plan is total: each record of a batch is applied or quarantined with a reason code, and
  nothing else escapes (arbitrary bytes, arbitrary JSON trees: deep, wide, huge numbers, odd unicode;
  mutated Tesla protobuf and protojson);
- every request built for an accepted record passes the strict local AWS: executing the plan against it
  dead-letters nothing as ``unwritable`` and raises nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tesla_protocol.telemetry.vehicle_data_pb2 import Datum, Field, LocationValue, Payload, Value

from processors.batch import decode_batch
from processors.decode import Decoder
from processors.errors import RejectReason
from processors.pseudonymize import Pseudonymizer
from processors.trip_planner import TripPlanner
from processors.trips import TripStateMachine, TripThresholds, step_of
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import AwsEnv
from worker.pipeline import Pipeline
from worker.wiring import pipeline_for

SCALE = int(os.environ.get("FLEET_FUZZ_SCALE", "1"))
PSEUDONYMS = Pseudonymizer(b"fuzz-tests-key")
NOW_MS = int(time.time() * 1000)


def examples(count: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=count * SCALE,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# --- what producers (and broken producers) put on the stream ------------------------------------------

VIN_ALPHABET = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
vins = st.text(VIN_ALPHABET, min_size=17, max_size=17)
odd_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    [
        "",
        "NaN",
        "Infinity",
        "-Infinity",
        "null",
        "\u0000",
        "\u202e",
        "\ufeff",
        "a" * 3000,
        "5YJ3E1EA7KF317000",
    ]
)
known_signals = st.sampled_from(
    ["vehicleSpeed", "lat", "lng", "heading", "odometer", "batteryLevel", "batteryRange", "shiftState", "soc"]
)
KNOWN_SIGNALS = {
    "vehicleSpeed",
    "lat",
    "lng",
    "heading",
    "odometer",
    "batteryLevel",
    "batteryRange",
    "shiftState",
}
other_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(
    lambda name: name not in KNOWN_SIGNALS
)
"""Names a native record may carry as OEM signals of its own: any type, any shape, kept as they come."""
signal_names = known_signals | other_names


class Raw(str):
    """JSON text spliced into a document as is: numbers and nestings no JSON library would write."""


huge_numbers = st.builds(
    Raw,
    st.sampled_from(["1e400", "-1e400", "1" * 400, "-0", "0.000000000000000000001", "1E-400", "9" * 30]),
)
plain_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_text
)
wire_oddities = (
    huge_numbers
    | st.integers(min_value=2**64, max_value=2**70)
    | st.sampled_from([float("nan"), float("inf"), -float("inf")])
    | st.builds(Raw, st.sampled_from(['"\\ud800"', '"\\udfff x"', '"\\u0000"']))
)
"""JSON text a strict parser refuses or reads at the edge of its range: most records don't carry any."""
leaves = plain_leaves
trees = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(signal_names, children, max_size=6),
    max_leaves=40,
)


TELLING_DEPTHS = [31, 32, 33, 40, 220, 330, 400, 1023, 1024, 1025]
"""DynamoDB's limit, where botocore's serializer and a recursive decoder give up, and orjson's limit."""


@st.composite
def nested(draw: st.DrawFn) -> Raw:
    """A leaf wrapped in lists and objects hundreds deep: deeper than DynamoDB (32) or a recursive
    decoder (Python's ~1,000 frames) can take."""
    depth = draw(st.sampled_from(TELLING_DEPTHS) | st.integers(min_value=1, max_value=1500))
    opener = draw(st.sampled_from(["[", '{"k":']))
    closer = "]" if opener == "[" else "}"
    return Raw(opener * depth + text_of(draw(leaves)) + closer * depth)


wide = st.dictionaries(other_names, leaves, min_size=50, max_size=400)
values = trees | nested() | nested() | wide


def text_of(value: Any) -> str:
    """JSON text, keeping what ``json.dumps`` writes but orjson never would (NaN, huge integers, lone
    surrogates as escapes)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{text_of(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(text_of(v) for v in value) + "]"
    return json.dumps(value)


iso_now = st.just(time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(NOW_MS / 1000)))
recent = st.integers(min_value=NOW_MS - 3_600_000, max_value=NOW_MS)
timestamps = st.one_of(
    recent,
    recent,
    recent,
    st.integers(min_value=-(2**63), max_value=2**63),
    odd_text,
    iso_now,
)


well_typed_signals = st.fixed_dictionaries(
    {},
    optional={
        "vehicleSpeed": st.floats(min_value=0, max_value=200),
        "lat": st.floats(min_value=-90, max_value=90),
        "lng": st.floats(min_value=-180, max_value=180),
        "heading": st.integers(min_value=0, max_value=359),
        "batteryLevel": st.integers(min_value=0, max_value=100),
        "shiftState": st.sampled_from(["P", "R", "N", "D"]),
    },
)
"""Known signals as a producer sends them, so that records get past validation to the odd ones beside."""


@st.composite
def native_records(draw: st.DrawFn) -> bytes:
    signals = draw(well_typed_signals) | draw(st.dictionaries(other_names, values, max_size=8) | wide)
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        signals[draw(signal_names)] = draw(wire_oddities)
    fields = {"vin": text_of(draw(vins)), "timestamp": text_of(draw(timestamps)), "signals": text_of(signals)}
    if draw(st.booleans()):
        fields[draw(signal_names)] = text_of(draw(values))
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode("utf-8", "surrogatepass")


TESLA_VALUE_KEYS = [
    "stringValue",
    "intValue",
    "longValue",
    "floatValue",
    "doubleValue",
    "booleanValue",
    "locationValue",
    "shiftStateValue",
    "invalid",
    "chargingValue",
]


@st.composite
def protojson_records(draw: st.DrawFn) -> bytes:
    key = st.sampled_from(list(Field.keys())) | st.integers(min_value=-5, max_value=10_000) | odd_text

    def datums(value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        kinds = st.dictionaries(st.sampled_from(TESLA_VALUE_KEYS), value, max_size=2)
        return st.fixed_dictionaries({"key": key, "value": st.none() | kinds})

    # A snapshot after a reconnect is wide but plain: deep or wide values in hundreds of datums would
    # outgrow hypothesis's buffer and make its replays draw differently (FlakyStrategyDefinition).
    few_odd = st.lists(datums(values), max_size=12)
    many_plain = st.lists(datums(leaves), min_size=150, max_size=300)
    record: dict[str, Any] = {
        "data": draw(few_odd | many_plain),
        "createdAt": draw(iso_now | iso_now | timestamps),
        "vin": draw(vins),
    }
    if draw(st.booleans()):
        record["isResend"] = draw(leaves)
    return text_of(record).encode("utf-8", "surrogatepass")


@st.composite
def tesla_payloads(draw: st.DrawFn) -> Payload:
    payload = Payload(vin=draw(vins), is_resend=draw(st.booleans()))
    payload.created_at.FromMilliseconds(draw(st.integers(min_value=NOW_MS - 3_600_000, max_value=NOW_MS)))
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        value = Value()
        kind = draw(st.sampled_from(["string", "int", "double", "bool", "location", "invalid", "none"]))
        if kind == "string":
            value.string_value = draw(odd_text).encode("utf-8", "replace").decode("utf-8")
        elif kind == "int":
            value.int_value = draw(st.integers(min_value=-(2**31), max_value=2**31 - 1))
        elif kind == "double":
            value.double_value = draw(st.floats())
        elif kind == "bool":
            value.boolean_value = draw(st.booleans())
        elif kind == "location":
            value.location_value.CopyFrom(
                LocationValue(latitude=draw(st.floats()), longitude=draw(st.floats()))
            )
        elif kind == "invalid":
            value.invalid = True
        payload.data.append(Datum(key=draw(st.sampled_from(list(Field.keys()))), value=value))
    return payload


@st.composite
def mutated_protobuf(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(tesla_payloads()).SerializeToString())
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif action == "insert":
            data[at:at] = draw(st.binary(max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        else:
            del data[at:]
    return bytes(data)


SEQUENCE = itertools.count(49_000_000_000)
"""One shard's sequence numbers across every example: a position holds one record (a dead letter is
written once at its position's key)."""


def as_batch(datas: Sequence[bytes], keys: Sequence[str]) -> list[KinesisRecord]:
    return [
        KinesisRecord(
            data=data,
            partition_key=key,
            position=StreamPosition("shardId-000000000000", str(next(SEQUENCE)), 0, NOW_MS),
        )
        for data, key in zip(datas, keys, strict=True)
    ]


def batches_of(records: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[KinesisRecord]]:
    pairs = st.lists(st.tuples(records, vins), min_size=1, max_size=5)
    return pairs.map(lambda drawn: as_batch([p for p, _ in drawn], [k for _, k in drawn]))


# --- properties --------------------------------------------------------------------------------------

SOURCES = {
    "bytes": st.binary(max_size=300),
    "json-trees": st.builds(lambda tree: text_of(tree).encode("utf-8", "surrogatepass"), values),
    "native": native_records(),
    "tesla-protojson": protojson_records(),
    "tesla-protobuf": mutated_protobuf(),
}


@pytest.mark.parametrize("source", SOURCES)
def test_decode_and_plan_are_total(source: str) -> None:
    @examples(200)
    @given(batches_of(SOURCES[source]))
    def decode_and_plan(batch: list[KinesisRecord]) -> None:
        plan = decode_batch(batch, Decoder(), PSEUDONYMS)
        assert len(plan.readings) + len(plan.dead_letters) == len(batch)
        assert all(isinstance(q.reason, RejectReason) for q in plan.dead_letters)
        planner = TripPlanner(TripStateMachine(TripThresholds()))
        data = {record.position: record.data for record in batch}
        for pseudo_vin, readings in plan.by_vehicle().items():
            planner.adopt(pseudo_vin, None)
            planner.consume(pseudo_vin, [step_of(r, data[r.position]) for r in readings])
            planner.plan_for(pseudo_vin)

    decode_and_plan()


@pytest.fixture
def pipeline(aws_env: AwsEnv) -> Pipeline:
    env = aws_env.with_settings(FLEET_PSEUDONYM_KEY="fuzz-tests-key")
    return pipeline_for(env.settings, env.clients)


@examples(30)
@given(batches_of(st.one_of(native_records(), protojson_records(), mutated_protobuf())))
def test_every_request_built_passes_the_strict_local_aws(
    pipeline: Pipeline, batch: list[KinesisRecord]
) -> None:
    outcome = pipeline.process(batch)
    # The end of the shard: the unsettled records go into their vehicles' items, everything is written.
    flushed = pipeline.end_of_shard(int(time.time() * 1000), lambda _position: None)
    assert outcome.applied + outcome.dead_letters == len(batch)
    plan = decode_batch(batch, pipeline.decoder, pipeline.pseudonymizer)
    refused = outcome.dead_letters + flushed.dead_letters - len(plan.dead_letters)
    assert refused == 0, "a decoded record was refused by the store"
