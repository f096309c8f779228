"""``vehicle-state``: the latest known value of every signal, per vehicle.

Producers send deltas, so each signal is its own last-writer-wins register ordered by
(event time, canonical value). That merge is commutative, associative and idempotent: the item is a
function of the *set* of records applied, whatever the batching, order, duplicates or replays.

Item shape (compact: DynamoDB bills every write on the whole item, names included)::

    {"pseudoVin": "4f0c...", "ts": 1741185121000,          # epoch ms of the newest record applied
     "v": [73.5, 1741185121000],                           # vehicleSpeed: [value, event time ms]
     "l": [[39.73, -104.99], 1741185120000],               # location: [[lat, lng], ...]
     "t6": [398.5, 1741185121000], "~tirePsi": [...], ...} # Tesla PackVoltage; an unknown signal

One top-level attribute per signal, named by ``schemas.signal_codes`` (one letter for our canonical
signals, ``t{field number}`` for a Tesla field, ``~{name}`` for anything else), holding ``[value, atMs]``.
Readers decode with ``stored_observations`` or ``named_item`` (names, ISO times, ``{"lat", "lng"}``).

Pure: ``coalesce``, ``chunks`` and ``outstanding`` (the DynamoDB request is built in
``worker/stores/dynamo_vehicle_state.py``). The store is the
``processors.ports.VehicleStateWriter`` port; its adapter (``worker.stores.dynamo_vehicle_state``) writes
one conditional ``UpdateItem`` per vehicle per batch; the condition (each signal strictly newer) makes the
common case a single blind write, and a failed condition returns the stored item so the exact remainder
is retried.

**Chunks.** A condition holds one clause per signal, and DynamoDB refuses an expression over 4 KB or
300 operators: one request for a Tesla snapshot after a reconnect (up to ~270 fields) would be refused
as invalid. So an update of more than ``CHUNK_SIGNALS`` signals is written as several requests of at most
that many signals each. That is safe because every signal is its own register: each chunk's condition
only guards its own signals, a failed condition is resolved per chunk against the item it returns, and
the item's ``ts`` (newest record applied) is written by the last chunk only, once the others are
stored. A crash between chunks leaves some registers at their new values and the rest at older ones;
the redelivery writes the rest and finds the written ones already current. Every register converges to
the same winner whatever the cut, so the item is still a function of the set of records applied (a
reader may meanwhile see a record half applied, as it may see one vehicle's batch half applied).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.signals import format_time
from schemas.records import Location, SignalValue, VehicleReading
from schemas.signal_codes import RESERVED_ATTRIBUTES, decode, is_code


@dataclass(frozen=True, slots=True)
class Observation:
    at_ms: int
    value: SignalValue

    def beats(self, other: Observation) -> bool:
        """Later wins; at the same time, the greater canonical value (serialized only to break a tie),
        so that which of two equal-time readings wins never depends on arrival order."""
        if self.at_ms != other.at_ms:
            return self.at_ms > other.at_ms
        return canonical_bytes(self.value) > canonical_bytes(other.value)


CHUNK_SIGNALS = 40
"""Signals per ``UpdateItem``. Each signal costs at most 4 operators (``attribute_not_exists``, ``OR``,
``<``, ``AND``) and ~52 bytes of condition (``(attribute_not_exists(#s9) OR #s9[1] < :t9) AND ``), so a
chunk stays near half of DynamoDB's 300 operators and 4 KB per expression (tested), and a 270-field
snapshot takes 7 requests. The common delta, a handful of signals, stays one request."""


@dataclass(slots=True)
class StateUpdate:
    pseudo_vin: str
    timestamp_ms: int
    signals: dict[str, Observation] = field(default_factory=dict)
    sets_timestamp: bool = True
    """False for all but the last chunk of an update: the item's ``ts`` moves once all is stored."""

    def absorb(self, reading: VehicleReading) -> None:
        at_ms = reading.event_time_ms
        self.timestamp_ms = max(self.timestamp_ms, at_ms)
        signals = self.signals
        for name, value in reading.signals.items():
            current = signals.get(name)
            # ``beats``, its usual answer (a later reading) first: no allocation for one that loses.
            if current is None or at_ms > current.at_ms:
                signals[name] = Observation(at_ms, value)
            elif at_ms == current.at_ms and (candidate := Observation(at_ms, value)).beats(current):
                signals[name] = candidate


def unchanged(observation: Observation, known: Observation) -> bool:
    """``observation`` moves nothing of a register known to hold ``known`` but its time: it does not beat
    it (the store keeps the newer), or it holds the same value. Same type and ``==``: a value equal only
    across types (``1`` and ``True``) counts as a change, which is the safe side (written sooner)."""
    if not observation.beats(known):
        return True
    value, held = observation.value, known.value
    return type(value) is type(held) and value == held


def canonical_bytes(value: Any) -> bytes:
    """A total order for equal-time ties that does not depend on how the value was stored."""
    return orjson.dumps(_canonical(value), option=orjson.OPT_SORT_KEYS)


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Location):
        return {"lat": value.lat, "lng": value.lng}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return str(value)


def coalesce(readings: Iterable[VehicleReading]) -> dict[str, StateUpdate]:
    """One update per vehicle holding, per signal, the winning observation among ``readings``."""
    updates: dict[str, StateUpdate] = {}
    for reading in readings:
        update = updates.get(reading.pseudo_vin)
        if update is None:
            update = updates[reading.pseudo_vin] = StateUpdate(reading.pseudo_vin, reading.event_time_ms)
        update.absorb(reading)
    return updates


def chunks(update: StateUpdate, size: int = CHUNK_SIGNALS) -> list[StateUpdate]:
    """``update`` as requests of at most ``size`` signals each (see the module docstring); just
    ``update`` when it fits in one. Signals go in name order, so a replay cuts the same chunks."""
    if len(update.signals) <= size:
        return [update]
    names = sorted(update.signals)
    parts = [names[i : i + size] for i in range(0, len(names), size)]
    return [
        StateUpdate(
            update.pseudo_vin,
            update.timestamp_ms,
            {name: update.signals[name] for name in part},
            sets_timestamp=update.sets_timestamp and last,
        )
        for last, part in ((i == len(parts) - 1, part) for i, part in enumerate(parts))
    ]


LOCATION = "location"


def stored_value(name: str, value: SignalValue) -> Any:
    """A signal value as the item holds it: the ``location`` as ``[lat, lng]``, anything else as it is
    (decoding builds ``location`` only from lat/lng, so it is always a ``Location``; one in another signal
    is stored as the map ``{"lat", "lng"}``, which orders equal-time ties as the ``Location`` does)."""
    if name == LOCATION and isinstance(value, Location):
        return [value.lat, value.lng]
    return value


def _observation(name: str, stored: Any) -> Observation | None:
    """``[value, atMs]`` as read back (``from_item``), or None for an attribute of another shape."""
    if not (isinstance(stored, list) and len(stored) == 2 and type(stored[1]) is int):
        return None
    value, at_ms = stored
    if name == LOCATION:
        if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
            return None
        return Observation(at_ms, Location(float(value[0]), float(value[1])))
    return Observation(at_ms, value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def stored_observations(item: Mapping[str, Any]) -> tuple[int | None, dict[str, Observation]]:
    """Decode a stored item (plain values, see ``from_item``) into its ``ts`` and observations by signal
    name. Attributes that are not a code holding ``[value, atMs]`` are not signals and are left out."""
    ts = item.get("ts")
    observations: dict[str, Observation] = {}
    for attribute, stored in item.items():
        if attribute in RESERVED_ATTRIBUTES or not is_code(attribute):
            continue
        name = decode(attribute)
        observation = _observation(name, stored)
        if observation is not None:
            observations[name] = observation
    return (ts if type(ts) is int else None), observations


def named_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A stored item (plain values) as people and tests read it: ``pseudoVin``, ``timestamp`` (ISO) and,
    per signal name, ``{"value": ..., "at": ISO}``, a location's value as ``{"lat": ..., "lng": ...}``."""
    ts, observations = stored_observations(item)
    named: dict[str, Any] = {}
    if "pseudoVin" in item:
        named["pseudoVin"] = item["pseudoVin"]
    if ts is not None:
        named["timestamp"] = format_time(ts)
    for name, obs in sorted(observations.items()):
        value = obs.value
        if isinstance(value, Location):
            value = {"lat": value.lat, "lng": value.lng}
        named[name] = {"value": value, "at": format_time(obs.at_ms)}
    return named


def outstanding(update: StateUpdate, item: Mapping[str, Any]) -> StateUpdate | None:
    """What of ``update`` still beats the stored ``item``; None when the item already reflects it all."""
    stored_ts, stored = stored_observations(item)
    winners = {
        name: obs for name, obs in update.signals.items() if name not in stored or obs.beats(stored[name])
    }
    newer = update.sets_timestamp and (stored_ts is None or update.timestamp_ms > stored_ts)
    if not winners and not newer:
        return None
    timestamp = update.timestamp_ms if newer or stored_ts is None else stored_ts
    return StateUpdate(update.pseudo_vin, timestamp, winners, sets_timestamp=newer)
