"""Redrive: decrypt dead letters and put them back into the stream after a fix (``python -m worker redrive``).

Streaming, in stream order: the days ascending, in each day the shards ascending (parents before their
children), in each shard's day the records by (sequence number, sub-sequence number) as numbers. Only one
shard's day of keys is held at a time, ``S3_CONCURRENCY`` documents being read ahead and at most about two
requests of records (``PutPlanner``), so memory does not grow with the number of dead letters.

Records go back with their original partition key, at most one per key in a PutRecords request (it does
not order a request's entries), so each vehicle's records reach its shard in their original order. Each
object is tagged ``redrivenAt`` right after PutRecords accepted its record, and tagged objects are skipped
unless ``--force``: a redrive that stops half way is run again and puts back only what it had not. A crash
between a put and its tag puts that one record back twice, which the pipeline absorbs like any other
duplicate. Reasons outside ``REDRIVABLE`` (the record's own bytes are at fault) are skipped unless
``--force``. A data key is decrypted once per distinct encrypted key (one per original batch).

Only a dead letter that verifies goes back (``verify``, unless ``--force``): the stream
must still hold, at the dead letter's shard and sequence number, the record it was made of
(GetShardIterator AT_SEQUENCE_NUMBER, GetRecords Limit=1; ``processors.redrive.verifies`` compares the
SHA-256 of the bytes and the partition key, a KPL aggregate's sub-record included). Anyone who can write
under ``dead-letter/`` could otherwise inject records of their choosing into the stream through an
operator's redrive. Those that do not verify (forged, altered, or trimmed from the stream by its
retention) are counted by reason (``skippedUnverified``) and left. This costs two Kinesis reads per
sequence number, within the shard's 5 reads a second (botocore retries a throttled one).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from processors.dead_letter import PREFIX, shard_order, stream_order, unseal
from processors.errors import REDRIVABLE, TransientError
from processors.redrive import PutPlanner, Redrivable, verifies
from processors.signals import format_time
from worker.aws import AwsClients, aws_error_code
from worker.config import Settings
from worker.logs import event
from worker.stores.s3_dead_letters import S3DeadLetters
from worker.wiring import dead_letter_archive

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import PutRecordsRequestEntryTypeDef

log = logging.getLogger(__name__)
REDRIVEN_TAG = "redrivenAt"
DATA_KEY_CACHE = 64
"""Decrypted data keys kept: one per original batch, and a shard's day is read batch after batch."""
S3_CONCURRENCY = 16
"""Dead letters read (GetObjectTagging, GetObject) and tagged at once: S3 answers in tens of ms."""
MAX_PUT_ATTEMPTS = 10
"""PutRecords requests in a row that leave entries unaccepted before the redrive gives up (rerun it)."""


@dataclass
class RedriveReport:
    redriven: Counter[str] = field(default_factory=Counter)
    """Reason -> records put back into the stream (with ``dry_run``: that would be)."""
    already_redriven: int = 0
    """Tagged ``redrivenAt`` by an earlier redrive (not looked at again without ``force``)."""
    skipped_permanent: Counter[str] = field(default_factory=Counter)
    """Reason -> dead letters left because their reason is not ``REDRIVABLE`` (without ``force``)."""
    skipped_unverified: Counter[str] = field(default_factory=Counter)
    """Reason -> dead letters left because the stream holds no such record at their position (with
    ``verify``): forged, altered, or trimmed by the stream's retention."""
    filtered: int = 0
    """Not of the ``reason`` asked for, or an object under ``dead-letter/`` that is no dead letter."""
    requests: int = 0
    """PutRecords requests."""
    resent: int = 0
    """Entries PutRecords did not accept the first time (sent again)."""
    data_keys: int = 0
    """KMS Decrypt calls: distinct data keys."""


def redrive(
    settings: Settings,
    clients: AwsClients,
    reason: str | None = None,
    since: date | None = None,
    force: bool = False,
    dry_run: bool = False,
    verify: bool | None = None,
) -> RedriveReport:
    """Redrive the dead letters in the archive bucket (``python -m worker redrive``); see the module.
    ``verify`` defaults to ``not force``: ``--force`` also puts back what the stream no longer holds."""
    verify = not force if verify is None else verify
    dead_letters = dead_letter_archive(settings, clients)
    report = RedriveReport()
    decrypt = _data_keys(dead_letters, report)
    in_stream = _StreamRecords(clients.kinesis, settings.stream_name) if verify else None
    planner = PutPlanner()
    with ThreadPoolExecutor(S3_CONCURRENCY, thread_name_prefix="redrive") as pool:
        put = _Putter(settings, clients, dead_letters, report, planner, pool)
        for prefix in _shard_days(dead_letters, since):
            keys = _in_stream_order(dead_letters.keys(prefix), report)
            for key, doc in _read_ahead(pool, dead_letters, keys, force):
                record = _redrivable(key, doc, decrypt, report, reason, force)
                if record is None:
                    continue
                if in_stream is not None and doc is not None and not in_stream.holds(doc, record):
                    report.skipped_unverified[record.reason] += 1
                    continue
                if dry_run:
                    report.redriven[record.reason] += 1
                    continue
                planner.add(record)
                while planner.ready():
                    put(planner.take())
        while len(planner):
            put(planner.take())
    event(
        log,
        "redrive",
        stream=settings.stream_name,
        dryRun=dry_run,
        records=sum(report.redriven.values()),
        byReason=dict(report.redriven),
        alreadyRedriven=report.already_redriven,
        skippedPermanent=sum(report.skipped_permanent.values()),
        skippedUnverified=sum(report.skipped_unverified.values()),
        verified=verify,
        filtered=report.filtered,
        requests=report.requests,
        resent=report.resent,
        dataKeysDecrypted=report.data_keys,
    )
    return report


def _data_keys(dead_letters: S3DeadLetters, report: RedriveReport) -> Callable[[bytes], bytes]:
    @lru_cache(maxsize=DATA_KEY_CACHE)
    def decrypt(encrypted: bytes) -> bytes:
        report.data_keys += 1
        return dead_letters.decrypt_data_key(encrypted)

    return decrypt


def _shard_days(dead_letters: S3DeadLetters, since: date | None) -> Iterator[str]:
    """``dead-letter/{YYYY}/{MM}/{DD}/{shardId}/`` prefixes: days ascending from ``since``, then shards."""
    floor = f"{PREFIX}{since:%Y/%m/%d}/" if since else PREFIX

    def walk(prefix: str, levels: int) -> Iterator[str]:
        for folder in sorted(dead_letters.folders(prefix)):
            if folder < floor[: len(folder)]:
                continue
            if levels == 1:  # a day
                yield from sorted(dead_letters.folders(folder), key=shard_order)
            else:
                yield from walk(folder, levels - 1)

    return walk(PREFIX, 3)


def _in_stream_order(keys: Iterator[str], report: RedriveReport) -> list[str]:
    """One shard's day of keys, sorted as numbers (padded and older unpadded keys alike)."""
    ordered: list[tuple[tuple[int, int], str]] = []
    for key in keys:
        order = stream_order(key)
        if order is None:
            report.filtered += 1
        else:
            ordered.append((order, key))
    ordered.sort()
    return [key for _, key in ordered]


def _read_ahead(
    pool: ThreadPoolExecutor, dead_letters: S3DeadLetters, keys: list[str], force: bool
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(key, document) in the keys' order, ``None`` for an object an earlier redrive tagged (not read
    without ``force``): ``S3_CONCURRENCY`` objects in flight, so S3's latency is paid once per that many,
    and memory holds no more than that many documents."""

    def fetch(key: str) -> tuple[str, dict[str, Any] | None]:
        if not force and REDRIVEN_TAG in dead_letters.tags(key):
            return key, None
        return key, dead_letters.read(key)

    window: deque[Future[tuple[str, dict[str, Any] | None]]] = deque()
    for key in keys:
        window.append(pool.submit(fetch, key))
        if len(window) >= S3_CONCURRENCY:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


def _redrivable(
    key: str,
    doc: dict[str, Any] | None,
    decrypt: Callable[[bytes], bytes],
    report: RedriveReport,
    reason: str | None,
    force: bool,
) -> Redrivable | None:
    if doc is None:
        report.already_redriven += 1
        return None
    why = str(doc["reason"])
    if reason and why != reason:
        report.filtered += 1
        return None
    if why not in REDRIVABLE and not force:
        report.skipped_permanent[why] += 1
        return None
    data, partition_key = unseal(doc["original"], key, decrypt)
    return Redrivable(key, why, data, partition_key)


class _StreamRecords:
    """The record the stream holds at a dead letter's position, read once per sequence number (a KPL
    aggregate's sub-records share one)."""

    GONE = frozenset({"ResourceNotFoundException", "InvalidArgumentException"})
    """A shard deleted with its stream's retention, or a sequence number that is not one of the shard's."""

    def __init__(self, kinesis: KinesisClient, stream: str) -> None:
        self._kinesis = kinesis
        self._stream = stream
        self._last: tuple[tuple[str, str], tuple[str, bytes] | None] | None = None

    def holds(self, doc: dict[str, Any], record: Redrivable) -> bool:
        position = (str(doc["shardId"]), str(doc["sequenceNumber"]))
        if self._last is None or self._last[0] != position:
            self._last = (position, self._read(*position))
        found = self._last[1]
        return found is not None and verifies(
            record.data, record.partition_key, int(doc.get("subSequenceNumber") or 0), found[1], found[0]
        )

    def _read(self, shard_id: str, sequence_number: str) -> tuple[str, bytes] | None:
        try:
            iterator = self._kinesis.get_shard_iterator(
                StreamName=self._stream,
                ShardId=shard_id,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                StartingSequenceNumber=sequence_number,
            )["ShardIterator"]
            records = self._kinesis.get_records(ShardIterator=iterator, Limit=1)["Records"]
        except ClientError as error:
            if aws_error_code(error) in self.GONE:
                return None
            raise
        # Past the trim horizon the iterator may start at the oldest record left: only ours counts.
        if not records or records[0]["SequenceNumber"] != sequence_number:
            return None
        return records[0]["PartitionKey"], bytes(records[0]["Data"])


class _Putter:
    """Puts one planned request; tags each object whose record was accepted; hands the rest back."""

    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        dead_letters: S3DeadLetters,
        report: RedriveReport,
        planner: PutPlanner,
        pool: ThreadPoolExecutor,
    ) -> None:
        self._kinesis = clients.kinesis
        self._stream = settings.stream_name
        self._dead_letters = dead_letters
        self._report = report
        self._planner = planner
        self._pool = pool
        self._attempt = 0

    def __call__(self, request: list[Redrivable]) -> None:
        entries: list[PutRecordsRequestEntryTypeDef] = [
            {"Data": r.data, "PartitionKey": r.partition_key} for r in request
        ]
        results = self._kinesis.put_records(StreamName=self._stream, Records=entries)["Records"]
        self._report.requests += 1
        tags = {REDRIVEN_TAG: format_time(int(time.time() * 1000)), "redrivenTo": self._stream}
        accepted = [r for r, result in zip(request, results, strict=True) if "ErrorCode" not in result]
        failed = [r for r, result in zip(request, results, strict=True) if "ErrorCode" in result]
        # Every accepted record's object is tagged before the next request: a crash leaves untagged only
        # records of the request it interrupted.
        for _ in self._pool.map(lambda r: self._dead_letters.tag(r.object_key, tags), accepted):
            pass
        self._report.redriven.update(r.reason for r in accepted)
        if not failed:
            self._attempt = 0
            return
        self._attempt += 1
        if self._attempt >= MAX_PUT_ATTEMPTS:
            raise TransientError("put_records", f"{len(failed)} entries refused {MAX_PUT_ATTEMPTS} times")
        self._report.resent += len(failed)
        self._planner.put_back(failed)
        time.sleep(min(2.0, 0.05 * 2**self._attempt))
