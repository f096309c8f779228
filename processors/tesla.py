"""Tesla Fleet Telemetry vehicle data (the ``Payload`` message), protobuf or protojson -> ``TelemetryRecord``.

Both formats are first reduced to (Tesla field name, plain value) pairs and then share one mapping onto the
canonical signals, so a datum gives the same signals whichever way it travelled. Records are deltas and may
carry a single datum. A datum without a usable value (``invalid``, null, ``{}``, NaN, text where a number
belongs, an unknown or unset gear) is skipped, never zeroed: the rest of the record still applies.

Protobuf parsing is permissive: an alerts or errors message, and even random bytes, can parse as a
``Payload``. So bytes count as vehicle data only in the shape a server writes: no unknown fields on the
payload or its datums, and at least one datum keyed above ``Unknown`` (0). A datum keyed ``Unknown`` is
skipped, as protojson's ``"key": 0`` is: the empty datum is also exactly the bytes of an empty alert, so
a payload of nothing else is not taken for vehicle data, but next to a keyed datum it is just skipped.
A datum whose ``Value`` has no member set is kept as a datum without a usable value, as in protojson
(``"value": {}``).

Everything that can be computed from the compiled protos is computed once, at import.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from pydantic import ValidationError
from tesla_protocol.telemetry.vehicle_alert_pb2 import VehicleAlerts
from tesla_protocol.telemetry.vehicle_connectivity_pb2 import VehicleConnectivity
from tesla_protocol.telemetry.vehicle_data_pb2 import Field, Payload, ShiftState, Value
from tesla_protocol.telemetry.vehicle_error_pb2 import VehicleErrors

from processors.errors import InvalidRecord, RejectReason, schema_detail
from processors.signals import assemble, finite_number, normalize_vin, parse_event_time, valid_location
from schemas.records import TelemetryRecord, TeslaPayloadJson

Plain = Any
"""A datum's value once out of its format: str, int, float, bool, an enum value's name, a dict (message
values), a (latitude, longitude) tuple, or None for "no usable value"."""
Converter = Callable[[Any], Plain]

NUMERIC_FIELDS = {
    "VehicleSpeed": "vehicleSpeed",
    "GpsHeading": "heading",
    "Odometer": "odometer",
    "BatteryLevel": "batteryLevel",
    "EstBatteryRange": "batteryRange",
}
"""Tesla fields that are canonical numeric signals. ``Soc`` also feeds ``batteryLevel`` when ``BatteryLevel``
is absent; ``Location`` becomes ``location`` and ``Gear`` becomes ``shiftState``."""

_FIELD_NAMES: dict[int, str] = {number: name for name, number in Field.items() if number > 0}
TESLA_FIELD_NAMES = frozenset(_FIELD_NAMES.values())
_JSON_KEYS: dict[str | int, str] = {k: name for number, name in _FIELD_NAMES.items() for k in (number, name)}
"""A protojson key that names a field we know: its name, or its number when the server lacked it."""
_FIELD_LIKE = re.compile(r"[A-Z][A-Za-z0-9_]{0,99}")
"""A field name our protos lack (the server's are newer). Canonical signal names start lower-case, so a
name of this shape can never overwrite one."""

_SHIFT_STATES = {
    spelling: short
    for state in ShiftState.DESCRIPTOR.values
    if (short := state.name.removeprefix("ShiftState")) not in ("Unknown", "Invalid")
    for spelling in (state.name, short)
}
"""``ShiftStateD`` and ``D`` -> ``D``; unknown and invalid states are no gear at all."""

_FLOAT32 = struct.Struct("<f")


def _json_field_name(key: str | int) -> str | None:
    """A key that is not in ``_JSON_KEYS``: a number or a name our protos lack. ``Unknown`` (0), negative
    numbers and odd names are skipped."""
    if isinstance(key, int):
        return f"Field{key}" if key > 0 else None
    return key if key != "Unknown" and _FIELD_LIKE.fullmatch(key) else None


def _same(value: Plain) -> Plain:
    return value


def _nothing(_: object) -> None:
    return None


def _shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as this float32: the number protojson prints for it."""
    if math.isfinite(value):
        for digits in range(1, 10):
            candidate = float(f"{value:.{digits}g}")
            try:
                if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == value:
                    return candidate
            except OverflowError:
                continue
    return value


def _json_float(raw: object) -> float | None:
    """protojson writes floats as numbers or "NaN"/"Infinity"/"-Infinity"; readers accept numeric strings."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        return float(raw)
    except (ValueError, OverflowError):
        return None


def _json_int(raw: object) -> int | None:
    """protojson writes int64 as a string and int32 as a number (readers also accept "1e3")."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = int(raw)
        except ValueError:
            raw = _json_float(raw)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    return raw if isinstance(raw, int) and -(2**63) <= raw < 2**63 else None


def _json_string(raw: object) -> str | None:
    return raw if isinstance(raw, str) else None


def _json_bool(raw: object) -> bool | None:
    return raw if isinstance(raw, bool) else None


def _json_location(raw: object) -> tuple[float, float] | None:
    """Zero coordinates are omitted by protojson; an unreadable one is NaN, so the location is dropped."""
    if not isinstance(raw, dict):
        return None
    lat, lng = _json_float(raw.get("latitude", 0.0)), _json_float(raw.get("longitude", 0.0))
    return (math.nan if lat is None else lat, math.nan if lng is None else lng)


def _enum_converters(names: dict[int, str]) -> tuple[Converter, Converter]:
    """Values come out as the value's full name (``ChargeStateCharging``). JSON may also carry the short
    name (``Charging``) or the number; a value we do not know stays as it came."""
    spellings = {name: name for name in names.values()}
    zero = names.get(0, "")
    if zero.endswith("Unknown"):
        prefix = zero.removesuffix("Unknown")
        spellings.update({name.removeprefix(prefix): name for name in names.values()})

    def from_protobuf(number: int) -> str | int:
        return names.get(number, number)

    def from_json(raw: object) -> str | int | None:
        if isinstance(raw, str):
            return spellings.get(raw, raw)
        if isinstance(raw, int) and not isinstance(raw, bool) and -(2**31) <= raw < 2**31:  # enums are int32
            return names.get(raw, raw)
        return None

    return from_protobuf, from_json


def _message_converters(fields: Iterable[tuple[str, str, type]]) -> tuple[Converter, Converter]:
    """Door, time and tire values: a dict of the fields that are set (not false or 0, as protobuf keeps
    them), under their JSON names. ``fields``: (proto name, JSON name, bool or int)."""
    specs: dict[str, tuple[str, type]] = {}
    for name, json_name, kind in fields:
        specs[name] = specs[json_name] = (json_name, kind)

    def from_protobuf(message: Message) -> dict[str, Any]:
        return {field.json_name: value for field, value in message.ListFields()}

    def from_json(raw: object) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            return None
        return {
            spec[0]: value
            for key, value in raw.items()
            if (spec := specs.get(key)) is not None and type(value) is spec[1] and value
        }

    return from_protobuf, from_json


def _value_converters() -> tuple[dict[str, Converter], dict[str, Converter]]:
    """Per ``Value`` member: protobuf member name -> converter, and JSON or proto name -> converter."""
    scalars: dict[str, tuple[Converter, Converter]] = {
        "string_value": (_same, _json_string),
        "int_value": (_same, _json_int),
        "long_value": (_same, _json_int),
        "float_value": (_shortest_float32, _json_float),
        "double_value": (_same, _json_float),
        "boolean_value": (_same, _json_bool),
        "location_value": (lambda location: (location.latitude, location.longitude), _json_location),
        "invalid": (_nothing, _nothing),
    }
    from_protobuf: dict[str, Converter] = {}
    from_json: dict[str, Converter] = {}
    for member in Value.DESCRIPTOR.oneofs_by_name["value"].fields:
        if member.name in scalars:
            pair = scalars[member.name]
        elif member.enum_type is not None:
            pair = _enum_converters({value.number: value.name for value in member.enum_type.values})
        elif member.message_type is not None:
            fields = member.message_type.fields
            pair = _message_converters(
                (f.name, f.json_name, bool if f.type == FieldDescriptor.TYPE_BOOL else int) for f in fields
            )
        else:  # a scalar member added after this module was written: skipped until it is mapped
            pair = (_nothing, _nothing)
        from_protobuf[member.name] = pair[0]
        from_json[member.name] = from_json[member.json_name] = pair[1]
    return from_protobuf, from_json


_FROM_PROTOBUF, _FROM_JSON = _value_converters()


def _number(value: Plain) -> float | int | None:
    """A canonical numeric signal: numbers, or a number in a string (how many fields arrive)."""
    return finite_number(_json_float(value) if isinstance(value, str) else value)


def _shift_state(value: Plain) -> str | None:
    return _SHIFT_STATES.get(value) if isinstance(value, str) else None


_NOT_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})


def _other_signal(value: Plain) -> Plain:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and value.strip() in _NOT_FINITE:
        return None  # a number the vehicle could not measure, whichever member carried it
    if isinstance(value, tuple):
        location = valid_location(*value)
        return None if location is None else {"lat": location.lat, "lng": location.lng}
    return value


def _record(
    vin: str, event_time_ms: int, datums: Iterable[tuple[str, Plain]], format_: str
) -> TelemetryRecord:
    pairs: list[tuple[str, Any]] = []
    soc: float | int | None = None
    for name, value in datums:
        if value is None:
            continue
        signal = NUMERIC_FIELDS.get(name)
        if signal is not None:
            pairs.append((signal, _number(value)))
        elif name == "Location":
            if isinstance(value, tuple):
                pairs += (("lat", value[0]), ("lng", value[1]))
        elif name == "Gear":
            pairs.append(("shiftState", _shift_state(value)))
        elif name == "Soc":
            soc = _number(value)
        else:
            pairs.append((name, _other_signal(value)))
    if soc is not None:
        pairs.insert(0, ("batteryLevel", soc))  # first, so that a BatteryLevel in the same record wins
    signals, dropped = assemble(vin, pairs)
    return TelemetryRecord(vin, event_time_ms, signals, format_, dropped)


def _no_data() -> InvalidRecord:
    return InvalidRecord(RejectReason.SCHEMA_VIOLATION, "payload carries no data")


def decode_tesla_json(obj: dict[str, Any], arrival_ms: int) -> TelemetryRecord:
    """A protojson ``Payload``. Without ``createdAt`` the vehicle sent no time: the stream's clock is used."""
    try:
        payload = TeslaPayloadJson.model_validate(obj)
    except ValidationError as error:
        raise InvalidRecord(RejectReason.SCHEMA_VIOLATION, schema_detail(error)) from None
    vin = normalize_vin(payload.vin)
    if not payload.data:
        raise _no_data()
    created_ms = None if payload.created_at is None else parse_event_time(payload.created_at)
    event_time_ms = _event_time(created_ms, arrival_ms, bool(payload.is_resend))
    datums = []
    for datum in payload.data:
        name = _JSON_KEYS.get(datum["key"]) or _json_field_name(datum["key"])
        value = datum.get("value")
        if name is None or not value or len(value) != 1:
            continue
        [(member, raw)] = value.items()
        convert = _FROM_JSON.get(member)
        if convert is not None:
            datums.append((name, convert(raw)))
    return _record(vin, event_time_ms, datums, "tesla_json")


def decode_tesla_protobuf(data: bytes, arrival_ms: int) -> TelemetryRecord:
    """A serialized ``Payload``; anything else is ``unsupported_record_type`` or ``unknown_format``."""
    try:
        payload = Payload.FromString(data)
    except DecodeError:
        raise _not_vehicle_data(data) from None
    if UnknownFieldSet(payload):
        raise _not_vehicle_data(data)
    datums = []
    keyed = False
    for datum in payload.data:
        if UnknownFieldSet(datum):
            raise _not_vehicle_data(data)
        key = datum.key
        if key <= 0:
            continue  # Unknown (or a negative number): skipped, as in protojson
        keyed = True
        value = datum.value
        member = value.WhichOneof("value")
        if member is not None:
            name = _FIELD_NAMES.get(key) or f"Field{key}"
            datums.append((name, _FROM_PROTOBUF[member](getattr(value, member))))
    if not payload.data:
        # Also exactly the bytes of an alerts or errors message with no items.
        raise _no_data() if _is_vin(payload.vin) else _not_vehicle_data(data)
    if not keyed:
        raise _not_vehicle_data(data)
    vin = normalize_vin(payload.vin)
    created_ms = None
    if payload.HasField("created_at"):
        created = payload.created_at
        created_ms = created.seconds * 1000 + created.nanos // 1_000_000
    return _record(vin, _event_time(created_ms, arrival_ms, payload.is_resend), datums, "tesla_protobuf")


def _event_time(created_ms: int | None, arrival_ms: int, is_resend: bool) -> int:
    """The vehicle's time; without one, the stream's (a clock ahead is clamped to it later).

    A resend repeats changes sent earlier, so it is only idempotent at the vehicle's own time. Placed
    at its (later) arrival instead, old values would win over newer ones in last-writer-wins state, and
    a resent location would become a second breadcrumb: such a resend is quarantined (redrivable).
    """
    if created_ms is None:
        if is_resend:
            raise InvalidRecord(RejectReason.TIMESTAMP_OUT_OF_RANGE, "resend without a vehicle time")
        return arrival_ms
    if is_resend and created_ms > arrival_ms:
        raise InvalidRecord(RejectReason.TIMESTAMP_OUT_OF_RANGE, "resend stamped ahead of the stream's clock")
    return created_ms


_OTHER_RECORD_TYPES = (
    (VehicleAlerts, "alerts", "alerts"),
    (VehicleErrors, "errors", "errors"),
    (VehicleConnectivity, "connection_id", "connectivity"),
)


def _not_vehicle_data(data: bytes) -> InvalidRecord:
    """Bytes that are no vehicle-data ``Payload``: another Tesla record type (with a VIN and its own
    content), or nothing we know.

    These messages can parse as one another (an errors message often reads as alerts), so a type that
    explains every byte is preferred; one with unknown fields still counts (its protos may be newer).
    """
    matches = []
    for message, marker, record_type in _OTHER_RECORD_TYPES:
        try:
            parsed = message.FromString(data)
        except DecodeError:
            continue
        if getattr(parsed, marker) and _is_vin(parsed.vin):
            matches.append((_has_unknown_fields(parsed), record_type))
    if matches:
        record_type = min(matches, key=lambda match: match[0])[1]
        return InvalidRecord(RejectReason.UNSUPPORTED_RECORD_TYPE, f"tesla {record_type} record")
    return InvalidRecord(RejectReason.UNKNOWN_FORMAT, "not a JSON object, nor a Tesla vehicle-data Payload")


def _has_unknown_fields(message: Message) -> bool:
    if UnknownFieldSet(message):
        return True
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        if any(_has_unknown_fields(item) for item in (value if field.is_repeated else [value])):
            return True
    return False


def _is_vin(raw: str) -> bool:
    try:
        normalize_vin(raw)
    except InvalidRecord:
        return False
    return True
