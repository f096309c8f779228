"""Redrive at scale, against the local AWS: stream order per partition key, bounded memory, one KMS
Decrypt per original batch, permanent reasons left alone, and a rerun after a crash puts back only what
the crashed run had not tagged; and only dead letters the stream still holds at their position go back.

The scale tests quarantine made-up records (sequence numbers chosen to make text order wrong), which the
stream never held: they run with ``verify=False`` (what ``--force`` does); verification has its own test."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from processors.batch import DeadLetter
from processors.dead_letter import PREFIX, DataKey, dead_letter_key, document, seal, shard_order
from processors.errors import REDRIVABLE, RejectReason
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import AwsEnv
from worker.aws import AwsClients
from worker.redrive import REDRIVEN_TAG, redrive
from worker.stores.s3_dead_letters import S3DeadLetters
from worker.wiring import dead_letter_archive

DAY = date(2025, 3, 5)
SHARDS = ("shardId-000000000000", "shardId-000000000001", "shardId-000000000002")
"""shardId-000000000002 is shardId-000000000000's child: it carries later records of the same keys."""
BATCH = 100
SCALE = int(os.environ.get("FLEET_REDRIVE_SCALE", "1"))
"""``make fuzz`` runs these at 10x: 3,000 dead letters and a memory plateau past the planner's 1,000."""
"""Records of a shard quarantined under one data key (one batch of the record processor)."""
PERMANENT = (RejectReason.INVALID_VIN, RejectReason.MALFORMED_JSON, RejectReason.SCHEMA_VIOLATION)
TRANSIENT = tuple(sorted(REDRIVABLE))


@pytest.fixture
def env(aws_env: AwsEnv) -> AwsEnv:
    return aws_env


@dataclass(frozen=True, slots=True)
class Letter:
    day: date
    shard_id: str
    sequence_number: str
    sub: int
    partition_key: str
    reason: RejectReason
    legacy_key: bool
    """Written under the key format before padding (``{seq}.json``, ``{seq}-{sub}.json``)."""

    @property
    def data(self) -> bytes:
        return orjson.dumps([self.day.isoformat(), self.shard_id, self.sequence_number, self.sub])

    @property
    def order(self) -> tuple[date, tuple[int, str], int, int]:
        return self.day, shard_order(self.shard_id), int(self.sequence_number), self.sub

    @property
    def position(self) -> StreamPosition:
        midnight = datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC)
        arrival = int(midnight.timestamp() * 1000) + int(self.sequence_number) % 80_000_000
        return StreamPosition(self.shard_id, self.sequence_number, self.sub, arrival)

    @property
    def key(self) -> str:
        if not self.legacy_key:
            return dead_letter_key(self.position)
        sub = f"-{self.sub}" if self.sub else ""
        return f"{PREFIX}{self.day:%Y/%m/%d}/{self.shard_id}/{self.sequence_number}{sub}.json"


def letters(
    days: int, per_shard: int, permanent_share: float = 0.0, seed: int = 7, first_day: date = DAY
) -> list[Letter]:
    """``per_shard`` dead letters per shard and day. Sequence numbers grow from 1 to 8 digits (text order
    is wrong), every 20th record is a KPL aggregate of 12 sub-records (``-10`` lists before ``-2``), half
    the keys are in the old unpadded format, mixed in the same prefix."""
    rng = random.Random(seed)
    keys = {
        SHARDS[0]: [f"VEH-A-{k:03d}" for k in range(200)],
        SHARDS[1]: [f"VEH-B-{k:03d}" for k in range(200)],
    }
    keys[SHARDS[2]] = keys[SHARDS[0]]
    out = []
    for d in range(days):
        day = first_day + timedelta(days=d)
        for shard in SHARDS:
            i = count = 0
            while count < per_shard:
                sequence = str(7 + 13 * i * i)
                for sub in range(min(12 if i % 20 == 5 else 1, per_shard - count)):
                    count += 1
                    permanent = rng.random() < permanent_share
                    reason = rng.choice(PERMANENT if permanent else TRANSIENT)
                    partition_key = rng.choice(keys[shard])
                    out.append(Letter(day, shard, sequence, sub, partition_key, reason, rng.random() < 0.5))
                i += 1
    return out


def write_letters(env: AwsEnv, batch: list[Letter]) -> int:
    """Quarantine as the record processor does, a data key per ``BATCH`` records of a shard (legacy keys
    written as the old code named them). Returns the data keys generated."""
    store = S3DeadLetters(
        env.clients.s3,
        env.clients.kms,
        env.settings.archive_bucket,
        env.settings.vin_key_alias,
        lambda _: "h",
    )
    groups: dict[tuple[date, str], list[Letter]] = defaultdict(list)
    for letter in batch:
        groups[(letter.day, letter.shard_id)].append(letter)
    jobs = []
    for group in groups.values():
        for start in range(0, len(group), BATCH):
            jobs.append((store.data_key(), group[start : start + BATCH]))

    def put(job: tuple[DataKey, list[Letter]]) -> None:
        data_key, chunk = job
        for letter in chunk:
            record = KinesisRecord(letter.data, letter.partition_key, letter.position)
            dead = DeadLetter(record, letter.reason, "test")
            if not letter.legacy_key:
                store.write(dead, data_key)
                continue
            envelope = seal(data_key, letter.data, letter.partition_key, letter.key)
            body = orjson.dumps(document(dead, "h", envelope))
            env.clients.s3.put_object(Bucket=env.settings.archive_bucket, Key=letter.key, Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, jobs))
    return len(jobs)


def stream(env: AwsEnv) -> Iterator[tuple[str, bytes]]:
    """(partition key, data) of every record in the stream, each shard in its order."""
    kinesis, name = env.clients.kinesis, env.settings.stream_name
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while True:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            for record in page["Records"]:
                yield record["PartitionKey"], bytes(record["Data"])
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page["NextShardIterator"]


def per_key(records: Iterator[tuple[str, bytes]] | list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for partition_key, data in records:
        grouped[partition_key].append(data)
    return dict(grouped)


def expected_per_key(batch: list[Letter]) -> dict[str, list[bytes]]:
    return per_key([(x.partition_key, x.data) for x in sorted(batch, key=lambda x: x.order)])


def tagged(env: AwsEnv, batch: list[Letter]) -> set[str]:
    s3, bucket = env.clients.s3, env.settings.archive_bucket

    def tags(key: str) -> tuple[str, bool]:
        tag_set = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        return key, REDRIVEN_TAG in {t["Key"] for t in tag_set}

    with ThreadPoolExecutor(8) as pool:
        return {key for key, is_tagged in pool.map(tags, [x.key for x in batch]) if is_tagged}


@pytest.mark.timeout(900)  # 3,000 objects at make fuzz's scale on a shared machine
def test_dead_letters_go_back_in_stream_order_per_key_one_decrypt_per_batch(env: AwsEnv) -> None:
    batch = letters(days=1, per_shard=100 * SCALE, permanent_share=0.1)
    assert len({x.key for x in batch}) == len(batch) == 300 * SCALE
    assert sorted(x.key for x in batch) != [x.key for x in sorted(batch, key=lambda x: x.order)]
    data_keys = write_letters(env, batch)
    permanent = [x for x in batch if x.reason not in REDRIVABLE]
    redrivable = [x for x in batch if x.reason in REDRIVABLE]
    assert data_keys == 3 * SCALE and 0.05 * len(batch) < len(permanent) < 0.15 * len(batch)
    env.aws.app.reset_counts()

    report = redrive(env.settings, env.clients, verify=False)

    print(
        f"{len(batch)} dead letters in {data_keys} batches: {sum(report.redriven.values())} redriven in "
        f"{report.requests} PutRecords, {report.data_keys} Decrypt, skippedPermanent "
        f"{sum(report.skipped_permanent.values())}"
    )
    assert sum(report.redriven.values()) == len(redrivable)
    assert sum(report.skipped_permanent.values()) == len(permanent)
    assert report.already_redriven == report.filtered == 0
    assert env.aws.app.requests[("kms", "Decrypt")] == report.data_keys == data_keys
    assert env.aws.app.requests[("kinesis", "PutRecords")] == report.requests
    assert report.requests >= len(redrivable) / 500
    assert per_key(stream(env)) == expected_per_key(redrivable)  # each record once, each key in order
    assert tagged(env, batch) == {x.key for x in redrivable}


def test_a_second_redrive_reads_no_tagged_object_and_force_puts_permanent_reasons_back(env: AwsEnv) -> None:
    batch = letters(days=1, per_shard=100, permanent_share=0.3)
    write_letters(env, batch)
    permanent = [x for x in batch if x.reason not in REDRIVABLE]
    redrivable = [x for x in batch if x.reason in REDRIVABLE]
    first = redrive(env.settings, env.clients, verify=False)
    assert sum(first.redriven.values()) == len(redrivable)
    assert first.skipped_permanent == Counter(str(x.reason) for x in permanent)
    env.aws.app.reset_counts()

    again = redrive(env.settings, env.clients, verify=False)
    assert sum(again.redriven.values()) == again.requests == 0
    assert again.already_redriven == len(redrivable)
    assert sum(again.skipped_permanent.values()) == len(permanent)
    assert env.aws.app.requests[("s3", "GetObject")] == len(permanent)  # a tagged object is not read

    later = redrive(env.settings, env.clients, verify=False, since=DAY + timedelta(days=1), force=True)
    assert (later.redriven, later.skipped_permanent, env.aws.app.requests[("s3", "GetObject")]) == (
        {},
        {},
        len(permanent),
    )  # --since: earlier days are not even listed
    dry = redrive(env.settings, env.clients, verify=False, since=DAY, force=True, dry_run=True)
    assert sum(dry.redriven.values()) == len(batch) and dry.requests == 0

    forced = redrive(
        env.settings, env.clients, verify=False, reason=str(RejectReason.INVALID_VIN), force=True
    )
    invalid = [x for x in batch if x.reason == RejectReason.INVALID_VIN]
    assert dict(forced.redriven) == {"invalid_vin": len(invalid)}
    assert forced.filtered == len(batch) - len(invalid)
    first_put, then = expected_per_key(redrivable), expected_per_key(invalid)
    assert per_key(stream(env)) == {k: first_put.get(k, []) + then.get(k, []) for k in {*first_put, *then}}


class Crash(Exception):
    pass


class CrashingKinesis:
    """The redrive's Kinesis client, dying before its ``puts``-th + 1 PutRecords."""

    def __init__(self, kinesis: Any, puts: int) -> None:
        self._kinesis = kinesis
        self.puts = puts

    def put_records(self, **request: Any) -> Any:
        if self.puts == 0:
            raise Crash
        self.puts -= 1
        return self._kinesis.put_records(**request)


def test_a_rerun_after_a_crash_puts_back_only_what_was_not_tagged(env: AwsEnv) -> None:
    batch = letters(days=2, per_shard=100 * SCALE)
    write_letters(env, batch)
    clients = AwsClients(env.settings)
    clients.__dict__["kinesis"] = CrashingKinesis(clients.kinesis, puts=SCALE)

    with pytest.raises(Crash):
        redrive(env.settings, clients, verify=False)

    first = list(stream(env))
    done = tagged(env, batch)
    assert 0 < len(first) == len(done) < len(batch)  # every accepted record was tagged, and only those
    report = redrive(env.settings, env.clients, verify=False)
    assert report.already_redriven == len(done)
    assert sum(report.redriven.values()) == len(batch) - len(done)
    everything = list(stream(env))
    assert Counter(everything) == Counter((x.partition_key, x.data) for x in batch)  # each exactly once
    assert per_key(everything) == expected_per_key(batch)


def test_a_request_puts_one_record_per_partition_key(env: AwsEnv) -> None:
    """One vehicle's 30 records take 30 requests, each holding one record of every other key waiting."""
    keys = ["VEH-ONE" if i < 30 else f"VEH-{i}" for i in range(60)]
    batch = [
        Letter(DAY, SHARDS[0], str(100 + i), 0, key, RejectReason.UNWRITABLE, legacy_key=False)
        for i, key in enumerate(keys)
    ]
    write_letters(env, batch)
    report = redrive(env.settings, env.clients, verify=False)
    assert report.requests == 30
    assert per_key(list(stream(env))) == expected_per_key(batch)


MEASURE = """
import json, os, tracemalloc
from devtools.settings import settings_from
from worker import redrive
from worker.aws import AwsClients

settings = settings_from(os.environ)
clients = AwsClients(settings)
# Untraced warm-up: boto's service models and connections are loaded once, whatever the object count.
clients.s3.list_objects_v2(Bucket=settings.archive_bucket, MaxKeys=1)
clients.kinesis.describe_stream_summary(StreamName=settings.stream_name)
clients.kms.describe_key(KeyId=settings.vin_key_alias)
peaks = []
shard_days = redrive._shard_days

def sampled(*args):
    for prefix in shard_days(*args):
        peaks.append(tracemalloc.get_traced_memory()[1])  # the peak so far, before this shard's day
        yield prefix

redrive._shard_days = sampled
tracemalloc.start()
report = redrive.redrive(settings, clients, verify=False)
peaks.append(tracemalloc.get_traced_memory()[1])
print(json.dumps({"redriven": sum(report.redriven.values()), "peaks": peaks}))
"""


@pytest.mark.timeout(900)
@pytest.mark.skipif(SCALE < 7, reason="needs > 1,000 dead letters: make fuzz runs it")
def test_peak_memory_does_not_grow_with_the_number_of_dead_letters(env: AwsEnv) -> None:
    """The planner holds at most 1,000 records: once that many went by, the peak stays where it is."""
    days, per_shard = 7, 100
    batch = letters(days=days, per_shard=per_shard)
    write_letters(env, batch)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE], env=env.environ, capture_output=True, text=True, check=True
    )
    measured = json.loads(result.stdout)
    peaks = measured["peaks"]
    assert measured["redriven"] == len(batch) and len(peaks) == days * len(SHARDS) + 1
    saturated = peaks[12]  # after 12 shard-days, 1,200 objects
    print(f"peak after 1200 objects {saturated} B, after {len(batch)} objects {peaks[-1]} B")
    assert peaks[-1] <= saturated * 1.05 + 32 * 1024  # 75% more objects, the same peak


def kpl_aggregate(records: list[tuple[str, bytes]]) -> bytes:
    """A KPL aggregated record of ``records`` (partition key, data): the magic, the protobuf, its MD5."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            low, n = n & 0x7F, n >> 7
            out += bytes([low | (0x80 if n else 0)])
            if not n:
                return out

    def field(number: int, value: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(value)) + value

    keys = sorted({key for key, _ in records})
    message = b"".join(field(1, key.encode()) for key in keys)
    for key, data in records:
        message += field(3, varint(1 << 3) + varint(keys.index(key)) + field(3, data))
    return bytes.fromhex("f3899ac2") + message + hashlib.md5(message).digest()


def test_only_dead_letters_the_stream_holds_at_their_position_are_redriven(env: AwsEnv) -> None:
    """A forged dead letter (bytes the stream does not hold there, or a position it never had) stays and is
    counted; a genuine one, a KPL aggregate's sub-record included, goes back."""
    kinesis, stream_name = env.clients.kinesis, env.settings.stream_name
    aggregated = [("VEH-K-1", b'{"sub": 0}'), ("VEH-K-2", b'{"sub": 1}')]
    sent = [
        ("VEH-G", b'{"genuine": 1}'),
        ("VEH-F", b'{"in the stream": 1}'),
        ("VEH-K", kpl_aggregate(aggregated)),
    ]
    results = kinesis.put_records(
        StreamName=stream_name, Records=[{"PartitionKey": key, "Data": data} for key, data in sent]
    )["Records"]
    arrival = int(datetime(2025, 3, 5, tzinfo=UTC).timestamp() * 1000)
    genuine, other, kpl = (StreamPosition(r["ShardId"], r["SequenceNumber"], 0, arrival) for r in results)
    made_up = StreamPosition(genuine.shard_id, str(int(genuine.sequence_number) + 7), 0, arrival)
    quarantined = [
        (genuine, "VEH-G", b'{"genuine": 1}'),  # redriven
        (other, "VEH-F", b'{"forged": 1}'),  # forged: other bytes than the stream's at that position
        (made_up, "VEH-G", b'{"genuine": 1}'),  # forged: a position the shard never had
        (StreamPosition(kpl.shard_id, kpl.sequence_number, 1, arrival), *aggregated[1]),  # redriven
        (StreamPosition(kpl.shard_id, kpl.sequence_number, 0, arrival), "VEH-K-1", b'{"sub": 9}'),  # forged
    ]
    store = dead_letter_archive(env.settings, env.clients, lambda _: "h")
    data_key = store.data_key()
    for position, key, data in quarantined:
        store.write(DeadLetter(KinesisRecord(data, key, position), RejectReason.UNWRITABLE, "test"), data_key)

    report = redrive(env.settings, env.clients)

    assert report.redriven == {"unwritable": 2}
    assert report.skipped_unverified == {"unwritable": 3}
    redriven = Counter(stream(env)) - Counter(sent)
    assert redriven == Counter([("VEH-G", b'{"genuine": 1}'), aggregated[1]])
    assert tagged_keys(env) == {dead_letter_key(quarantined[0][0]), dead_letter_key(quarantined[3][0])}


def tagged_keys(env: AwsEnv) -> set[str]:
    s3, bucket = env.clients.s3, env.settings.archive_bucket
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("Contents", [])]
    return {
        key
        for key in keys
        if REDRIVEN_TAG in {t["Key"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    }
