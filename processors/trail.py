"""The trail: every accepted record with a trail field, packed into 15 s buckets of ``live-breadcrumbs``.

Pure: the crumb codec, the join, packing into per-bucket merges, the remainder of a failed conditional merge
(what to compare-and-swap), the selection of a trip's rows and the live map's points. The store is a port
(``processors.ports.TrailStore``; ``worker/stores/dynamo_trail.py`` builds its DynamoDB requests).

**A crumb carries no trip label** (proposal §2.1, D3): its bytes are a function of the record alone, so two
writers of the same record (a zombie, a redelivery, the live processor) write the same string, and trip
membership is decided from the span at archive time (``trip_rows``).

**Item**: PK ``pseudoVin``, SK ``bucket`` (epoch s: the bucket's start, a multiple of its span), TTL
``expiresAt``, and one top-level attribute per 10 ms slot: name ``str((t - bucket*1000) // 10)``, value
``f"{t % 10}{999999999 - delay_s:09d}{lat},{lng},{speed},{heading},{odometer},{batteryLevel},{soc}"``
(numbers in their shortest round-trip form, absent fields empty, trailing commas trimmed).

**Merge rule = join** (a semilattice: commutative, associative, idempotent): a slot holds the join of every
crumb written to it, so the item is a function of the record *set*, whatever the order, writer, batching or
redelivery. ``join(a, b)``: the crumb of the greater event time if they differ (two instants in one 10 ms
slot: the later ms wins whole; the ms digit leads the value, so that is a string comparison); for one
instant, field by field: a field one lacks takes the other's value, two different values the max (the
location is one field, the (lat, lng) pair: one record's latitude is never paired with another's
longitude), and the earliest arrival (the larger inverted delay). A gateway that splits one instant over two
records (location in one, speed in the other), or a resend with another field subset, loses nothing.
``expiresAt`` is a max-register (max arrival s + 24 h).

**Spans.** A bucket spans 15 s for a 1 Hz vehicle; for a slower reporter the writer picks a wider span from
its reporting interval (``span_for``: 75 s at one record per 5 s, 450 s at one per 30 s), so each item holds
about 15 records whatever the cadence. The span is not stored: a slot's name is relative to the item's own
``bucket``, so decoding needs only the key, and a reader queries every key from ``TRAIL_MAX_SPAN`` before its
range (``bucket_range``) and joins crumbs per absolute 10 ms slot (``_canonical``). Which item holds a crumb
may then depend on the cadence its writer had seen (a restarted writer starts at 15 s): two writers may put
one record in two items; readers see one crumb, the join, as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from schemas.records import VehicleReading

TRAIL_BUCKET_SECONDS = 15
TRAIL_SPANS = (15, 30, 75, 150, 450)
"""The spans (s) a bucket may have: a vehicle's crumbs go into the widest that holds at most
``BUCKET_RECORDS`` of its records at its reporting interval (``span_for``), so a bucket of a unit reporting
every 5 s spans 75 s and one of a unit reporting every 30 s, 450 s: about as full as a 1 Hz vehicle's 15 s
bucket (< 1 KB), one write unit per ~15 records instead of one per 3 or per 1."""
TRAIL_MAX_SPAN = TRAIL_SPANS[-1]
BUCKET_RECORDS = 16
"""Records a bucket is sized for: a 1 Hz vehicle (16 records when an interval jitters under a second)
keeps 15 s, and a 5 s unit whose interval jitters a little under 5 s still gets 75 s."""
TRAIL_TTL_SECONDS = 86_400
SLOT_MS = 10
DELAY_DIGITS = 9
MAX_DELAY_SECONDS = 10**DELAY_DIGITS - 1
"""The inverted arrival delay has nine digits (31 years): the proposal's six (11.5 days) cover the shipped
``FLEET_MAX_EVENT_AGE_HOURS`` (168 h) but not a deployment or test configured for older records, whose
clamped arrival would put ``expiresAt`` in the past and drop them from every archive. Three bytes a crumb:
a full 1 Hz bucket stays under 1 KB."""
TRAIL_SIGNALS = ("location", "vehicleSpeed", "heading", "odometer", "batteryLevel", "soc")
KEY_ATTRIBUTES = ("pseudoVin", "bucket", "expiresAt")


@dataclass(frozen=True, slots=True)
class Crumb:
    """One record's trail fields. ``arrival_ms`` is whole seconds, never before ``t_ms``'s second (the codec
    keeps the arrival second only; ``crumb_of`` normalises)."""

    t_ms: int
    arrival_ms: int
    lat: float | None
    lng: float | None
    vehicle_speed: float | None
    heading: float | None
    odometer: float | None
    battery_level: float | None
    soc: float | None

    @property
    def arrival_s(self) -> int:
        return self.arrival_ms // 1000

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lng is not None


def _number(value: object) -> float | None:
    """A trail field's value: a finite number, else absent (never an error: this runs on every accepted
    record, outside the per-record boundary)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def crumb_of(reading: VehicleReading) -> Crumb | None:
    """The reading's crumb (its own values, no carry-forward), None when it has no trail field at all."""
    signals = reading.signals
    location = reading.location
    fields = (
        _number(signals.get("vehicleSpeed")),
        _number(signals.get("heading")),
        _number(signals.get("odometer")),
        _number(signals.get("batteryLevel")),
        _number(signals.get("soc")),
    )
    lat = lng = None
    if location is not None and math.isfinite(location.lat) and math.isfinite(location.lng):
        lat, lng = float(location.lat), float(location.lng)
    if lat is None and all(value is None for value in fields):
        return None
    t = reading.event_time_ms
    delay = min(MAX_DELAY_SECONDS, max(0, reading.position.arrival_ms // 1000 - t // 1000))
    return Crumb(t, (t // 1000 + delay) * 1000, lat, lng, *fields)


def bucket_of(t_ms: int, span_s: int = TRAIL_BUCKET_SECONDS) -> int:
    """The bucket (epoch seconds, a multiple of ``span_s``) holding event time ``t_ms``."""
    return t_ms // 1000 // span_s * span_s


def slot_of(t_ms: int, bucket: int | None = None) -> str:
    """The slot of ``t_ms`` in the bucket starting at ``bucket`` (epoch s; by default its 15 s bucket): its
    10 ms step from the bucket's start, so a slot's name depends on the item's key alone, never on the span
    the writer chose."""
    start = bucket_of(t_ms) if bucket is None else bucket
    return str((t_ms - start * 1000) // SLOT_MS)


def span_for(interval_ms: int) -> int:
    """The bucket span (s) for a vehicle reporting every ``interval_ms``: the widest of ``TRAIL_SPANS`` that
    holds at most ``BUCKET_RECORDS`` of its records."""
    fitting = [span for span in TRAIL_SPANS if span * 1000 <= BUCKET_RECORDS * interval_ms]
    return fitting[-1] if fitting else TRAIL_BUCKET_SECONDS


def bucket_range(from_ms: int, to_ms: int) -> tuple[int, int]:
    """The bucket keys (epoch s, inclusive) of every item that may hold a crumb with ``from <= t <= to``,
    whatever span its writer chose: a bucket starting up to ``TRAIL_MAX_SPAN`` before ``from`` may reach
    into it. Readers need not know a vehicle's span; a 1 Hz vehicle's range reads 29 more (15 s) keys."""
    return from_ms // 1000 - TRAIL_MAX_SPAN + 1, to_ms // 1000


def _text(value: float | None) -> str:
    if value is None:
        return ""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # "225", not "225.0": decoded back to the same float
    return orjson.dumps(value).decode()


def encode(crumb: Crumb) -> str:
    """The slot value of ``crumb`` (see the module docstring)."""
    delay = min(MAX_DELAY_SECONDS, max(0, crumb.arrival_ms // 1000 - crumb.t_ms // 1000))
    values = (
        crumb.lat,
        crumb.lng,
        crumb.vehicle_speed,
        crumb.heading,
        crumb.odometer,
        crumb.battery_level,
        crumb.soc,
    )
    body = ",".join(map(_text, values)).rstrip(",")
    return f"{crumb.t_ms % 10}{MAX_DELAY_SECONDS - delay:0{DELAY_DIGITS}d}{body}"


def decode(bucket: int, slot: str, value: str) -> Crumb:
    """The crumb stored in ``slot`` of ``bucket``: ``decode(b, slot_of(c.t_ms), encode(c)) == c``."""
    t = bucket * 1000 + int(slot) * SLOT_MS + int(value[0])
    delay = MAX_DELAY_SECONDS - int(value[1 : 1 + DELAY_DIGITS])
    parts = value[1 + DELAY_DIGITS :].split(",")
    parts += [""] * (7 - len(parts))
    lat, lng, speed, heading, odometer, battery, soc = (float(p) if p else None for p in parts)
    return Crumb(t, (t // 1000 + delay) * 1000, lat, lng, speed, heading, odometer, battery, soc)


_ANY_SLOT = (0, "0")
"""Where ``join_value`` decodes a value: a slot value's fields and its arrival relative to its own second do
not depend on the bucket or slot it is in."""


def _join_number(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _pair_order(pair: tuple[float | None, float | None]) -> tuple[tuple[bool, float], ...]:
    return tuple((v is not None, 0.0 if v is None else v) for v in pair)


def join(a: Crumb, b: Crumb) -> Crumb:
    """The slot's merge of two crumbs (see the module docstring): the later instant whole if ``t`` differs,
    else the union of their fields (the max where both have one; location as one pair) at the earlier
    arrival."""
    if a.t_ms != b.t_ms:
        return a if a.t_ms > b.t_ms else b
    if a == b:
        return a
    location_a, location_b = (a.lat, a.lng), (b.lat, b.lng)
    if location_a == (None, None):
        lat, lng = location_b
    elif location_b == (None, None):
        lat, lng = location_a
    else:
        lat, lng = max(location_a, location_b, key=_pair_order)
    return Crumb(
        a.t_ms,
        min(a.arrival_ms, b.arrival_ms),
        lat,
        lng,
        _join_number(a.vehicle_speed, b.vehicle_speed),
        _join_number(a.heading, b.heading),
        _join_number(a.odometer, b.odometer),
        _join_number(a.battery_level, b.battery_level),
        _join_number(a.soc, b.soc),
    )


def join_value(a: str, b: str) -> str:
    """``join`` of two values of one slot, encoded: ``encode(join(a, b))``. Equal values, and two instants
    (their leading ms digits differ), need no decoding."""
    if a == b:
        return a
    if a[0] != b[0]:
        return max(a, b)
    return encode(join(decode(*_ANY_SLOT, a), decode(*_ANY_SLOT, b)))


def decode_item(item: Mapping[str, Any]) -> list[Crumb]:
    """Every crumb of a stored bucket item (plain values, as ``schemas.dynamo.from_item`` gives)."""
    bucket = int(item["bucket"])
    return [
        decode(bucket, name, value)
        for name, value in item.items()
        if name not in KEY_ATTRIBUTES and isinstance(value, str)
    ]


@dataclass(frozen=True, slots=True)
class BucketMerge:
    """Slots to join into one bucket item, and the ``expiresAt`` it must reach at least."""

    pseudo_vin: str
    bucket: int
    slots: Mapping[str, str]
    expires_at: int


def pack(pseudo_vin: str, crumbs: Iterable[Crumb]) -> list[BucketMerge]:
    """One merge per bucket, each slot the join of its crumbs: the same for any order or duplication of
    ``crumbs``."""
    joined: dict[int, dict[str, Crumb]] = {}
    expires: dict[int, int] = {}
    for crumb in crumbs:
        bucket = bucket_of(crumb.t_ms)
        bucket_slots = joined.setdefault(bucket, {})
        name = slot_of(crumb.t_ms)
        held = bucket_slots.get(name)
        bucket_slots[name] = crumb if held is None else join(held, crumb)
        expires[bucket] = max(expires.get(bucket, 0), crumb.arrival_s + TRAIL_TTL_SECONDS)
    return [
        BucketMerge(pseudo_vin, b, {name: encode(c) for name, c in joined[b].items()}, expires[b])
        for b in sorted(joined)
    ]


def combine(a: BucketMerge, b: BucketMerge) -> BucketMerge:
    """Both merges as one (same vehicle and bucket): slots joined, ``expires_at`` max."""
    if (a.pseudo_vin, a.bucket) != (b.pseudo_vin, b.bucket):
        raise ValueError("combine needs merges of the same bucket")
    slots = dict(a.slots)
    for name, value in b.slots.items():
        held = slots.get(name)
        slots[name] = value if held is None else join_value(held, value)
    return replace(a, slots=slots, expires_at=max(a.expires_at, b.expires_at))


@dataclass(frozen=True, slots=True)
class Remainder:
    """What of a merge still has to be written: per slot the value to store (``slots``) and, where the slot
    already holds a value, that value (``expected``): the write swaps it only if the slot still holds it, so
    a writer that raced ahead is never overwritten, only joined on the next round. A slot not in ``expected``
    is written only if absent or already equal (a new slot, a rewrite). ``expires_at``: raise the stored
    ``expiresAt`` to it (None: leave it)."""

    slots: Mapping[str, str]
    expires_at: int | None
    expected: Mapping[str, str] = field(default_factory=dict)


def outstanding(merge: BucketMerge, stored_item: Mapping[str, Any] | None) -> Remainder | None:
    """After a failed conditional merge, from ``stored_item`` (plain values, the ``ALL_OLD`` item): each
    slot the stored value does not already cover (``join(stored, ours) != stored``) to be swapped for that
    join, each absent slot to be written as ours; None when the stored item covers the whole merge."""
    stored = stored_item or {}
    slots: dict[str, str] = {}
    expected: dict[str, str] = {}
    for name, value in merge.slots.items():
        held = stored.get(name)
        if held is None:
            slots[name] = value
            continue
        joined = join_value(str(held), value)
        if joined != held:
            slots[name], expected[name] = joined, str(held)
    current = stored.get("expiresAt")
    expires = merge.expires_at if current is None or int(current) < merge.expires_at else None
    if not slots and expires is None:
        return None
    return Remainder(slots, expires, expected)


def _canonical(crumbs: Iterable[Crumb]) -> list[tuple[Crumb, str]]:
    """The crumbs as the store would hold them (one per 10 ms slot of absolute time, the join of its
    crumbs, whichever item each came from), sorted by (t, encoded value)."""
    joined: dict[int, Crumb] = {}
    for crumb in crumbs:
        key = crumb.t_ms // SLOT_MS
        held = joined.get(key)
        joined[key] = crumb if held is None else join(held, crumb)
    return sorted(((c, encode(c)) for c in joined.values()), key=lambda pair: (pair[0].t_ms, pair[1]))


def one_per_slot(crumbs: Iterable[Crumb]) -> list[Crumb]:
    """The crumbs as one item would hold them: one per 10 ms slot of absolute time, the join of those read
    from several items (a record two writers packed into buckets of different spans), in (t, value) order."""
    return [crumb for crumb, _ in _canonical(crumbs)]


def trip_rows(crumbs: Iterable[Crumb], start_ms: int, end_ms: int, completion_ms: int) -> list[Crumb]:
    """A trip's rows: crumbs with ``start <= t <= end`` that arrived by its completion point R
    (``arrival_s <= R//1000``) and were unexpired at R (``arrival_s + 86400 > R//1000``), one per slot (the
    join of its crumbs, as the store holds it), sorted by (t, encoded value). Defined against R, never the
    wall clock: a re-archive reads the same rows."""
    r = completion_ms // 1000
    return [
        crumb
        for crumb, _ in _canonical(crumbs)
        if start_ms <= crumb.t_ms <= end_ms and crumb.arrival_s <= r < crumb.arrival_s + TRAIL_TTL_SECONDS
    ]


@dataclass(frozen=True, slots=True)
class TrailPoint:
    """A point of the live map's polyline: a located crumb, its other values filled forward."""

    t_ms: int
    lat: float
    lng: float
    vehicle_speed: float | None
    heading: float | None
    odometer: float | None
    battery_level: float | None


@dataclass(frozen=True, slots=True)
class Filled:
    """A row's values with the last seen ones carried forward (``filled``); ``battery`` is the row's
    battery source (``batteryLevel`` or ``soc``)."""

    vehicle_speed: float | None
    heading: float | None
    odometer: float | None
    battery: float | None


def filled(rows: Iterable[Crumb], use_level: bool) -> Iterator[tuple[Crumb, Filled]]:
    """Each row with speed, heading, odometer and battery filled forward from the rows before it: the one
    fill-forward of the live map and the archive (delta producers send a field when it changes)."""
    speed = heading = odometer = battery = None
    for crumb in rows:
        level = crumb.battery_level if use_level else crumb.soc
        speed = crumb.vehicle_speed if crumb.vehicle_speed is not None else speed
        heading = crumb.heading if crumb.heading is not None else heading
        odometer = crumb.odometer if crumb.odometer is not None else odometer
        battery = level if level is not None else battery
        yield crumb, Filled(speed, heading, odometer, battery)


def trail_points(
    crumbs: Iterable[Crumb], from_ms: int, to_ms: int, now_ms: int, *, fill_forward: bool = True
) -> list[TrailPoint]:
    """The live map's trail: crumbs with ``from <= t <= to``, unexpired now (``arrival_s + 86400 >
    now_s``: TTL deletes lazily, expired items are filtered, not trusted to be gone), in (t, value) order;
    speed, heading, odometer and battery filled forward *within the range* (values before ``from_ms`` are
    not carried in). Rows without a location only feed the fill-forward. Battery is ``batteryLevel`` if
    any row has it, else ``soc``."""
    now_s = now_ms // 1000
    rows = [
        c
        for c, _ in _canonical(crumbs)
        if from_ms <= c.t_ms <= to_ms and c.arrival_s + TRAIL_TTL_SECONDS > now_s
    ]
    use_level = any(c.battery_level is not None for c in rows)
    points: list[TrailPoint] = []
    for crumb, carried in filled(rows, use_level):
        if crumb.lat is None or crumb.lng is None:
            continue
        level = crumb.battery_level if use_level else crumb.soc
        own = Filled(crumb.vehicle_speed, crumb.heading, crumb.odometer, level)
        values = carried if fill_forward else own
        points.append(
            TrailPoint(
                crumb.t_ms,
                crumb.lat,
                crumb.lng,
                values.vehicle_speed,
                values.heading,
                values.odometer,
                values.battery,
            )
        )
    return points


def segment_rows(crumbs: Iterable[Crumb]) -> list[list[Any]]:
    """Raw crumbs as a sealed segment stores them: ``[tMs, aS, lat, lng, speed, heading, odometer,
    batteryLevel, soc]``."""
    return [
        [
            c.t_ms,
            c.arrival_s,
            c.lat,
            c.lng,
            c.vehicle_speed,
            c.heading,
            c.odometer,
            c.battery_level,
            c.soc,
        ]
        for c in crumbs
    ]


def from_segment_rows(rows: Iterable[list[Any]]) -> list[Crumb]:
    def number(value: Any) -> float | None:
        return None if value is None else float(value)

    crumbs = []
    for row in rows:
        lat, lng, speed, heading, odometer, battery, soc = (number(v) for v in row[2:9])
        crumbs.append(
            Crumb(int(row[0]), int(row[1]) * 1000, lat, lng, speed, heading, odometer, battery, soc)
        )
    return crumbs


CHUNK_SLOTS = 60
"""Slots per UpdateItem: the first round's guard, ``(attribute_not_exists(#k) OR #k = :c) AND``, is 4
operators and <= 50 characters a slot (a compare-and-swap, ``#k = :s AND``, 2 and <= 20), which keeps a chunk
(with the ``expiresAt`` clauses) within DynamoDB's 300 operators and 4 KB per expression."""


def remainder_of(merge: BucketMerge) -> Remainder:
    """A merge's first round: every slot written if absent or already equal."""
    return Remainder(merge.slots, merge.expires_at)


def chunks(remainder: Remainder, size: int = CHUNK_SLOTS) -> list[Remainder]:
    """The remainder in requests of at most ``size`` slots, in slot order; each raises ``expiresAt`` too,
    so every crumb written is covered by its TTL whichever chunk lands first."""
    names = sorted(remainder.slots, key=int)
    if not names:
        return [remainder]
    parts = []
    for i in range(0, len(names), size):
        part = names[i : i + size]
        slots = {n: remainder.slots[n] for n in part}
        expected = {n: remainder.expected[n] for n in part if n in remainder.expected}
        parts.append(Remainder(slots, remainder.expires_at, expected))
    return parts


def remainder_outstanding(
    remainder: Remainder, pseudo_vin: str, bucket: int, stored_item: Mapping[str, Any] | None
) -> Remainder | None:
    """``outstanding`` of a chunk whose guard failed (its ``expiresAt`` may already be dropped). Its values
    are joins of real records (ours and what was stored), so joining them into the newer stored item again
    is still the join of the record set: the expected values of the failed round are simply replaced."""
    merge = BucketMerge(pseudo_vin, bucket, remainder.slots, remainder.expires_at or 0)
    left = outstanding(merge, stored_item)
    if left is None or remainder.expires_at is not None:
        return left
    return None if not left.slots else Remainder(left.slots, None, left.expected)
