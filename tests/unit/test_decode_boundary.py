"""The decoding boundary is total: whatever a record's bytes, it is decoded or quarantined with a reason.

No record may fail a batch: an exception out of decoding or per-record planning would fail the whole
batch, the KCL would redeliver it, and the shard would stall on the same record forever.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import processors.decode
from processors.batch import decode_batch
from processors.decode import MAX_NESTING, DecodeLimits, Decoder, nesting_depth
from processors.errors import InvalidRecord, RejectReason
from processors.pseudonymize import Pseudonymizer
from processors.signals import parse_event_time
from schemas.records import KinesisRecord, StreamPosition

VIN = "5YJ3E1EA7KF317000"
T0 = parse_event_time("2025-03-05T14:32:01.000Z")
ARRIVAL = T0 + 1_000
DECODER = Decoder(DecodeLimits(max_future_skew_ms=24 * 3600_000, max_event_age_ms=7 * 24 * 3600_000))
PSEUDO = Pseudonymizer(b"boundary-key")
QUICK = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nested_list(depth: int) -> bytes:
    """A JSON list ``depth`` levels deep, built as text: building it as objects would itself recurse."""
    return b"[" * depth + b"1" + b"]" * depth


def native_with_value(value_json: bytes) -> bytes:
    return (
        b'{"vin": "' + VIN.encode() + b'", "timestamp": "2025-03-05T14:32:01.000Z", '
        b'"signals": {"vehicleSpeed": 10.0, "odd": ' + value_json + b"}}"
    )


def record(data: bytes, seq: int = 1) -> KinesisRecord:
    return KinesisRecord(data, VIN, StreamPosition("shardId-000", str(seq), 0, ARRIVAL))


def outcome(data: bytes) -> Any:
    """The decoded record, or the reason it was refused; anything else raised fails the test."""
    try:
        return DECODER.decode(data, ARRIVAL)
    except InvalidRecord as invalid:
        assert VIN not in invalid.detail.upper()
        return invalid.reason


# --- defect 1: a value nested 400 deep raised RecursionError out of decode ---------------------------


@pytest.mark.parametrize("depth", [31, 100, 220, 330, 400, 1020, 1030, 5000])
def test_a_signal_nested_deeper_than_dynamodb_allows_is_a_schema_violation(depth: int) -> None:
    """The record is 2 levels (record, signals) + the value's: anything past 32 levels in all is refused,
    also past orjson's own depth limit (1024), where orjson gives up with a JSONDecodeError."""
    assert outcome(native_with_value(nested_list(depth))) is RejectReason.SCHEMA_VIOLATION


def test_a_record_exactly_32_levels_deep_is_accepted() -> None:
    decoded = DECODER.decode(native_with_value(nested_list(MAX_NESTING - 2)), ARRIVAL)
    assert MAX_NESTING == 32
    assert nesting_depth(decoded.signals["odd"]) == MAX_NESTING - 2


def test_nesting_is_measured_without_recursion() -> None:
    deep: Any = 1
    for _ in range(50_000):  # far beyond the interpreter's recursion limit
        deep = {"k": [deep]}
    assert nesting_depth(deep) == 100_000
    assert (nesting_depth(1), nesting_depth([]), nesting_depth({"a": [1, {"b": {}}]})) == (0, 1, 4)


def test_broken_json_is_malformed_unless_it_is_too_deep_before_it_breaks() -> None:
    assert outcome(b'{"signals": [[[' + b"]" * 4) is RejectReason.MALFORMED_JSON
    assert outcome(b'{"vin": "[[[[", "signals": ' + b"[" * 40) is RejectReason.SCHEMA_VIOLATION
    assert outcome(b'{"vin": "' + b"[" * 40 + b'", "signals": {') is RejectReason.MALFORMED_JSON


# --- internal_error: an unexpected exception is one record's quarantine, never the batch's failure ----


def test_an_unexpected_exception_in_decode_is_an_internal_error_naming_only_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(obj: dict[str, Any]) -> Any:
        raise KeyError(f"lost {VIN}")  # the message would echo input: it must not reach the detail

    monkeypatch.setattr(processors.decode, "decode_native", broken)
    with pytest.raises(InvalidRecord) as caught:
        DECODER.decode(native_with_value(b"1"), ARRIVAL)
    assert (caught.value.reason, caught.value.detail) == (RejectReason.INTERNAL_ERROR, "KeyError")


def test_a_record_that_breaks_planning_is_quarantined_and_the_rest_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good, bad = native_with_value(b"1"), native_with_value(b"2")
    original = PSEUDO.reading

    class Broken(Pseudonymizer):
        def reading(self, decoded: Any, position: StreamPosition) -> Any:
            if decoded.signals.get("odd") == 2:
                raise RecursionError(VIN)
            return original(decoded, position)

    plan = decode_batch([record(good, 1), record(bad, 2), record(good, 3)], DECODER, Broken(b"boundary-key"))
    assert [r.position.sequence_number for r in plan.readings] == ["1", "3"]
    [quarantined] = plan.dead_letters
    assert (quarantined.reason, quarantined.detail) == (RejectReason.INTERNAL_ERROR, "RecursionError")
    assert quarantined.record.position.sequence_number == "2"


# --- properties: decode and the batch planning entry point are total ---------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_trees = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=60,
)


@st.composite
def deep_trees(draw: st.DrawFn) -> Any:
    """A chain of lists and objects, often past the 32-level limit, sometimes past orjson's 1024."""
    depth = draw(st.integers(min_value=1, max_value=1_200))
    tree: Any = draw(json_scalars)
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=8))
    for level in range(depth):
        tree = [tree] if kinds[level % len(kinds)] else {"k": tree}
    return tree


def as_json(tree: Any) -> bytes:
    """Serialize without recursing in Python (orjson itself refuses past 255 levels)."""
    try:
        return orjson.dumps(tree)
    except orjson.JSONEncodeError:
        return b'"unserializable"'


def shaped(tree: Any, shape: str) -> bytes:
    """``tree`` where each format puts values, or as the whole record."""
    if shape == "native":
        return native_with_value(as_json(tree))
    if shape == "tesla":
        return (
            b'{"vin": "' + VIN.encode() + b'", "data": [{"key": "VehicleSpeed", "value": {"doubleValue": 1}},'
            b' {"key": "InsideTemp", "value": ' + as_json(tree) + b"}]}"
        )
    return as_json(tree)


shapes = st.sampled_from(["native", "tesla", "whole"])


@QUICK
@given(st.binary(max_size=400))
def test_decode_of_arbitrary_bytes_returns_a_record_or_a_reason(data: bytes) -> None:
    outcome(data)


@QUICK
@given(json_trees | deep_trees(), shapes)
def test_decode_of_arbitrary_json_trees_returns_a_record_or_a_reason(tree: Any, shape: str) -> None:
    result = outcome(shaped(tree, shape))
    if not isinstance(result, RejectReason):
        assert all(nesting_depth(value) <= MAX_NESTING - 2 for value in result.signals.values())


@QUICK
@given(st.integers(min_value=2**63, max_value=10**400) | st.integers(max_value=-(2**63)), shapes)
def test_huge_numbers_are_decoded_or_refused(number: int, shape: str) -> None:
    result = outcome(shaped("N", shape).replace(b'"N"', str(number).encode()))
    if not isinstance(result, RejectReason):
        value = result.signals.get("odd", result.signals.get("InsideTemp"))
        assert value is None or (isinstance(value, int | float) and math.isfinite(value))


@QUICK
@given(
    st.lists(
        st.binary(max_size=200) | st.tuples(json_trees | deep_trees(), shapes).map(lambda ts: shaped(*ts)),
        max_size=8,
    )
)
def test_batch_planning_accounts_for_every_record_and_never_raises(payloads: list[bytes]) -> None:
    records = [record(data, seq) for seq, data in enumerate(payloads, start=1)]
    plan = decode_batch(records, DECODER, PSEUDO)
    applied = {r.position for r in plan.readings}
    quarantined = {q.record.position for q in plan.dead_letters}
    assert applied.isdisjoint(quarantined)
    assert applied | quarantined == {r.position for r in records}
    assert all(VIN not in q.detail.upper() for q in plan.dead_letters)
