"""``python -m worker status``: each shard's lease owner, checkpoint and how far the checkpoint is behind.

Leases come from the KCL's lease table (named after the application). "Behind" is counted by reading the
shard from the checkpoint on: a few GetRecords pages at most (they share the shard's 5 reads a second
with the workers), so on a shard far behind it is a lower bound. Nothing here is written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker.aws import AwsClients
from worker.config import Settings
from worker.leases import read_leases
from worker.shards import shards_of

MAX_PAGES = 4
PAGE_RECORDS = 10_000


@dataclass(frozen=True, slots=True)
class Behind:
    records: int
    exact: bool
    """False: the shard holds more than the pages read (``records`` is a lower bound)."""
    oldest_age_ms: int | None
    """Age of the oldest record not yet checkpointed (None: nothing behind, or not known)."""


@dataclass(frozen=True, slots=True)
class ShardStatus:
    shard_id: str
    open: bool
    owner: str | None
    checkpoint: str | None
    """A sequence number, or TRIM_HORIZON / LATEST / AT_TIMESTAMP / SHARD_END; None: no lease yet."""
    owner_switches: int | None
    behind: Behind | None
    """None when it cannot be counted (LATEST, AT_TIMESTAMP, a shard gone from the stream)."""


def shard_status(settings: Settings, clients: AwsClients) -> list[ShardStatus]:
    """One entry per shard of the stream, plus leases of shards no longer in it."""
    held = read_leases(clients.dynamodb, settings.application_name)
    shards = {shard["ShardId"]: shard for shard in shards_of(settings, clients)}
    statuses = []
    for shard_id in sorted(set(shards) | set(held)):
        lease = held.get(shard_id)
        checkpoint = lease.checkpoint if lease else None
        shard = shards.get(shard_id)
        is_open = shard is not None and "EndingSequenceNumber" not in shard.get("SequenceNumberRange", {})
        behind = None
        if shard is not None:
            behind = records_behind(settings, clients, shard_id, checkpoint)
        statuses.append(
            ShardStatus(
                shard_id=shard_id,
                open=is_open,
                owner=lease.owner if lease else None,
                checkpoint=checkpoint,
                owner_switches=lease.owner_switches if lease else None,
                behind=behind,
            )
        )
    return statuses


def records_behind(
    settings: Settings, clients: AwsClients, shard_id: str, checkpoint: str | None
) -> Behind | None:
    if checkpoint == "SHARD_END":
        return Behind(0, True, None)
    if checkpoint is None:  # no lease yet: a new lease starts at the configured position
        checkpoint = settings.kcl_initial_position
    start: dict[str, Any] = {"StreamName": settings.stream_name, "ShardId": shard_id}
    if checkpoint.isdigit():
        start |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": checkpoint}
    elif checkpoint == "TRIM_HORIZON":
        start |= {"ShardIteratorType": "TRIM_HORIZON"}
    else:
        return None  # LATEST, AT_TIMESTAMP: "behind" has no starting point
    iterator = clients.kinesis.get_shard_iterator(**start).get("ShardIterator")
    count, oldest_ms, caught_up = 0, None, False
    for page in _pages(clients, iterator):
        records = page["Records"]
        if records and oldest_ms is None:
            oldest_ms = int(records[0]["ApproximateArrivalTimestamp"].timestamp() * 1000)
        count += len(records)
        if page.get("MillisBehindLatest", 0) == 0 or "NextShardIterator" not in page:
            caught_up = True
            break
    oldest_age = int(time.time() * 1000) - oldest_ms if oldest_ms is not None else None
    return Behind(count, caught_up, oldest_age)


def _pages(clients: AwsClients, iterator: str | None) -> Iterator[Any]:
    for _ in range(MAX_PAGES):
        if not iterator:
            return
        page = clients.kinesis.get_records(ShardIterator=iterator, Limit=PAGE_RECORDS)
        yield page
        iterator = page.get("NextShardIterator")


def short_sequence(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "-"
    return checkpoint if len(checkpoint) <= 20 else f"{checkpoint[:6]}…{checkpoint[-12:]}"


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = max(0, ms) // 1000
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def render(settings: Settings, statuses: list[ShardStatus]) -> list[str]:
    """A readable table, one row per shard."""
    header = ("SHARD", "STATE", "LEASE OWNER", "CHECKPOINT", "SWITCHES", "BEHIND", "OLDEST UNCHECKPOINTED")
    rows = [header]
    for status in statuses:
        behind = status.behind
        count = "?" if behind is None else f"{behind.records}" + ("" if behind.exact else "+")
        rows.append(
            (
                status.shard_id,
                "open" if status.open else "closed",
                status.owner or "-",
                short_sequence(status.checkpoint),
                "-" if status.owner_switches is None else str(status.owner_switches),
                count,
                duration(behind.oldest_age_ms if behind else None),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    leased = sum(1 for s in statuses if s.checkpoint is not None)
    lines.append("")
    lines.append(
        f"stream {settings.stream_name}: {sum(1 for s in statuses if s.open)} open shard(s); "
        f"lease table {settings.application_name}: {leased} lease(s)"
        + ("" if leased else " (no worker has taken a lease yet)")
    )
    return lines
