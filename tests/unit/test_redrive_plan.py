"""Redrive planning without AWS: dead-letter keys in stream order, and PutRecords requests that keep each
partition key's order (one record per key per request, a failed one first again)."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given
from hypothesis import strategies as st

from processors.dead_letter import dead_letter_key, shard_order, stream_order
from processors.errors import REDRIVABLE, RejectReason
from processors.redrive import KPL_MAGIC, PutPlanner, Redrivable, kpl_records, verifies
from schemas.records import StreamPosition

ARRIVAL = 1_741_185_121_000  # 2025-03-05


def key(sequence: str, sub: int) -> str:
    return dead_letter_key(StreamPosition("shardId-000000000000", sequence, sub, ARRIVAL))


def test_padded_keys_list_in_stream_order_and_old_keys_sort_as_numbers() -> None:
    positions = [
        ("9", 0),
        ("10", 0),
        ("10", 2),
        ("10", 10),
        ("49590338271490256608559692538361571095921575989136588898", 0),
    ]
    padded = [key(seq, sub) for seq, sub in positions]
    assert sorted(padded) == padded
    assert padded[0] == f"dead-letter/2025/03/05/shardId-000000000000/{'9':0>56}-00000.json"
    old = [
        "dead-letter/2025/03/05/s/10-10.json",
        "dead-letter/2025/03/05/s/10-2.json",
        "dead-letter/2025/03/05/s/9.json",
    ]
    assert sorted(old, key=stream_order) == [old[2], old[1], old[0]]  # type: ignore[arg-type]
    assert [stream_order(k) for k in padded] == [(int(s), sub) for s, sub in positions]
    assert stream_order("dead-letter/2025/03/05/s/README.txt") is None
    assert stream_order("dead-letter/2025/03/05/s/10-x.json") is None


def test_child_shards_sort_after_their_parents() -> None:
    shards = ["shardId-000000000010", "shardId-000000000002", "shardId-000000000001"]
    assert sorted(shards, key=shard_order) == shards[::-1]


def test_permanent_reasons_are_the_record_s_own_bytes() -> None:
    assert {
        RejectReason.INTERNAL_ERROR,
        RejectReason.UNWRITABLE,
        RejectReason.TIMESTAMP_OUT_OF_RANGE,
    } == REDRIVABLE
    assert RejectReason.INVALID_VIN not in REDRIVABLE and RejectReason.MALFORMED_JSON not in REDRIVABLE


def record(i: int, partition_key: str, size: int = 10) -> Redrivable:
    return Redrivable(f"k{i}", "unwritable", b"x" * size, partition_key)


def test_a_request_holds_one_record_per_key_and_the_others_wait_in_order() -> None:
    planner = PutPlanner(max_records=3)
    for i, pk in enumerate(["a", "a", "b", "c", "d", "b"]):
        planner.add(record(i, pk))
    assert [r.object_key for r in planner.take()] == ["k0", "k2", "k3"]
    assert [r.object_key for r in planner.take()] == ["k1", "k4", "k5"]
    assert planner.take() == [] and len(planner) == 0


def test_a_record_that_does_not_fit_holds_back_its_key() -> None:
    planner = PutPlanner(max_records=10, max_bytes=100)
    for r in [record(0, "a", 60), record(1, "b", 60), record(2, "b", 10), record(3, "c", 10)]:
        planner.add(r)
    assert [r.object_key for r in planner.take()] == ["k0", "k3"]  # not k2: k1 of its key waits
    assert [r.object_key for r in planner.take()] == ["k1"]
    assert [r.object_key for r in planner.take()] == ["k2"]


def test_it_is_ready_before_it_holds_more_than_two_requests() -> None:
    planner = PutPlanner(max_records=5, max_bytes=1000)
    for i in range(9):
        planner.add(record(i, "one"))
    assert not planner.ready()
    planner.add(record(9, "one"))
    assert planner.ready()
    planner = PutPlanner(max_records=500, max_bytes=100)
    planner.add(record(0, "a", 100))
    assert planner.ready()


@given(
    keys=st.lists(st.sampled_from("abcdefg"), max_size=80),
    max_records=st.integers(1, 6),
    seed=st.integers(0, 1_000),
)
def test_with_failures_every_key_is_put_in_order_exactly_once(
    keys: list[str], max_records: int, seed: int
) -> None:
    rng = random.Random(seed)
    planner = PutPlanner(max_records=max_records)
    accepted: list[Redrivable] = []
    pending = [record(i, pk) for i, pk in enumerate(keys)]

    def put(request: list[Redrivable]) -> None:
        assert 0 < len(request) <= max_records
        assert len({r.partition_key for r in request}) == len(request)
        rng.shuffle(request)  # PutRecords orders nothing within a request
        failed = [r for r in request if rng.random() < 0.3]
        accepted.extend(r for r in request if r not in failed)
        planner.put_back(sorted(failed, key=lambda r: int(r.object_key[1:])))

    for r in pending:
        planner.add(r)
        while planner.ready():
            put(planner.take())
    while len(planner):
        put(planner.take())
    assert sorted(accepted, key=lambda r: int(r.object_key[1:])) == pending
    for pk in set(keys):
        assert [r for r in accepted if r.partition_key == pk] == [r for r in pending if r.partition_key == pk]


def test_a_dead_letter_verifies_only_against_the_same_bytes_and_partition_key() -> None:
    assert verifies(b"abc", "K", 0, b"abc", "K")
    assert not verifies(b"abd", "K", 0, b"abc", "K")
    assert not verifies(b"abc", "L", 0, b"abc", "K")
    assert not verifies(b"abc", "K", 1, b"abc", "K")  # a sub-record of a record that is no aggregate


def test_what_is_not_a_well_formed_kpl_aggregate_is_a_plain_record() -> None:
    message = b"\x0a\x01K\x1a\x06\x08\x00\x1a\x02hi"  # key table ["K"], one record: index 0, data "hi"
    framed = KPL_MAGIC + message + hashlib.md5(message).digest()
    assert kpl_records(framed) == [("K", b"hi")]
    assert kpl_records(b"plain") is None
    assert kpl_records(KPL_MAGIC + message + b"\x00" * 16) is None  # the MD5 does not check
    truncated = message[:-1]
    assert kpl_records(KPL_MAGIC + truncated + hashlib.md5(truncated).digest()) is None
    assert verifies(b"hi", "K", 0, framed, "outer") and not verifies(b"hi", "K", 1, framed, "outer")
