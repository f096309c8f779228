"""What one record may add to its vehicle's ``vehicle-state`` item: a bounded number of storable values.

DynamoDB refuses an item over 400 KB, and an item gains an attribute for every signal name it is ever
sent: unbounded, unknown names would grow it until every write to the vehicle is refused.

**The policy, and why it needs no read.** A bound on the item's attribute count enforced against the
item ("admit a new name while the item holds fewer than N") would need the item read before every write,
and would make the item depend on arrival order: which names got in first. Instead every bound here is
a function of the one record, so the item stays a function of the set of records applied:

- a record keeps at most ``max_signals`` signals: the known ones first (``KNOWN_SIGNALS``: the canonical
  signals and every Tesla ``Field`` our protos name, ~290, all of them when ``max_signals`` is at least
  that many), then unknown names in name order;
- a value is kept only if DynamoDB can store it (finite numbers of at most 38 digits, no empty map key,
  a name of 1-255 bytes) and its canonical JSON is at most ``max_value_bytes``;
- everything dropped is counted (``signals_dropped``), the rest of the record applies.

So the names an item can hold are the known ones, a fixed vocabulary whose values are small (Tesla
fields are scalars but for a few encoded ones such as ``RouteLine``), plus the unknown names producers
actually send: per record at most ``max_signals`` minus the known ones present. A producer sending
endless distinct unknown names still grows its item; stopping that without a read would take an
allow-list of unknown names, which would drop the unknown signals the native format promises to keep.
Such a vehicle's writes then fail as ``unwritable`` dead letters, one record at a time, never the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processors.signals import CANONICAL_SIGNALS, finite_number
from processors.tesla import TESLA_FIELD_NAMES
from processors.vehicle_state import canonical_bytes
from schemas.records import Location, SignalValue

KNOWN_SIGNALS = CANONICAL_SIGNALS | TESLA_FIELD_NAMES
MAX_NAME_BYTES = 255


@dataclass(frozen=True, slots=True)
class SignalBounds:
    max_signals: int = 300
    max_value_bytes: int = 4096
    """Room for a long Tesla ``RouteLine`` (a few KB of base64), not for a blob in every update of an
    item billed whole."""


def bound_signals(
    signals: Mapping[str, SignalValue], bounds: SignalBounds
) -> tuple[dict[str, SignalValue], int]:
    """The signals kept of one record (see the module docstring), and how many were dropped."""
    kept: dict[str, SignalValue] = {}
    for name in sorted(signals, key=lambda n: (n not in KNOWN_SIGNALS, n)):
        if len(kept) >= bounds.max_signals:
            break
        value = signals[name]
        if not _storable_name(name) or not _storable(value):
            continue
        if len(canonical_bytes(value)) <= bounds.max_value_bytes:
            kept[name] = value
    return kept, len(signals) - len(kept)


_SMALL_VALUE_BYTES = 128
"""More than the canonical JSON of any number, bool or ``Location`` takes (a float is at most 24
characters): below this bound, ``within_bounds`` leaves every record to ``bound_signals``."""
_SHORT_NAME = MAX_NAME_BYTES // 4
"""Characters of a name that fit ``MAX_NAME_BYTES`` whatever they are (UTF-8: at most 4 bytes each)."""


def within_bounds(signals: Mapping[str, SignalValue], bounds: SignalBounds) -> bool:
    """True when ``bound_signals`` would keep every signal, decided with cheap checks: at most
    ``max_signals`` signals, short names, and values that are finite numbers, bools, locations or ASCII
    text short enough that even escaped (6 bytes a character) it fits ``max_value_bytes``. That is
    nearly every record, which then skips sorting, encoding and measuring its values. False means
    only "look closer" (``bound_signals``); tests/unit/test_decode_fast_path.py holds the two together.
    """
    if len(signals) > bounds.max_signals or bounds.max_value_bytes < _SMALL_VALUE_BYTES:
        return False
    longest_text = (bounds.max_value_bytes - 2) // 6
    for name, value in signals.items():
        if type(name) is not str or not 0 < len(name) <= _SHORT_NAME:
            return False
        kind = type(value)
        if type(value) is float:  # finite_number's bounds, inline: most values are floats
            if not (value == 0 or 1e-130 <= abs(value) < 1e126):
                return False
        elif kind is int:
            if finite_number(value) is None:
                return False
        elif type(value) is str:
            if len(value) > longest_text or not value.isascii():
                return False
        elif kind is not bool and kind is not Location:
            return False
    return True


def _storable_name(name: str) -> bool:
    return 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES


def _storable(value: Any) -> bool:
    """DynamoDB can hold it: every number within its range, every map key non-empty. Iterative: a value
    is at most 30 levels deep by now, but this must not be the place that finds out otherwise."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, bool | str | Location) or node is None:
            continue
        if isinstance(node, int | float):
            if finite_number(node) is None:
                return False
        elif isinstance(node, Mapping):
            if any(not isinstance(key, str) or not key for key in node):
                return False
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        else:
            return False
    return True
