"""The decode path's shortcuts give the answers of the long way round, whatever the input.

Each shortcut skips work for the records producers really send (exact JSON types, scalar signals, short
names) and hands everything else to the code it stands in for. The properties below hold each shortcut to
that code: the reference implementations are the functions as they were before the shortcuts (46ae976),
kept here verbatim as the specification.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import processors.decode
import processors.signals
from processors.decode import MAX_NESTING, Decoder, native_fields, nesting_depth
from processors.errors import InvalidRecord, RejectReason, schema_detail
from processors.signal_bounds import SignalBounds, bound_signals, within_bounds
from processors.signals import (
    RESERVED_NAMES,
    assemble,
    finite_number,
    signal_mentions_vin,
    valid_location,
)
from schemas.records import Location, NativeRecord, SignalValue, StreamPosition, VehicleReading

VIN = "5YJ3E1EA7KF317000"
OTHER_VIN = "1HGCM82633A004352"
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the specification: the functions before the shortcuts --------------------------------------------


def reference_finite_number(value: object) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value if abs(value) < 10**38 else None
    if not math.isfinite(value) or not (value == 0 or 1e-130 <= abs(value) < 1e126):
        return None
    return value


def reference_valid_location(lat: object, lng: object) -> Location | None:
    lat_n, lng_n = reference_finite_number(lat), reference_finite_number(lng)
    if lat_n is None or lng_n is None or not (-90 <= lat_n <= 90 and -180 <= lng_n <= 180):
        return None
    if lat_n == 0 and lng_n == 0:
        return None
    return Location(float(lat_n), float(lng_n))


def reference_speed(reading: VehicleReading) -> float | None:
    value = reading.signals.get("vehicleSpeed")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def reference_assemble(vin: str, pairs: Iterable[tuple[str, Any]]) -> tuple[dict[str, SignalValue], bool]:
    signals: dict[str, SignalValue] = {}
    lat: Any = None
    lng: Any = None
    for name, value in pairs:
        if value is None:
            continue
        if name == "lat":
            lat = value
        elif name == "lng":
            lng = value
        elif name in RESERVED_NAMES or signal_mentions_vin(name, value, vin):  # noqa: SIM114 (verbatim)
            continue
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and reference_finite_number(value) is None
        ):
            continue
        else:
            signals[name] = value
    dropped = False
    if lat is not None or lng is not None:
        location = reference_valid_location(lat, lng)
        if location is None:
            dropped = True
        else:
            signals["location"] = location
    return signals, dropped


def reference_native_fields(obj: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    try:
        native = NativeRecord.model_validate(obj)
    except ValidationError as error:
        raise InvalidRecord(RejectReason.SCHEMA_VIOLATION, schema_detail(error)) from None
    return native.vin, native.timestamp, native.signals


def outcome(call: Any, *args: Any) -> Any:
    """What a call returns, or the reason and detail it refused with."""
    try:
        return ("ok", call(*args))
    except InvalidRecord as invalid:
        return ("refused", invalid.reason, invalid.detail)


# --- strategies ------------------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-131, 1e-130, 1e126, 9.99e125, 10**38 - 1, 10**38, -(10**38)]),
)
vinish_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from([VIN, VIN.lower(), OTHER_VIN, f"car_{OTHER_VIN}", f" {VIN[:8]} {VIN[8:]} ", "QUE5Q"]),
    st.builds(operator.add, st.text(alphabet="ABCDEFGH0123456789", min_size=10, max_size=20), st.text()),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers.filter(math.isfinite), vinish_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
signal_names = st.one_of(
    st.sampled_from(["lat", "lng", "vehicleSpeed", "location", "vin", "pseudoVin", "RouteLine", "x" * 17]),
    st.sampled_from(["LongitudinalAcceleration", "HvacLeftTemperatureRequest", f"tag {VIN[:9]} {VIN[9:]}"]),
    st.sampled_from(
        [f"seen{VIN.lower()}", f"Trailer{OTHER_VIN[:10]} {OTHER_VIN[10:]}x", "ABCDEFGHJKLMNPRSTUVWXYZ"]
    ),
    vinish_text,
)
escaped_text = st.one_of(
    st.text(alphabet="\x00\x1f", min_size=15, max_size=30),
    st.text(alphabet='\x00a"\\\u00e9\U0001f600', min_size=15, max_size=30),
)
"""Around where escaping makes short text long: 6 bytes a control character in canonical JSON."""
signal_values = st.one_of(
    numbers,
    st.booleans(),
    vinish_text,
    escaped_text,
    st.builds(lambda text, n: text * n, escaped_text, st.integers(20, 30)),
    st.builds(Location, st.floats(-90, 90), st.floats(-180, 180)),
    json_values,
)


# --- the properties ---------------------------------------------------------------------------------------


@PROPERTY
@given(st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=3), st.just(True)))
def test_finite_number_is_the_one_before_its_shortcut(value: Any) -> None:
    got, expected = finite_number(value), reference_finite_number(value)
    assert got == expected  # neither ever returns NaN
    assert type(got) is type(expected)


@PROPERTY
@given(signal_names, signal_values, st.sampled_from([VIN, OTHER_VIN, "", "ACCELERATION", VIN.lower()]))
def test_what_mentions_no_vin_is_what_the_search_does_not_find(name: str, value: Any, vin: str) -> None:
    if processors.signals._mentions_no_vin(name, value, vin):
        assert not signal_mentions_vin(name, value, vin)


@PROPERTY
@given(
    st.one_of(numbers, st.booleans(), st.none(), st.floats(-1e-120, 1e-120)),
    st.one_of(numbers, st.booleans(), st.none(), st.floats(-1e-120, 1e-120)),
)
def test_valid_location_is_the_one_before_its_shortcut(lat: Any, lng: Any) -> None:
    got, expected = valid_location(lat, lng), reference_valid_location(lat, lng)
    assert got == expected
    if got is not None and expected is not None:
        assert (type(got.lat), type(got.lng)) == (type(expected.lat), type(expected.lng)) == (float, float)


@PROPERTY
@given(st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=3)))
def test_a_reading_s_speed_is_the_one_before_its_shortcut(value: Any) -> None:
    reading = VehicleReading("p" * 32, 0, {"vehicleSpeed": value}, StreamPosition("s", "1", 0, 0))
    got, expected = reading.speed, reference_speed(reading)
    assert got == expected or (
        got is not None and expected is not None and math.isnan(got) and math.isnan(expected)
    )
    assert type(got) is type(expected)


@PROPERTY
@given(
    st.lists(st.tuples(signal_names, signal_values), max_size=8),
    st.sampled_from([VIN, OTHER_VIN, "", "ACCELERATION"]),
)
def test_assemble_is_the_one_before_its_shortcuts(pairs: list[tuple[str, Any]], vin: str) -> None:
    got = assemble(vin, pairs)
    expected = reference_assemble(vin, pairs)
    assert got == expected
    assert list(got[0]) == list(expected[0])  # the same order too: it is the reading's order


@PROPERTY
@given(
    st.dictionaries(
        st.sampled_from(["vin", "timestamp", "signals", "other"]),
        st.one_of(
            json_values,
            st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            st.sampled_from([VIN, "2025-03-05T14:32:01Z", 1_741_185_121_000, 1.5, True]),
        ),
    )
)
def test_native_fields_answer_as_the_model_does(obj: dict[str, Any]) -> None:
    obj = orjson.loads(json.dumps(obj))  # the types orjson makes (a huge int is a float), as decoding sees
    assert outcome(native_fields, obj) == outcome(reference_native_fields, obj)


@PROPERTY
@given(json_values)
def test_what_is_shallow_is_within_the_nesting_limit(value: Any) -> None:
    if processors.decode._shallow(value):
        assert nesting_depth(value) <= 2 <= MAX_NESTING


@PROPERTY
@given(
    st.dictionaries(st.one_of(signal_names, st.text(min_size=60, max_size=70)), signal_values, max_size=12),
    st.integers(min_value=0, max_value=14),
    st.sampled_from([16, 127, 128, 200, 4096]),
)
def test_within_bounds_only_where_bound_signals_keeps_everything(
    signals: dict[str, Any], max_signals: int, max_value_bytes: int
) -> None:
    bounds = SignalBounds(max_signals=max_signals, max_value_bytes=max_value_bytes)
    if within_bounds(signals, bounds):
        assert bound_signals(signals, bounds) == (signals, 0)


def test_a_producer_s_everyday_records_take_the_shortcuts() -> None:
    """The shortcuts are there for these records: a change that turns them off fails here, not only in
    the benchmark."""
    obj = {
        "vin": VIN,
        "timestamp": "2025-03-05T14:32:01.000Z",
        "signals": {"vehicleSpeed": 73.5, "lat": 39.7, "lng": -104.9, "heading": 90, "shiftState": "D"},
    }
    assert processors.decode._shallow(obj)
    assert native_fields(obj)[2] is obj["signals"]  # read as it is, not copied by the model
    record = Decoder().decode(orjson.dumps(obj), 1_741_185_122_000)
    assert within_bounds(record.signals, SignalBounds())
    assert not within_bounds({"blob": "x" * 700}, SignalBounds())  # escaped, it could exceed 4096 bytes
    assert not within_bounds({"tpms": {"fl": 2.9}}, SignalBounds())


def test_a_location_signal_is_as_small_as_the_shortcut_assumes() -> None:
    widest = Location(-89.12345678901234, -179.12345678901234)
    small: Mapping[str, SignalValue] = {"location": widest, "n": -1.2345678901234567e-125, "m": -(10**38) + 1}
    assert within_bounds(small, SignalBounds(max_value_bytes=128))
    assert bound_signals(small, SignalBounds(max_value_bytes=128)) == (small, 0)


def test_within_bounds_at_the_edge_of_escaped_text() -> None:
    """Around the longest text the shortcut admits, in the costliest characters to encode."""
    for max_value_bytes in (128, 200, 4096):
        bounds = SignalBounds(max_value_bytes=max_value_bytes)
        for length in range(max_value_bytes // 6 - 3, max_value_bytes // 6 + 3):
            for char in ("\x00", "\x1f", '"', "a", "\u00e9"):
                signals = {"note": char * length}
                if within_bounds(signals, bounds):
                    assert bound_signals(signals, bounds) == (signals, 0)
