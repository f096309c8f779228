"""Canonical signals shared by every producer format: names, types, VIN hygiene and time handling."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from processors.errors import InvalidRecord, RejectReason
from schemas.records import Location, SignalValue

NUMERIC_SIGNALS = frozenset(
    {"vehicleSpeed", "heading", "odometer", "batteryLevel", "batteryRange", "lat", "lng"}
)
STRING_SIGNALS = frozenset({"shiftState"})
CANONICAL_SIGNALS = (NUMERIC_SIGNALS - {"lat", "lng"}) | STRING_SIGNALS | {"location", "soc"}
"""Signal names as stored: lat/lng become ``location``; ``soc`` is Tesla's BMS state of charge."""
RESERVED_NAMES = frozenset({"pseudoVin", "timestamp", "vin", "location"})
"""Item attributes of ``vehicle-state``, and ``location`` which decoding builds from lat/lng."""

VIN_PATTERN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
"""17 characters: digits and capital letters except I, O and Q."""
_VIN_RUN = re.compile(r"[A-HJ-NPR-Z0-9]{17,}")
_ONE_CASE_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:[A-HJ-NPR-Z0-9]{17}|[a-hj-npr-z0-9]{17})(?![A-Za-z0-9])")
"""17 VIN characters in one case, not part of a longer run of letters and digits."""
ENCODED_SIGNALS = frozenset({"RouteLine"})
"""Tesla fields whose value is base64 of a protobuf (``RouteLine``: the navigation route)."""
VIN_MIN_DIGITS = 3
"""A VIN ends in a numeric serial (ISO 3779), so it holds digits; camel-case field and enum names such
as ``SemitruckTpmsPressureRe1L0`` or ``PassengerSeatBelt`` hold at most two."""
_WHITESPACE = re.compile(r"\s+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def normalize_vin(raw: str) -> str:
    """Strip and upper-case, then validate. The VIN itself never appears in the error."""
    vin = raw.strip().upper()
    if len(vin) != 17:
        raise InvalidRecord(RejectReason.INVALID_VIN, f"length {len(vin)}, expected 17")
    if not VIN_PATTERN.fullmatch(vin):
        raise InvalidRecord(RejectReason.INVALID_VIN, "character outside the VIN alphabet")
    return vin


def mentions_vin(value: Any, vin: str) -> bool:
    """True when a (possibly nested) value may hold a VIN: this record's, in any case or spacing; any
    other VIN (a paired trailer's), as it can really occur; or a value that is one spaced-out VIN.

    Such a signal is dropped at the boundary: an identifier smuggled in a telemetry field is still a VIN.
    "As it can really occur": VINs are upper case, so a run of upper-case VIN characters is one wherever
    it sits (``car_1HGCM82633A004352``, ``X1HGCM82633A004352``); a producer that lower-cased one wrote it
    all in one case, and as a token of its own (``paired 1hgcm82633a004352!``). A mixed-case run inside
    longer letters and digits is encoded data, not a VIN: upper-casing it first made about one base64
    value in ten look like one. Either way a VIN-shaped run mixes letters with at least three digits.
    An unknown signal holding a long upper-case opaque id is still dropped.
    """
    if isinstance(value, str):
        if len(value) < 17:  # most names and values: too short to hold a VIN, even before squeezing
            return False
        if any(_vin_shaped(run) for run in _VIN_RUN.findall(value)):
            return True
        if any(_vin_shaped(token.upper()) for token in _ONE_CASE_TOKEN.findall(value)):
            return True
        squeezed = _WHITESPACE.sub("", value).upper()
        return vin in squeezed or (VIN_PATTERN.fullmatch(squeezed) is not None and _vin_shaped(squeezed))
    if isinstance(value, dict):
        return any(mentions_vin(k, vin) or mentions_vin(v, vin) for k, v in value.items())
    if isinstance(value, list):
        return any(mentions_vin(v, vin) for v in value)
    return False


def signal_mentions_vin(name: str, value: Any, vin: str) -> bool:
    """``mentions_vin`` for one signal. An encoded signal (``ENCODED_SIGNALS``) is looked at as what
    it encodes: random bytes in base64 are letters and digits in every mix, while a VIN hidden in the
    encoding shows in the decoded bytes. Not base64 after all, its text is looked at as any other."""
    if mentions_vin(name, vin):
        return True
    if name in ENCODED_SIGNALS and isinstance(value, str):
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return mentions_vin(value, vin)
        return mentions_vin(decoded.decode("latin-1"), vin)
    return mentions_vin(value, vin)


def _vin_shaped(run: str) -> bool:
    """Some 17 consecutive characters of ``run`` (VIN alphabet only) mix letters with at least
    ``VIN_MIN_DIGITS`` digits: any fleet's VIN, even inside a longer token (``car_1HGCM82633A004352``)."""
    for start in range(len(run) - 16):
        digits = sum(c.isdigit() for c in run[start : start + 17])
        if VIN_MIN_DIGITS <= digits < 17:
            return True
    return False


def finite_number(value: object) -> float | int | None:
    """A JSON number that DynamoDB can store, or None (bools are not numbers here).

    DynamoDB keeps 38 significant digits between 1E-130 and 1E+126 in magnitude; anything else would
    make the whole item write fail.
    """
    if type(value) is float:  # the hot path: NaN and the infinities fail both comparisons
        return value if value == 0 or 1e-130 <= abs(value) < 1e126 else None
    if type(value) is int:
        return value if -_INT_LIMIT < value < _INT_LIMIT else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value if abs(value) < _INT_LIMIT else None
    if not math.isfinite(value) or not (value == 0 or 1e-130 <= abs(value) < 1e126):
        return None
    return value


_INT_LIMIT = 10**38


def valid_location(lat: object, lng: object) -> Location | None:
    """A location on the map, or None. Exactly (0, 0) is "no fix": an empty protobuf ``LocationValue``
    reads as it, and a receiver without a fix reports it; no vehicle drives to that spot at sea."""
    if type(lat) is float and type(lng) is float:  # the usual case (NaN fails every comparison)
        on_map = -90 <= lat <= 90 and -180 <= lng <= 180 and not (lat == 0 and lng == 0)
        if on_map and (lat == 0 or abs(lat) >= 1e-130) and (lng == 0 or abs(lng) >= 1e-130):
            return Location(lat, lng)
        return None
    lat_n, lng_n = finite_number(lat), finite_number(lng)
    if lat_n is None or lng_n is None or not (-90 <= lat_n <= 90 and -180 <= lng_n <= 180):
        return None
    if lat_n == 0 and lng_n == 0:
        return None
    return Location(float(lat_n), float(lng_n))


def assemble(vin: str, pairs: Iterable[tuple[str, Any]]) -> tuple[dict[str, SignalValue], bool]:
    """Build canonical signals from (name, value) pairs already typed by the format decoder.

    Returns the signals and whether a location had to be dropped (``invalid_coordinates``).
    lat/lng become one ``location`` signal so that they always change together.
    """
    signals: dict[str, SignalValue] = {}
    lat: Any = None
    lng: Any = None
    for name, value in pairs:
        if value is None:
            continue
        kind = type(value)
        if (kind is float or kind is int) and (len(name) < 17 or _name_holds_no_vin(name, vin)):
            # Most signals: a number under a name that holds no VIN. The same steps as below, without
            # the VIN search, which cannot find anything in either.
            if name == "lat":
                lat = value
            elif name == "lng":
                lng = value
            elif name not in RESERVED_NAMES and finite_number(value) is not None:
                signals[name] = value
            continue
        if name == "lat":
            lat = value
        elif name == "lng":
            lng = value
        elif name in RESERVED_NAMES or (
            not _mentions_no_vin(name, value, vin) and signal_mentions_vin(name, value, vin)
        ):
            continue
        elif isinstance(value, int | float) and not isinstance(value, bool) and finite_number(value) is None:
            continue  # an unknown signal DynamoDB could not store
        else:
            signals[name] = value
    dropped = False
    if lat is not None or lng is not None:
        location = valid_location(lat, lng)
        if location is None:
            dropped = True
        else:
            signals["location"] = location
    return signals, dropped


def _mentions_no_vin(name: str, value: Any, vin: str) -> bool:
    """``signal_mentions_vin`` is False, known without its full search: the value is a number, a bool
    or a text under 17 characters (an encoded one decodes shorter still), and the name is as short or
    holds no run of VIN characters (``_name_holds_no_vin``). Most signals of most records are such;
    False means only "search it"."""
    kind = type(value)
    if not (kind is float or kind is int or kind is bool or (kind is str and len(value) < 17)):
        return False
    return len(name) < 17 or _name_holds_no_vin(name, vin)


def _name_holds_no_vin(name: str, vin: str) -> bool:
    """``mentions_vin(name, vin)`` is False for this VIN-shaped ``vin``: every way that finds a VIN needs
    17 VIN characters in a row once spaces are squeezed out and letters upper-cased. Whether a name has
    such a run does not depend on the VIN, so it is remembered per name: a vehicle sends the same long
    field names (``LongitudinalAcceleration``) in every record."""
    return _no_vin_run(name) and VIN_PATTERN.fullmatch(vin) is not None


@lru_cache(maxsize=4096)
def _no_vin_run(name: str) -> bool:
    return _VIN_RUN.search(_WHITESPACE.sub("", name).upper()) is None


def parse_event_time(value: int | float | str) -> int:
    """ISO-8601 (naive means UTC) or epoch milliseconds -> epoch milliseconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidRecord(RejectReason.SCHEMA_VIOLATION, "timestamp is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return (parsed - _EPOCH) // _MILLISECOND
    if not math.isfinite(value):
        raise InvalidRecord(RejectReason.SCHEMA_VIOLATION, "timestamp is not finite")
    return int(value)


def format_time(epoch_ms: int) -> str:
    """Epoch milliseconds -> ``2025-03-05T14:32:01.123Z`` (fixed width, so strings sort by time)."""
    return f"{_utc_second(epoch_ms // 1000)}.{epoch_ms % 1000:03d}Z"


@lru_cache(maxsize=4096)
def _utc_second(epoch_seconds: int) -> str:
    """Formatting a datetime costs ~2.5 us; a 1 Hz fleet formats the same few seconds over and over."""
    return f"{datetime.fromtimestamp(epoch_seconds, UTC):%Y-%m-%dT%H:%M:%S}"


def parse_time(text: str) -> int:
    """Inverse of :func:`format_time`."""
    return parse_event_time(text)
