"""Redrive: decrypt dead letters and put them back into the stream after a fix (``python -m worker redrive``).

Records go back in dead-letter order with their original partition key, so a vehicle's redriven records
reach its shard in order. Each redriven object is then tagged ``redrivenAt``; tagged objects are skipped
unless ``--force``. A crash between the put and the tag means a record may be redriven twice, which
the pipeline absorbs like any other duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from processors.dead_letter import PREFIX, unseal
from processors.signals import format_time
from worker.aws import AwsClients
from worker.config import Settings
from worker.logs import event
from worker.replay import StreamEntry, replay
from worker.stores.s3_dead_letters import S3DeadLetters
from worker.wiring import dead_letter_archive

log = logging.getLogger(__name__)
REDRIVEN_TAG = "redrivenAt"


@dataclass
class RedriveReport:
    redriven: Counter[str] = field(default_factory=Counter)
    """Reason -> records put back into the stream."""
    skipped: int = 0
    """Already redriven, or not matching the filters."""


def redrive(
    settings: Settings,
    clients: AwsClients,
    reason: str | None = None,
    since: date | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> RedriveReport:
    """Redrive the dead letters in the archive bucket (``python -m worker redrive``)."""
    return redrive_from(
        dead_letter_archive(settings, clients), settings, clients, reason, since, force, dry_run
    )


def redrive_from(
    dead_letters: S3DeadLetters,
    settings: Settings,
    clients: AwsClients,
    reason: str | None = None,
    since: date | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> RedriveReport:
    report = RedriveReport()
    entries: list[StreamEntry] = []
    redriven_keys: list[str] = []
    for key in dead_letters.keys(start_after=f"{PREFIX}{since:%Y/%m/%d}/" if since else PREFIX):
        doc = dead_letters.read(key)
        if (reason and doc["reason"] != reason) or (REDRIVEN_TAG in dead_letters.tags(key) and not force):
            report.skipped += 1
            continue
        data, partition_key = unseal(doc["original"], key, dead_letters.decrypt_data_key)
        entries.append(StreamEntry(data, partition_key))
        redriven_keys.append(key)
        report.redriven[doc["reason"]] += 1
    if dry_run or not entries:
        return report
    replay(clients.kinesis, settings.stream_name, entries)
    now = format_time(int(time.time() * 1000))
    for key in redriven_keys:
        dead_letters.tag(key, {REDRIVEN_TAG: now, "redrivenTo": settings.stream_name})
    event(log, "redrive", stream=settings.stream_name, records=len(entries), byReason=dict(report.redriven))
    return report
