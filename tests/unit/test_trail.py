"""The trail codec and its merge algebra (``processors.trail``), pure.

The properties the live table relies on: a crumb decodes to itself; a slot's merge is a join (commutative,
associative, idempotent), so packing and combining any permutation or duplication of crumbs gives the same
merges (the stored item is a function of the record set) and no field of any record of an instant is lost; a
bucket can never outgrow DynamoDB's 400 KB item limit, whatever the input; a crumb carries nothing a writer
could label differently."""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.local_aws.limits import item_size
from processors.trail import (
    MAX_DELAY_SECONDS,
    SLOT_MS,
    TRAIL_BUCKET_SECONDS,
    TRAIL_TTL_SECONDS,
    BucketMerge,
    Crumb,
    Remainder,
    bucket_of,
    chunks,
    combine,
    crumb_of,
    decode,
    decode_item,
    encode,
    join,
    join_value,
    outstanding,
    pack,
    remainder_of,
    remainder_outstanding,
    slot_of,
    trail_points,
    trip_rows,
)
from schemas.records import Location, StreamPosition, VehicleReading
from worker.retry import TRAIL_ROUNDS

PV = "0123456789abcdef0123456789abcdef"
T0 = 1_741_183_200_000  # 2025-03-05T14:00:00Z, a bucket boundary
MAX_ITEM_BYTES = 400 * 1024

finite = st.floats(allow_nan=False, allow_infinity=False)
maybe = st.none() | finite


@st.composite
def crumbs(draw: st.DrawFn, t_min: int = T0 - 3_600_000, t_max: int = T0 + 3_600_000) -> Crumb:
    t = draw(st.integers(t_min, t_max))
    delay = draw(st.integers(0, MAX_DELAY_SECONDS))
    lat, lng = draw(st.none() | st.tuples(finite, finite)) or (None, None)
    return Crumb(t, (t // 1000 + delay) * 1000, lat, lng, *(draw(maybe) for _ in range(5)))


SPLIT_T = (T0 + 1_234, T0 + 1_237)
"""Two instants in one 10 ms slot."""
values = st.sampled_from([0.0, -0.0, 1.5, 28.0, 225.0]) | finite
"""Few values, so that two records of one instant often agree, often differ."""


@st.composite
def instants(draw: st.DrawFn, times: Sequence[int] = (*SPLIT_T, T0 + 1_250, T0 + 16_000)) -> Crumb:
    """Records of a few instants (two in one slot, one in the next slot, one in the next bucket), each with
    any subset of the fields and an arrival among a few: one instant as several records, resends."""
    t = draw(st.sampled_from(times))
    delay = draw(st.sampled_from([0, 1, 7, MAX_DELAY_SECONDS]))
    lat, lng = draw(st.none() | st.tuples(values, values)) or (None, None)
    return Crumb(t, (t // 1000 + delay) * 1000, lat, lng, *(draw(st.none() | values) for _ in range(5)))


def item_of(merge: BucketMerge) -> dict[str, dict[str, str]]:
    """The stored item a merge makes in an empty table (wire form, for the local AWS's size rules)."""
    return {
        "pseudoVin": {"S": merge.pseudo_vin},
        "bucket": {"N": str(merge.bucket)},
        "expiresAt": {"N": str(merge.expires_at)},
        **{name: {"S": value} for name, value in merge.slots.items()},
    }


def reading(t: int, arrival: int, **signals: Any) -> VehicleReading:
    return VehicleReading(PV, t, signals, StreamPosition("shardId-0", "1", 0, arrival))


# --- codec ----------------------------------------------------------------------------------------------


@given(crumbs())
def test_a_crumb_decodes_to_itself(crumb: Crumb) -> None:
    assert decode(bucket_of(crumb.t_ms), slot_of(crumb.t_ms), encode(crumb)) == crumb


@given(crumbs())
def test_a_slot_name_is_at_most_four_digits_and_inside_its_bucket(crumb: Crumb) -> None:
    bucket, slot = bucket_of(crumb.t_ms), slot_of(crumb.t_ms)
    assert bucket % TRAIL_BUCKET_SECONDS == 0 and 0 <= int(slot) < TRAIL_BUCKET_SECONDS * 1000 // SLOT_MS
    assert bucket * 1000 + int(slot) * SLOT_MS <= crumb.t_ms < bucket * 1000 + (int(slot) + 1) * SLOT_MS


def test_the_value_is_the_proposal_s_format_numbers_shortest_absent_fields_empty() -> None:
    crumb = crumb_of(
        reading(
            T0 + 3_457,
            T0 + 4_100,
            location=Location(39.750919, -105.169852),
            vehicleSpeed=28.0,
            heading=225,
            odometer=56899.84,
            batteryLevel=75,
        )
    )
    assert crumb is not None
    assert slot_of(crumb.t_ms) == "345"
    assert encode(crumb) == "7999999998" + "39.750919,-105.169852,28,225,56899.84,75"
    speed_only = crumb_of(reading(T0, T0 + 2_000, vehicleSpeed=0.5, shiftState="P"))
    assert speed_only is not None and encode(speed_only) == "0999999997,,0.5"


def test_a_record_without_any_trail_field_has_no_crumb_and_non_numbers_are_absent() -> None:
    assert crumb_of(reading(T0, T0, shiftState="D", vehicleSpeed="fast", heading=True)) is None
    assert crumb_of(reading(T0, T0, soc=float("inf"))) is None
    assert crumb_of(reading(T0, T0, odometer=10**400)) is None  # beyond any float: absent, not an error
    crumb = crumb_of(reading(T0, T0, soc=81.5, vehicleSpeed=float("nan")))
    assert crumb is not None and (crumb.soc, crumb.vehicle_speed) == (81.5, None)


def test_an_arrival_before_the_event_counts_as_the_event_s_second() -> None:
    crumb = crumb_of(reading(T0 + 5_500, T0, vehicleSpeed=3.0))  # vehicle clock ahead of the stream
    assert crumb is not None and crumb.arrival_ms == T0 + 5_000


# --- merge algebra -------------------------------------------------------------------------------------


def merged(merges: Sequence[BucketMerge]) -> dict[int, BucketMerge]:
    by_bucket: dict[int, BucketMerge] = {}
    for merge in merges:
        held = by_bucket.get(merge.bucket)
        by_bucket[merge.bucket] = merge if held is None else combine(held, merge)
    return by_bucket


@settings(max_examples=200)
@given(
    st.lists(crumbs(T0, T0 + 60_000) | instants(), min_size=1, max_size=60), st.randoms(use_true_random=False)
)
def test_any_permutation_or_duplication_packs_and_combines_to_the_same_merges(
    batch: list[Crumb], rng: random.Random
) -> None:
    once = {m.bucket: m for m in pack(PV, batch)}
    shuffled = batch + rng.sample(batch, k=rng.randint(0, len(batch)))
    rng.shuffle(shuffled)
    cut = sorted(rng.randint(0, len(shuffled)) for _ in range(3))
    parts = [shuffled[a:b] for a, b in zip([0, *cut], [*cut, len(shuffled)], strict=True)]
    packed_in_parts = merged([m for part in parts for m in pack(PV, part)])
    assert {b: (dict(m.slots), m.expires_at) for b, m in packed_in_parts.items()} == {
        b: (dict(m.slots), m.expires_at) for b, m in once.items()
    }


def test_a_resend_of_one_sample_keeps_its_earliest_arrival() -> None:
    sample = {"vehicleSpeed": 30.0, "location": Location(39.7, -104.9)}
    first, resend = reading(T0 + 120, T0 + 1_000, **sample), reading(T0 + 120, T0 + 9_000, **sample)
    (a,), (b,) = pack(PV, [crumb_of(resend)]), pack(PV, [crumb_of(first)])  # type: ignore[list-item]
    both = combine(a, b)
    assert both.slots == b.slots and both.expires_at == (T0 + 9_000) // 1000 + TRAIL_TTL_SECONDS


@given(instants(), instants())
def test_join_is_commutative(a: Crumb, b: Crumb) -> None:
    assert join(a, b) == join(b, a)


@given(instants(), instants(), instants())
def test_join_is_associative(a: Crumb, b: Crumb, c: Crumb) -> None:
    assert join(join(a, b), c) == join(a, join(b, c))


@given(instants(), instants())
def test_join_is_idempotent_and_absorbs_what_it_joined(a: Crumb, b: Crumb) -> None:
    assert join(a, a) == a
    assert join(join(a, b), b) == join(a, b) == join(a, join(a, b))


@given(instants(SPLIT_T), instants(SPLIT_T))
def test_the_join_of_two_values_of_a_slot_is_the_join_of_their_crumbs(a: Crumb, b: Crumb) -> None:
    assert join_value(encode(a), encode(b)) == encode(join(a, b))


def record(t: int, arrival: int, **signals: Any) -> Crumb:
    made = crumb_of(reading(t, arrival, **signals))
    assert made is not None
    return made


def only_crumb(merge: BucketMerge) -> Crumb:
    ((name, value),) = merge.slots.items()
    return decode(merge.bucket, name, value)


def test_two_records_of_one_instant_pack_to_one_crumb_with_the_fields_of_both() -> None:
    """A gateway's split sample: location in one record, speed in another, the same timestamp."""
    located = record(T0 + 1_234, T0 + 3_000, location=Location(39.7, -104.9))
    speed = record(T0 + 1_234, T0 + 2_000, vehicleSpeed=61.5)
    for batch in ([located, speed], [speed, located]):
        (merge,) = pack(PV, batch)
        both = only_crumb(merge)
        assert (both.lat, both.lng, both.vehicle_speed) == (39.7, -104.9, 61.5)
        assert both.arrival_ms == T0 + 2_000  # the earliest of the two
        assert merge.expires_at == (T0 + 3_000) // 1000 + TRAIL_TTL_SECONDS  # the latest


def test_combining_merges_of_a_split_instant_keeps_the_union_in_either_order() -> None:
    located = record(T0 + 1_234, T0 + 2_000, location=Location(39.7, -104.9), heading=90)
    resend = record(T0 + 1_234, T0 + 9_000, vehicleSpeed=61.5, heading=91, soc=70)
    (a,), (b,) = pack(PV, [located]), pack(PV, [resend])
    assert combine(a, b) == combine(b, a)
    both = only_crumb(combine(a, b))
    assert (both.lat, both.vehicle_speed, both.soc) == (39.7, 61.5, 70.0)
    assert both.heading == 91.0  # both had one, they differ: the max, whatever the order
    assert both.arrival_ms == T0 + 2_000


def test_two_instants_in_one_slot_the_later_ms_wins_whole() -> None:
    earlier = record(T0 + 1_234, T0 + 2_000, location=Location(39.7, -104.9))
    later = record(T0 + 1_237, T0 + 9_000, vehicleSpeed=61.5)
    (merge,) = pack(PV, [later, earlier])
    assert merge.slots == {slot_of(T0 + 1_234): encode(later)}
    assert join_value(encode(earlier), encode(later)) == encode(later)


@settings(max_examples=300)
@given(st.lists(instants(), min_size=1, max_size=12))
def test_no_field_of_any_record_of_an_instant_is_lost_and_none_is_invented(batch: list[Crumb]) -> None:
    stored = {
        (m.bucket, name): decode(m.bucket, name, v) for m in pack(PV, batch) for name, v in m.slots.items()
    }
    fields = ("vehicle_speed", "heading", "odometer", "battery_level", "soc")
    for crumb in batch:
        held = stored[(bucket_of(crumb.t_ms), slot_of(crumb.t_ms))]
        assert held.t_ms >= crumb.t_ms
        if held.t_ms > crumb.t_ms:
            continue
        same = [c for c in batch if c.t_ms == crumb.t_ms]
        assert held.arrival_ms == min(c.arrival_ms for c in same)
        for name in fields:
            present = [getattr(c, name) for c in same if getattr(c, name) is not None]
            assert getattr(held, name) == (max(present) if present else None)
        pairs = [(c.lat, c.lng) for c in same if c.located]
        assert (held.lat, held.lng) == (max(pairs) if pairs else (None, None))


def test_expires_at_is_the_max_arrival_plus_a_day_so_a_record_30_h_late_is_not_already_expired() -> None:
    now = T0 + 30 * 3_600_000
    (merge,) = pack(PV, [crumb_of(reading(T0, now, vehicleSpeed=12.0))])  # type: ignore[list-item]
    assert merge.expires_at == now // 1000 + TRAIL_TTL_SECONDS > now // 1000
    assert merge.expires_at != T0 // 1000 + TRAIL_TTL_SECONDS  # event time + 24 h: already in the past


def test_a_crumb_carries_no_trip_label_two_writers_of_one_record_write_the_same_bytes() -> None:
    record = reading(T0 + 777, T0 + 1_500, vehicleSpeed=44.0, location=Location(39.7, -104.9), soc=70.0)
    # Whatever each writer's trip state (none, or a trip it labels differently), the crumb is the record's.
    (one,), (other,) = pack(PV, [crumb_of(record)]), pack(PV, [crumb_of(record)])  # type: ignore[list-item]
    assert item_of(one) == item_of(other)
    assert not any("trip" in value for value in one.slots.values())


# --- the conditional write's remainder -----------------------------------------------------------------


def test_outstanding_swaps_each_slot_the_stored_item_does_not_cover_for_the_join() -> None:
    located = record(T0 + 10, T0 + 2_000, location=Location(39.7, -104.9))
    moving = record(T0 + 10, T0 + 1_000, vehicleSpeed=61.5)
    both = join(located, moving)
    new, same = record(T0 + 20, T0 + 1_000, soc=70), record(T0 + 30, T0 + 1_000, soc=71)
    (merge,) = pack(PV, [moving, new, same])
    stored = {
        "pseudoVin": PV,
        "bucket": merge.bucket,
        "expiresAt": 10**10,
        "1": encode(located),
        "3": encode(same),
    }
    # "1" holds another record of the instant: swap it for the join, only if it still holds what we saw;
    # "2" is absent: write ours if still absent (or equal); "3" already holds ours: done; expiresAt higher.
    assert outstanding(merge, stored) == Remainder(
        {"1": encode(both), "2": encode(new)}, None, {"1": encode(located)}
    )
    assert outstanding(merge, {**stored, "1": encode(both), "2": encode(new)}) is None  # covered: done
    assert outstanding(merge, {**stored, "expiresAt": 100}) == Remainder(
        {"1": encode(both), "2": encode(new)}, merge.expires_at, {"1": encode(located)}
    )
    assert outstanding(merge, None) == Remainder(merge.slots, merge.expires_at)


def test_chunks_split_slots_and_each_raises_expires_at() -> None:
    merge = BucketMerge(PV, 0, {str(i): "x" for i in range(130)}, 7)
    parts = chunks(Remainder(merge.slots, 7, {"5": "w", "125": "v"}), 60)
    assert [len(p.slots) for p in parts] == [60, 60, 10]
    assert {p.expires_at for p in parts} == {7}
    assert {k for p in parts for k in p.slots} == set(merge.slots)
    assert [dict(p.expected) for p in parts] == [{"5": "w"}, {}, {"125": "v"}]


def guards_pass(pending: Remainder, item: dict[str, Any]) -> bool:
    """DynamoDB's verdict on the condition ``DynamoTrail`` builds for ``pending`` (a model: the contract
    suite checks the real one): a swap needs the value it saw, a plain write an absent or equal slot."""
    for name, value in pending.slots.items():
        held = item.get(name)
        if name in pending.expected:
            if held != pending.expected[name]:
                return False
        elif held not in (None, value):
            return False
    current = item.get("expiresAt")
    return pending.expires_at is None or current is None or current <= pending.expires_at


@settings(max_examples=300)
@given(
    st.lists(st.lists(instants((*SPLIT_T, T0 + 1_250)), min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.integers(0, 2), max_size=30),
)
def test_conditional_rounds_under_any_interleaving_converge_to_the_join_of_every_write(
    writers: list[list[Crumb]], schedule: list[int]
) -> None:
    """Writers of one bucket take their conditional rounds (``outstanding`` after each failed guard) in any
    interleaving: the item ends as if every crumb had been packed together, and a writer needs at most one
    round per writer plus one (its own first guard may fail on what was stored before it; each later failure
    is another writer's success, and each writer succeeds once), so ``TRAIL_ROUNDS`` covers three."""
    item: dict[str, Any] = {"pseudoVin": PV, "bucket": bucket_of(T0)}
    pending: list[Remainder | None] = []
    for crumbs_ in writers:
        (merge,) = pack(PV, crumbs_)
        pending.append(remainder_of(merge))
    rounds = [0] * len(writers)

    def step(w: int) -> None:
        left = pending[w]
        if left is None:
            return
        rounds[w] += 1
        if guards_pass(left, item):
            item.update(left.slots)
            if left.expires_at is not None:
                item["expiresAt"] = left.expires_at
            pending[w] = None
        else:  # ALL_OLD: the item as the failed guard saw it
            pending[w] = remainder_outstanding(left, PV, item["bucket"], dict(item))

    for w in schedule:
        step(w % len(writers))
    for _ in range(len(writers) + 1):  # then round-robin: enough rounds for every writer to finish
        for w in range(len(writers)):
            step(w)
    assert pending == [None] * len(writers)
    (everything,) = pack(PV, [c for crumbs_ in writers for c in crumbs_])
    assert {
        k: v for k, v in item.items() if k not in ("pseudoVin", "bucket", "expiresAt")
    } == everything.slots
    assert item["expiresAt"] == everything.expires_at
    assert max(rounds) <= len(writers) + 1
    if len(writers) <= 3:
        assert max(rounds) <= TRAIL_ROUNDS.rounds


# --- size -----------------------------------------------------------------------------------------------

LONGEST_FLOAT = -2.2250738585072014e-308  # 24 characters in shortest round-trip form


def test_the_worst_case_bucket_stays_under_dynamodb_s_400_kb() -> None:
    assert len(encode(Crumb(0, 0, *[LONGEST_FLOAT] * 7))) == 10 + 7 * 24 + 6
    bucket = bucket_of(T0)
    worst = [
        Crumb(bucket * 1000 + slot * SLOT_MS + 9, (bucket + MAX_DELAY_SECONDS) * 1000, *[LONGEST_FLOAT] * 7)
        for slot in range(TRAIL_BUCKET_SECONDS * 1000 // SLOT_MS)
    ]
    (merge,) = pack(PV, worst)
    assert len(merge.slots) == 1500
    assert item_size(item_of(merge)) < MAX_ITEM_BYTES


@given(st.lists(crumbs(T0, T0 + 14_999), min_size=1, max_size=200))
def test_any_bucket_stays_under_400_kb(batch: list[Crumb]) -> None:
    (merge,) = pack(PV, batch)
    assert item_size(item_of(merge)) < MAX_ITEM_BYTES


def native_second(i: int) -> Crumb | None:
    lat, lng = struct.unpack("2d", struct.pack("2d", 39.750919 + i * 1e-5, -105.169852 - i * 1e-5))
    return crumb_of(
        reading(
            T0 + i * 1000 + 137,
            T0 + i * 1000 + 900,
            location=Location(round(lat, 6), round(lng, 6)),
            vehicleSpeed=28.0 + i / 10,
            heading=225,
            odometer=round(56899.84 + i * 0.01, 2),
            batteryLevel=75,
        )
    )


def test_a_full_native_1_hz_bucket_is_one_write_unit() -> None:
    (merge,) = pack(PV, filter(None, map(native_second, range(TRAIL_BUCKET_SECONDS))))
    assert len(merge.slots) == 15
    assert item_size(item_of(merge)) <= 1024


# --- selection ------------------------------------------------------------------------------------------


def crumb(t: int, arrival: int, speed: float | None = 10.0, located: bool = True, **extra: float) -> Crumb:
    made = crumb_of(
        reading(
            t, arrival, vehicleSpeed=speed, **({"location": Location(1.0, 2.0)} if located else {}), **extra
        )
    )
    assert made is not None
    return made


def test_trip_rows_are_the_span_arrived_by_r_and_unexpired_at_r_in_time_order() -> None:
    r = T0 + TRAIL_TTL_SECONDS * 1000 + 31_000
    inside = [crumb(T0 + 50_000, T0 + 51_000), crumb(T0, T0 + 40_000)]
    late = crumb(T0 + 20_000, r + 1_000)  # arrived after R: not this trip's archive
    stale = crumb(T0 + 30_000, T0 + 30_000)  # its day ended at R: expired, whatever TTL has done yet
    outside = [crumb(T0 - 1, T0), crumb(T0 + 60_001, T0 + 61_000)]
    rows = trip_rows([*inside, late, stale, *outside, inside[0]], T0, T0 + 60_000, r)
    assert rows == sorted(inside, key=lambda c: c.t_ms)


def test_trip_rows_keep_one_crumb_per_slot_the_one_the_store_keeps() -> None:
    a, b = crumb(T0 + 5, T0 + 9_000, speed=1.0), crumb(T0 + 5, T0 + 1_000, speed=1.0)
    assert trip_rows([a, b], T0, T0 + 10, T0 + 10_000) == [b]


def test_a_split_instant_is_one_row_with_its_location_and_its_own_speed_not_the_one_before() -> None:
    """Mid-drive, one instant as two records: the archive's row has both, the map does not fill forward the
    previous speed over the instant's own."""
    rows = [
        crumb(T0, T0 + 500, speed=10.0),
        crumb(T0 + 1_000, T0 + 1_500, speed=None),  # the location half
        crumb(T0 + 1_000, T0 + 1_500, speed=20.0, located=False),  # the speed half
    ]
    archived = trip_rows(rows, T0, T0 + 2_000, T0 + 5_000)
    assert [(c.t_ms, c.vehicle_speed, c.located) for c in archived] == [
        (T0, 10.0, True),
        (T0 + 1_000, 20.0, True),
    ]
    points = trail_points(rows, T0, T0 + 2_000, T0 + 5_000)
    assert [(p.t_ms, p.vehicle_speed) for p in points] == [(T0, 10.0), (T0 + 1_000, 20.0)]


def test_trail_points_fill_forward_within_the_range_and_drop_expired_crumbs() -> None:
    now = T0 + 10_000
    rows = [
        crumb(T0, T0, speed=5.0, located=False, heading=90.0, soc=60.0),
        crumb(T0 + 1_000, T0 + 1_000, speed=None),
        crumb(T0 + 2_000, T0 + 2_000, speed=7.0, batteryLevel=80.0),
        crumb(T0 - 1_000, T0 - 1_000, speed=99.0),  # before the range: not carried in
    ]
    points = trail_points(rows, T0, T0 + 5_000, now)
    assert [(p.t_ms, p.vehicle_speed, p.heading, p.battery_level) for p in points] == [
        (T0 + 1_000, 5.0, 90.0, None),
        (T0 + 2_000, 7.0, 90.0, 80.0),
    ]
    assert trail_points(rows, T0, T0 + 5_000, T0 + TRAIL_TTL_SECONDS * 1000 + 2_000) == []


def test_a_stored_item_decodes_to_its_crumbs() -> None:
    batch = [c for c in map(native_second, range(15)) if c is not None]
    (merge,) = pack(PV, batch)
    item = {"pseudoVin": PV, "bucket": merge.bucket, "expiresAt": merge.expires_at, **merge.slots}
    assert sorted(decode_item(item), key=lambda c: c.t_ms) == batch


def test_combine_refuses_merges_of_different_buckets() -> None:
    a, b = BucketMerge(PV, 0, {}, 1), BucketMerge(PV, 15, {}, 1)
    try:
        functools.reduce(combine, [a, b])
    except ValueError:
        return
    raise AssertionError("combined two buckets")
