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

import orjson

from processors.dead_letter import PREFIX, DeadLetterSink, unseal
from processors.signals import format_time
from worker.aws import AwsClients
from worker.config import Settings
from worker.logs import event
from worker.replay import StreamEntry, replay

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
    s3, bucket = clients.s3, settings.archive_bucket
    sink = DeadLetterSink(s3, clients.kms, bucket, settings.vin_key_alias, hash_key=str)
    report = RedriveReport()
    entries: list[StreamEntry] = []
    redriven_keys: list[str] = []
    start_after = f"{PREFIX}{since:%Y/%m/%d}/" if since else PREFIX
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=PREFIX, StartAfter=start_after
    ):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            doc = orjson.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
            if (reason and doc["reason"] != reason) or (REDRIVEN_TAG in tags and not force):
                report.skipped += 1
                continue
            data, partition_key = unseal(doc["original"], key, sink.decrypt_data_key)
            entries.append(StreamEntry(data, partition_key))
            redriven_keys.append(key)
            report.redriven[doc["reason"]] += 1
    if dry_run or not entries:
        return report
    replay(clients.kinesis, settings.stream_name, entries)
    now = format_time(int(time.time() * 1000))
    for key in redriven_keys:
        s3.put_object_tagging(
            Bucket=bucket,
            Key=key,
            Tagging={
                "TagSet": [
                    {"Key": REDRIVEN_TAG, "Value": now},
                    {"Key": "redrivenTo", "Value": settings.stream_name},
                ]
            },
        )
    event(log, "redrive", stream=settings.stream_name, records=len(entries), byReason=dict(report.redriven))
    return report
