"""Decoding: raw Kinesis bytes -> one canonical ``TelemetryRecord``, or ``InvalidRecord`` with a reason.

Pure: no I/O, no clock (the stream's arrival time is passed in). The format is sniffed per record: a JSON
object is native (``signals``) or Tesla protojson (``data``); anything else is tried as a Tesla protobuf
``Payload`` (see ``processors.tesla``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from processors.errors import InvalidRecord, RejectReason, schema_detail
from processors.signals import (
    NUMERIC_SIGNALS,
    STRING_SIGNALS,
    assemble,
    finite_number,
    normalize_vin,
    parse_event_time,
)
from processors.tesla import decode_tesla_json, decode_tesla_protobuf
from schemas.records import NativeRecord, TelemetryRecord

_JSON_WHITESPACE = b" \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"
_FOREIGN_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_OTHER_TESLA_SHAPES = (("alerts", "alerts"), ("errors", "errors"), ("connectionId", "connectivity"))

MAX_NESTING = 32
"""Levels of lists and objects a JSON record may nest, the record itself included: DynamoDB refuses
attribute values nested deeper than 32 levels, and a record two levels (record, ``signals``) above its
values stores each value one level (``{"value", "at"}``) below a top-level attribute."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_record_bytes: int = 65_536
    max_future_skew_ms: int = 24 * 3600 * 1000
    max_event_age_ms: int = 7 * 24 * 3600 * 1000


class Decoder:
    """Turns one record's bytes (our native JSON, Tesla Fleet Telemetry protojson or protobuf) into one
    ``TelemetryRecord``, checked against ``DecodeLimits`` (size, event-time window).

    Guarantees: total, whatever the bytes: it returns a record or raises ``InvalidRecord(reason)``,
    never any other exception; no detail ever echoes a VIN or the payload. Pure and stateless.
    """

    def __init__(self, limits: DecodeLimits | None = None) -> None:
        self.limits = limits or DecodeLimits()

    def decode(self, data: bytes, arrival_ms: int) -> TelemetryRecord:
        """Decode one record. ``arrival_ms`` is the stream's clock, used for the time checks.

        Total: returns a record or raises ``InvalidRecord``, whatever the bytes. An exception nobody
        foresaw becomes ``internal_error`` naming only its type: its message may quote the input (a VIN).
        """
        try:
            return self._decode(data, arrival_ms)
        except InvalidRecord:
            raise
        except Exception as unexpected:  # one bad record must not fail (and stall) the shard
            raise InvalidRecord(RejectReason.INTERNAL_ERROR, type(unexpected).__name__) from None

    def _decode(self, data: bytes, arrival_ms: int) -> TelemetryRecord:
        if len(data) > self.limits.max_record_bytes:
            raise InvalidRecord(
                RejectReason.OVERSIZE, f"{len(data)} bytes > limit {self.limits.max_record_bytes}"
            )
        if data.startswith(_FOREIGN_BOMS):
            raise InvalidRecord(RejectReason.NOT_UTF8, "UTF-16/32 encoded payload")
        text = data.removeprefix(_UTF8_BOM)
        if text.lstrip(_JSON_WHITESPACE)[:1] == b"{":
            record = self._decode_json_text(text, arrival_ms)
        else:
            record = decode_tesla_protobuf(data, arrival_ms)
        return self._within_time_bounds(record, arrival_ms)

    def _decode_json_text(self, text: bytes, arrival_ms: int) -> TelemetryRecord:
        try:
            obj = _parse_json(text)
        except InvalidRecord as not_json:
            if text[:1] == b"{":
                raise
            return _protobuf_after_all(text, arrival_ms, not_json)
        if not _shallow(obj) and nesting_depth(obj, stop_above=MAX_NESTING) > MAX_NESTING:
            raise _too_deep()
        return self._decode_json(obj, arrival_ms)

    def _decode_json(self, obj: Any, arrival_ms: int) -> TelemetryRecord:
        if not isinstance(obj, dict):
            raise InvalidRecord(RejectReason.UNKNOWN_FORMAT, "not a JSON object")
        if "signals" in obj:
            return decode_native(obj)
        if "data" in obj:
            return decode_tesla_json(obj, arrival_ms)
        for marker, record_type in _OTHER_TESLA_SHAPES:
            if marker in obj:
                raise InvalidRecord(RejectReason.UNSUPPORTED_RECORD_TYPE, f"tesla {record_type} record")
        raise InvalidRecord(RejectReason.UNKNOWN_FORMAT, "JSON object of no known shape")

    def _within_time_bounds(self, record: TelemetryRecord, arrival_ms: int) -> TelemetryRecord:
        """Reject impossible times; clamp a vehicle clock running ahead to the stream's clock.

        A record cannot have been produced after Kinesis received it. Left unclamped, a clock minutes
        ahead would make every later, correct reading look stale to last-writer-wins state.
        """
        event = record.event_time_ms
        if event > arrival_ms + self.limits.max_future_skew_ms:
            raise InvalidRecord(RejectReason.TIMESTAMP_OUT_OF_RANGE, "event time too far in the future")
        if event < arrival_ms - self.limits.max_event_age_ms:
            raise InvalidRecord(RejectReason.TIMESTAMP_OUT_OF_RANGE, "event time older than the maximum age")
        if event > arrival_ms:
            return TelemetryRecord(
                record.vin, arrival_ms, record.signals, record.format, record.dropped_location
            )
        return record


def nesting_depth(value: Any, stop_above: int | None = None) -> int:
    """Levels of lists and dicts in ``value`` (a scalar is 0, ``[]`` is 1), measured with an explicit
    stack: a hostile record can nest far deeper than Python may recurse. With ``stop_above``, returns as
    soon as the depth is known to exceed it."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if stop_above is not None and deepest > stop_above:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def _shallow(obj: Any) -> bool:
    """An object whose values are scalars, or lists and objects of scalars: two levels, well within
    ``MAX_NESTING``, as every record a producer really sends is. Checked without ``nesting_depth``'s
    stack; False means only "measure it". orjson makes exactly these types, nothing else counts."""
    if type(obj) is not dict:
        return False
    for value in obj.values():
        if type(value) is dict:
            children: Any = value.values()
        elif type(value) is list:
            children = value
        else:
            continue
        for child in children:
            if type(child) is dict or type(child) is list:
                return False
    return True


def _too_deep() -> InvalidRecord:
    return InvalidRecord(RejectReason.SCHEMA_VIOLATION, f"nested deeper than {MAX_NESTING} levels")


def _bracket_depth(data: bytes) -> int:
    """How deep the brackets of unparseable JSON text go, outside strings: orjson gives up past 1024
    levels with the same error as for broken text, but such a record is too deep before it is broken."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_JSON_STRING.sub(b"", data)):
        depth += 1 if bracket in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def _parse_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRecord(RejectReason.NOT_UTF8, "payload is not valid UTF-8") from None
        if _bracket_depth(data) > MAX_NESTING:
            raise _too_deep() from None
        raise InvalidRecord(RejectReason.MALFORMED_JSON, "payload is not valid JSON") from None


def _protobuf_after_all(data: bytes, arrival_ms: int, not_json: InvalidRecord) -> TelemetryRecord:
    """A protobuf ``Payload`` starts with 0x0A, a newline to JSON; when its first datum is 123 bytes long the
    next byte is ``{``. So bytes that only look like JSON after leading whitespace are also tried as protobuf.
    """
    try:
        return decode_tesla_protobuf(data, arrival_ms)
    except InvalidRecord as error:
        if error.reason is RejectReason.UNKNOWN_FORMAT:
            raise not_json from None
        raise


def decode_native(obj: dict[str, Any]) -> TelemetryRecord:
    raw_vin, timestamp, raw_signals = native_fields(obj)
    vin = normalize_vin(raw_vin)
    event_time_ms = parse_event_time(timestamp)
    for name, value in raw_signals.items():
        if value is None:
            continue
        if name in NUMERIC_SIGNALS and finite_number(value) is None:
            raise InvalidRecord(RejectReason.SCHEMA_VIOLATION, f"signals.{name}: expected a number")
        if name in STRING_SIGNALS and not isinstance(value, str):
            raise InvalidRecord(RejectReason.SCHEMA_VIOLATION, f"signals.{name}: expected a string")
    signals, dropped = assemble(vin, raw_signals.items())
    return TelemetryRecord(vin, event_time_ms, signals, "native", dropped)


_TIMESTAMP_TYPES = (int, float, str)


def native_fields(obj: dict[str, Any]) -> tuple[str, int | float | str, dict[str, Any]]:
    """``NativeRecord``'s fields (vin, timestamp, signals) of a parsed record, or ``schema_violation``.

    A record whose fields already have the exact JSON types the model accepts is read as it is: the
    model would return the same values, for ~1.5 us a record. Anything else goes through the model,
    which accepts or refuses it and names what is wrong (tests/unit/test_decode_fast_path.py holds
    the two to the same answers).
    """
    vin: Any = obj.get("vin")
    timestamp: Any = obj.get("timestamp")
    signals: Any = obj.get("signals")
    if type(vin) is str and type(timestamp) in _TIMESTAMP_TYPES and type(signals) is dict:
        return vin, timestamp, signals
    try:
        native = NativeRecord.model_validate(obj)
    except ValidationError as error:
        raise InvalidRecord(RejectReason.SCHEMA_VIOLATION, schema_detail(error)) from None
    return native.vin, native.timestamp, native.signals
