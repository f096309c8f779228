"""The orphan sweep: complete trips of vehicles that went silent (``python -m worker sweep-orphans``).

A vehicle that stops sending mid-trip (parked and asleep, out of coverage) never delivers the record
that would complete its trip. The sweep completes, with ``endReason: orphan``, the trips of vehicles whose
newest record arrived ``FLEET_TRIP_IDLE_SECONDS`` (default ``2 x gap``) ago or longer: the item's
``heardAt`` (the stream's clock), not the time it was written.

**Work grows with open trips, not with the fleet.** ``trip-state`` holds open trips only (an idle
vehicle's bookkeeping is its mark in ``vin-mapping``, which the sweep never reads), and the sweep finds
the silent ones through the sparse index ``open-trips-by-idle`` (PK ``sweepShard`` 0..15, SK
``idleAfter``): 16 Queries in parallel, then one strongly consistent BatchGetItem per 100 candidates.

It never races a live processor into a double or torn archive: its first write claims the trip (state
IDLE, the completed trip in the outbox) conditionally on the ``lastUpdate`` it read. If the processor
wrote in between, the claim fails and the trip is left alone (``lostRace``); if the claim wins, the
processor's next write fails instead and it re-plans on top of the claimed state. Archive, index, mark
and the item's deletion then follow through the processor's own commit code (``worker.trip_commit``).

**It does nothing while the consumer is behind.** "Silent" means "no record received for the idle
time", so while a shard's consumer lags (an outage, a backlog) its vehicles' trips look silent too, and
swept they would be cut differently from one clean pass. So the sweep first reads where each shard's
consumer is (the KCL lease table's checkpoints) and the first record after it (GetShardIterator
AFTER_SEQUENCE_NUMBER + GetRecords Limit=1): if that record arrived longer ago than the limit (or
MillisBehindLatest says so), it logs ``sweep_skipped`` and exits 0 without reading trip-state. The limit
is the gap plus the lag a healthy consumer's checkpoint has by design (``skip_limit_ms``): checkpoints
wait for the allowed lateness L and come every ``checkpoint_every_seconds``, so the first unprocessed
record of a consumer that keeps up is up to L + that interval old.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from processors.signals import parse_time
from processors.trip_items import SWEEP_SHARDS, silent_until
from processors.trips import TripStateMachine
from schemas.items import TripStateItem
from worker.aws import AwsClients
from worker.config import Settings
from worker.leases import read_leases
from worker.logs import event
from worker.retry import DEFAULT, WRITE, Retrier
from worker.trip_commit import (
    TripArchiver,
    TripCommitter,
    commit_with_replans,
    completion_plan,
    reclaim,
)
from worker.wiring import TripStores, trip_stores

log = logging.getLogger(__name__)

PARALLEL = 16


@dataclass
class SweepReport:
    shards: int = 0
    """Stream shards whose consumer position was checked."""
    candidates: int = 0
    """Vehicles the index named as silent."""
    items_read: int = 0
    """trip-state items read (the candidates still stored)."""
    requests: int = 0
    """Every request the sweep made (frontier, queries, reads, commits)."""
    orphaned: list[str] = field(default_factory=list)
    """Trip ids completed as orphans."""
    finished: list[str] = field(default_factory=list)
    """Trip ids whose pending archive (left by a crashed writer) was completed."""
    lost_race: int = 0
    skipped: str | None = None
    """Why the sweep did nothing (a shard's consumer behind), else None."""


@dataclass(frozen=True, slots=True)
class Frontier:
    shards: int
    requests: int
    behind: tuple[str, int] | None
    """(shard id, ms behind) of the first shard found behind the limit, else None."""


def stream_frontier(settings: Settings, clients: AwsClients, now_ms: int, limit_ms: int) -> Frontier:
    """Where each shard's consumer is: the oldest unprocessed record's arrival, per leased shard."""
    leases = read_leases(clients.dynamodb, settings.application_name)
    kinesis = clients.kinesis
    shards, requests = 0, 1
    for shard_id, lease in sorted(leases.items()):
        checkpoint = lease.checkpoint
        if checkpoint == "SHARD_END":
            continue
        shards += 1
        where: dict[str, Any]
        if checkpoint and checkpoint.isdigit():
            where = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": checkpoint}
        elif checkpoint == "LATEST":
            where = {"ShardIteratorType": "LATEST"}
        else:  # no checkpoint yet, TRIM_HORIZON, AT_TIMESTAMP: everything retained may be unprocessed
            where = {"ShardIteratorType": "TRIM_HORIZON"}
        iterator = kinesis.get_shard_iterator(StreamName=settings.stream_name, ShardId=shard_id, **where)
        page = kinesis.get_records(ShardIterator=iterator["ShardIterator"], Limit=1)
        requests += 2
        behind = int(page.get("MillisBehindLatest", 0))
        if page["Records"]:
            arrival = page["Records"][0]["ApproximateArrivalTimestamp"]
            behind = max(behind, now_ms - int(arrival.timestamp() * 1000))
        if behind > limit_ms:
            return Frontier(shards, requests, (shard_id, behind))
    return Frontier(shards, requests, None)


def skip_limit_ms(settings: Settings) -> int:
    """How far behind a shard's first unprocessed record may be before the sweep skips: a trip gap, plus
    the designed lag of the checkpoint (the allowed lateness L, then up to one checkpoint interval)."""
    checkpoint_ms = round(settings.checkpoint_every_seconds * 1000)
    return settings.trip_gap_seconds * 1000 + settings.trip_lateness_ms + checkpoint_ms


def sweep_orphans(
    settings: Settings, clients: AwsClients, now_ms: int | None = None, idle_ms: int | None = None
) -> SweepReport:
    """The sweep on AWS (``python -m worker sweep-orphans``): skipped while a shard's consumer is further
    behind than ``skip_limit_ms`` (a gap past its designed lag), else ``sweep`` over the stores ``wiring``
    builds."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    limit_ms = skip_limit_ms(settings)
    frontier = stream_frontier(settings, clients, now, limit_ms)
    if frontier.behind is not None:
        shard_id, behind = frontier.behind
        report = SweepReport(shards=frontier.shards, requests=frontier.requests, skipped=shard_id)
        event(
            log,
            "sweep_skipped",
            shard=shard_id,
            behindSeconds=behind // 1000,
            limitSeconds=limit_ms // 1000,
            reason="a shard's first unprocessed record is older than the trip gap plus the checkpoint's "
            "designed lag (allowed lateness + checkpoint interval): its trips would look silent",
        )
        return report
    return sweep(
        settings,
        trip_stores(settings, clients),
        now,
        idle_ms,
        shards=frontier.shards,
        requests=frontier.requests,
    )


def sweep(
    settings: Settings,
    stores: TripStores,
    now_ms: int | None = None,
    idle_ms: int | None = None,
    retrier: Retrier = DEFAULT,
    shards: int = 0,
    requests: int = 0,
) -> SweepReport:
    """Complete the trips of vehicles silent for ``idle_ms`` (default ``FLEET_TRIP_IDLE_SECONDS``) and
    finish pending outboxes. Each claim goes through ``commit_with_replans``, the record processor's own
    commit loop: when our claim landed but a later step failed and was retried, it meets our own claim and
    finishes it; when the vehicle's processor wrote meanwhile, the trip is left to it (``lost_race``)."""
    idle = idle_ms if idle_ms is not None else settings.trip_idle_ms
    thresholds = settings.trip_thresholds()
    machine = TripStateMachine(thresholds)
    committer = TripCommitter(stores.trips, TripArchiver(stores.trail, stores.archive, thresholds))
    commit = retrier.wrap(WRITE, committer.commit)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    # idleAfter is heardAt rounded up to 5 minutes: the index names a superset of the silent vehicles,
    # whatever ``idle``; the exact test is made on the item read (``silent``).
    until_s = silent_until(now, idle)
    report = SweepReport(shards=shards, requests=requests)
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="sweep") as pool:
        found = list(pool.map(partial(stores.trips.silent, until_s=until_s), range(SWEEP_SHARDS)))
        candidates = sorted({pv for names, _ in found for pv in names})
        report.candidates = len(candidates)
        report.requests += sum(made for _, made in found)
        items, made = stores.trips.open_items(candidates) if candidates else ({}, 0)
        report.requests += made
        report.items_read = len(items)
        due = [item for item in items.values() if item.outbox or silent(item, now, idle)]
        for outcome in pool.map(partial(_complete, commit, machine, now), due):
            _count(report, *outcome)
    event(
        log,
        "sweep",
        shards=report.shards,
        candidates=report.candidates,
        itemsRead=report.items_read,
        requests=report.requests,
        orphaned=len(report.orphaned),
        finished=len(report.finished),
        lostRace=report.lost_race,
    )
    return report


def silent(item: TripStateItem, now_ms: int, idle_ms: int) -> bool:
    """No record of the vehicle arrived for ``idle_ms`` (an item of an older version: not written for it)."""
    heard = item.heardAt if item.heardAt is not None else parse_time(item.lastUpdate)
    return heard + idle_ms <= now_ms


def _complete(
    commit: Callable[..., tuple[str | None, int]], machine: TripStateMachine, now_ms: int, item: TripStateItem
) -> tuple[TripStateItem, str | None, int, bool]:
    """Claim and finish one vehicle: (item, orphan trip id, requests, lost the race)."""
    plan, orphan = completion_plan(item, now_ms, machine)
    commits = commit_with_replans(
        [plan], commit, partial(reclaim, orphan=orphan, now_ms=now_ms, machine=machine)
    )
    lost = bool(commits.contended)  # the vehicle spoke up meanwhile: its processor owns the trip
    return item, orphan.trip_id if orphan else None, commits.requests, lost


def _count(report: SweepReport, item: TripStateItem, orphan: str | None, made: int, lost: bool) -> None:
    report.requests += made
    if lost:
        report.lost_race += 1
        return
    report.finished += [c.tripId for c in item.outbox]
    if orphan:
        report.orphaned.append(orphan)
