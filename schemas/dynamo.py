"""Python values <-> DynamoDB attribute values, without Decimal detours.

Floats are written with ``repr`` so that reading an item back yields the very same float: running
aggregates persisted between batches then continue bit-for-bit as if they had never left memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.records import Location

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]


def to_attribute(value: Any) -> AttributeValue:
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, float):
        return {"N": repr(value)}
    if isinstance(value, Location):
        return {"M": {"lat": {"N": repr(value.lat)}, "lng": {"N": repr(value.lng)}}}
    if isinstance(value, Mapping):
        return {"M": {str(k): to_attribute(v) for k, v in value.items() if v is not None}}
    if isinstance(value, list | tuple):
        return {"L": [to_attribute(v) for v in value]}
    if isinstance(value, bytes):
        return {"B": value}
    if value is None:
        return {"NULL": True}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def from_attribute(attribute: AttributeValue) -> Any:
    ((kind, raw),) = attribute.items()
    if kind in {"S", "BOOL", "B"}:
        return raw
    if kind == "N":
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    if kind == "M":
        return {k: from_attribute(v) for k, v in raw.items()}
    if kind == "L":
        return [from_attribute(v) for v in raw]
    if kind == "NULL":
        return None
    raise TypeError(f"unsupported attribute type {kind}")


def to_item(values: Mapping[str, Any]) -> Item:
    """A plain mapping -> a DynamoDB item; ``None`` values are left out."""
    return {k: to_attribute(v) for k, v in values.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: from_attribute(v) for k, v in item.items()}
