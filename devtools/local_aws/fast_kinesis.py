"""moto's Kinesis shards without their quadratic cost, for the full-shard bench (``FastLocalAws``).

moto 5 keeps a shard's records in an ``OrderedDict`` by sequence number and, on every ``PutRecord`` (each
record of a ``PutRecords``), lists every key to find the last one; every ``GetRecords`` walks the records
from the first. A shard fed 1,000 records/s holds 180,000 after three minutes: one PutRecords of 500 took
250 ms with 25,000 stored (6 ms with none), and the local AWS was busy 88 s of a 93 s window at one shard.

The same answers, found directly: the last key of the ``OrderedDict`` (keys are assigned increasing, in
insertion order), and the first record after a sequence number by bisecting a list of the keys kept beside
it (rebuilt whenever the dict is replaced or its size no longer matches, as resharding does). What a
caller sees does not change: the same records, the same order, the same ``MillisBehindLatest``
(``tests/integration/test_fast_tables.py`` reads a shard both ways).
"""

from __future__ import annotations

import bisect
from typing import Any

_patched = False
ORIGINAL: dict[str, Any] = {}
"""moto's own methods, as they were before the patch (for the test that compares both)."""


def _keys(shard: Any) -> list[int]:
    """The shard's sequence numbers in order, kept beside its records."""
    keys: list[int] | None = shard.__dict__.get("_fast_keys")
    if (
        keys is None
        or shard.__dict__.get("_fast_keys_of") is not shard.records
        or len(keys) != len(shard.records)
    ):
        keys = list(shard.records)
        shard.__dict__["_fast_keys"], shard.__dict__["_fast_keys_of"] = keys, shard.records
    return keys


def get_max_sequence_number(shard: Any) -> int:
    return next(reversed(shard.records)) if shard.records else 0


def get_min_sequence_number(shard: Any) -> int:
    return next(iter(shard.records)) if shard.records else 0


def put_record(shard: Any, partition_key: str, data: bytes, explicit_hash_key: str) -> str:
    from moto.kinesis.models import Record

    keys = _keys(shard)
    sequence_number = get_max_sequence_number(shard) + 1
    shard.records[sequence_number] = Record(partition_key, data, sequence_number, explicit_hash_key)
    keys.append(sequence_number)
    return str(sequence_number)


def get_records(shard: Any, last_sequence_id: str, limit: int | None) -> tuple[list[Any], int, int]:
    """moto's ``Shard.get_records``: the records after ``last_sequence_id`` (at most ``limit``), the last
    one's sequence number, and how far the last returned record is behind the newest one (ms)."""
    keys = _keys(shard)
    last = int(last_sequence_id)
    start = bisect.bisect_right(keys, last)
    end = len(keys) if limit is None else min(len(keys), start + limit)
    results = [shard.records[key] for key in keys[start:end]]
    if not results:
        return [], last, 0
    newest = shard.records[keys[-1]]
    behind = (newest.created_at - results[-1].created_at).total_seconds()
    return results, results[-1].sequence_number, int(behind * 1000)


def patch_kinesis_shards() -> None:
    """Replace moto's ``Shard`` methods by the ones above (once per process)."""
    global _patched  # noqa: PLW0603 - patch moto's class once per process
    if _patched:
        return
    from moto.kinesis import models

    for name in ("get_max_sequence_number", "get_min_sequence_number", "put_record", "get_records"):
        ORIGINAL[name] = getattr(models.Shard, name)
    setattr(models.Shard, "get_max_sequence_number", get_max_sequence_number)  # noqa: B010 - patching moto
    setattr(models.Shard, "get_min_sequence_number", get_min_sequence_number)  # noqa: B010
    setattr(models.Shard, "put_record", put_record)  # noqa: B010
    setattr(models.Shard, "get_records", get_records)  # noqa: B010
    _patched = True
