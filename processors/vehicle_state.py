"""``vehicle-state``: the latest known value of every signal, per vehicle.

Producers send deltas, so each signal is its own last-writer-wins register ordered by
(event time, canonical value). That merge is commutative, associative and idempotent: the item is a
function of the *set* of records applied, whatever the batching, order, duplicates or replays.

Item shape::

    {"pseudoVin": "4f0c...", "timestamp": "2025-03-05T14:32:01.000Z",      # newest record applied
     "vehicleSpeed": {"value": 73.5, "at": "2025-03-05T14:32:01.000Z"},
     "location": {"value": {"lat": 39.73, "lng": -104.99}, "at": "..."}, ...}

Pure: ``coalesce``, ``chunks``, ``outstanding`` and ``update_request``. The store is the
``processors.ports.VehicleStateWriter`` port; its adapter (``worker.stores.dynamo_vehicle_state``) writes
one conditional ``UpdateItem`` per vehicle per batch; the condition (each signal strictly newer) makes the
common case a single blind write, and a failed condition returns the stored item so the exact remainder
is retried.

**Chunks.** A condition holds one clause per signal, and DynamoDB refuses an expression over 4 KB or
300 operators: one request for a Tesla snapshot after a reconnect (up to ~270 fields) would be refused
as invalid. So an update of more than ``CHUNK_SIGNALS`` signals is written as several requests of at most
that many signals each. That is safe because every signal is its own register: each chunk's condition
only guards its own signals, a failed condition is resolved per chunk against the item it returns, and
the item's ``timestamp`` (newest record applied) is written by the last chunk only, once the others are
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

from processors.signals import format_time, parse_time
from schemas.dynamo import AttributeValue, to_attribute
from schemas.records import Location, SignalValue, VehicleReading


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
``<``, ``AND``) and ~55 bytes of condition, so a chunk stays near half of DynamoDB's 300 operators and
4 KB per expression (tested), and a 270-field snapshot takes 7 requests. The common delta, a handful of
signals, stays one request."""


@dataclass(slots=True)
class StateUpdate:
    pseudo_vin: str
    timestamp_ms: int
    signals: dict[str, Observation] = field(default_factory=dict)
    sets_timestamp: bool = True
    """False for all but the last chunk of an update: the item's ``timestamp`` moves once all is stored."""

    def absorb(self, reading: VehicleReading) -> None:
        at_ms = reading.event_time_ms
        self.timestamp_ms = max(self.timestamp_ms, at_ms)
        for name, value in reading.signals.items():
            candidate = Observation(at_ms, value)
            current = self.signals.get(name)
            if current is None or candidate.beats(current):
                self.signals[name] = candidate


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


def stored_observations(item: Mapping[str, Any]) -> tuple[int | None, dict[str, Observation]]:
    """Decode a stored item (plain values, see ``from_item``) into its timestamp and observations."""
    timestamp = parse_time(item["timestamp"]) if "timestamp" in item else None
    observations = {
        name: Observation(parse_time(attr["at"]), attr["value"])
        for name, attr in item.items()
        if isinstance(attr, dict) and "at" in attr and "value" in attr
    }
    return timestamp, observations


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


def update_request(
    table: str, update: StateUpdate, stored: Mapping[str, AttributeValue] | None
) -> dict[str, Any]:
    """``UpdateItem`` arguments. Without ``stored``: guard that every value is strictly newer.
    With ``stored`` (the item a failed condition returned): guard that nothing touched has changed.
    The item's ``timestamp`` is written (and guarded) only when ``update.sets_timestamp``.
    """
    names: dict[str, str] = {}
    values: dict[str, AttributeValue] = {}
    assignments: list[str] = []
    conditions: list[str] = []
    if update.sets_timestamp:
        names["#ts"] = "timestamp"
        new_ts = format_time(update.timestamp_ms)
        stored_ts = stored.get("timestamp") if stored is not None else None
        if stored is None:
            assignments.append("#ts = :ts")
            conditions.append("(attribute_not_exists(#ts) OR #ts < :ts)")
            values[":ts"] = {"S": new_ts}
        else:
            if stored_ts is None or new_ts > stored_ts["S"]:
                assignments.append("#ts = :ts")
                values[":ts"] = {"S": new_ts}
            conditions.append("#ts = :oldts" if stored_ts is not None else "attribute_not_exists(#ts)")
            if stored_ts is not None:
                values[":oldts"] = stored_ts
    for i, (name, obs) in enumerate(sorted(update.signals.items())):
        names[f"#s{i}"] = name
        at = format_time(obs.at_ms)
        values[f":v{i}"] = {"M": {"value": to_attribute(obs.value), "at": {"S": at}}}
        assignments.append(f"#s{i} = :v{i}")
        if stored is None:
            names["#at"] = "at"
            values[f":t{i}"] = {"S": at}
            conditions.append(f"(attribute_not_exists(#s{i}) OR #s{i}.#at < :t{i})")
        elif name in stored:
            values[f":o{i}"] = stored[name]
            conditions.append(f"#s{i} = :o{i}")
        else:
            conditions.append(f"attribute_not_exists(#s{i})")
    return {
        "TableName": table,
        "Key": {"pseudoVin": {"S": update.pseudo_vin}},
        "UpdateExpression": "SET " + ", ".join(assignments),
        "ConditionExpression": " AND ".join(conditions),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
