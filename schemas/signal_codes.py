"""Signal names <-> the short attribute names ``vehicle-state`` stores them under.

DynamoDB bills a write on the whole item, names included, and Tesla field names average 17 bytes: the
item is smaller, and each update cheaper, with one short code per signal. One table, bijective:

- our canonical signals get one letter (``CANONICAL_CODES``: ``vehicleSpeed`` -> ``v``, ...);
- a Tesla ``Field`` name gets ``t{field number}`` (``PackVoltage`` -> ``t6``): protobuf field numbers are
  the wire identity, stable across proto versions. A field our protos lack arrives named
  ``Field{number}`` and gets the same ``t{number}``, so the item does not fork when the protos learn its
  name (``Field{number}`` of a number the protos do name, or with a leading zero, is just another name);
- anything else gets ``~{name}``.

The item's other attributes, ``pseudoVin`` and ``ts``, and ``m`` (the mark map of the registry), are never
a code: a code is one letter other than ``m`` and ``t``, ``t`` and digits, or starts with ``~``.
"""

from __future__ import annotations

import re
from types import MappingProxyType

from tesla_protocol.telemetry.vehicle_data_pb2 import Field

CANONICAL_CODES = MappingProxyType(
    {
        "vehicleSpeed": "v",
        "location": "l",
        "heading": "h",
        "odometer": "o",
        "batteryLevel": "b",
        "soc": "s",
        "batteryRange": "r",
        "shiftState": "g",
    }
)
"""Every canonical signal (``processors.signals.CANONICAL_SIGNALS``; tested) and its letter."""
RESERVED_ATTRIBUTES = frozenset({"pseudoVin", "ts", "m"})
"""Attribute names that are not signals: the key, the newest record's time, the registry's mark."""
UNKNOWN_PREFIX = "~"
TESLA_PREFIX = "t"

TESLA_FIELD_NUMBERS = MappingProxyType({name: number for name, number in Field.items() if number > 0})
_TESLA_NAMES = {number: name for name, number in TESLA_FIELD_NUMBERS.items()}
_CANONICAL_NAMES = {code: name for name, code in CANONICAL_CODES.items()}
_NUMBER = "[1-9][0-9]*"
_UNNAMED_FIELD = re.compile(f"Field({_NUMBER})")
_TESLA_CODE = re.compile(f"{TESLA_PREFIX}({_NUMBER})")


class UnknownCode(ValueError):
    """An attribute name that is no signal code (``pseudoVin``, ``ts``, or an attribute of another shape)."""


def encode(name: str) -> str:
    """The attribute name of signal ``name``."""
    code = CANONICAL_CODES.get(name)
    if code is not None:
        return code
    number = TESLA_FIELD_NUMBERS.get(name)
    if number is not None:
        return f"{TESLA_PREFIX}{number}"
    unnamed = _UNNAMED_FIELD.fullmatch(name)
    if unnamed is not None and int(unnamed[1]) not in _TESLA_NAMES:
        return f"{TESLA_PREFIX}{unnamed[1]}"
    return UNKNOWN_PREFIX + name


def decode(code: str) -> str:
    """The signal name stored under attribute ``code``; ``UnknownCode`` when it is no code."""
    if code.startswith(UNKNOWN_PREFIX):
        return code[len(UNKNOWN_PREFIX) :]
    name = _CANONICAL_NAMES.get(code)
    if name is not None:
        return name
    tesla = _TESLA_CODE.fullmatch(code)
    if tesla is None:
        raise UnknownCode(code)
    return _TESLA_NAMES.get(int(tesla[1]), f"Field{tesla[1]}")


def is_code(attribute: str) -> bool:
    try:
        decode(attribute)
    except UnknownCode:
        return False
    return True
