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

**It does nothing while a consumer is behind, and reads no record to know it.** "Silent" means "no record
received for the idle time", so while a shard's consumer lags (an outage, a backlog) its vehicles' trips
look silent too, and swept they would be cut differently from one clean pass. The stream's partition key
is the VIN, so the sweep never reads the stream (its role cannot). Instead it reads the KCL lease table
(which shards are leased and not ended) and, in one BatchGetItem, the progress each shard's record
processor reports in ``vin-mapping`` at every checkpoint (``processors.frontier``): the stream-clock
instant ``through`` before which every record of the shard was received and is in trip-state. A shard
whose report is missing, or older than the limit (its consumer died or hangs: it reports no more), or
whose ``through`` is older than the limit (it lags) is behind: the sweep logs ``sweep_skipped`` (the
furthest shard, the reason, how far behind) and exits 0 without reading trip-state. The limit is a trip
gap past the lag a healthy consumer's report has by design, one checkpoint interval and its spread
(``skip_limit_ms``: reports come with checkpoints, up to a sixth of the interval after the checkpoint was
called for): ``now - through > gap + 7/6 checkpoint interval``, 370 s by default. (Judged
by the first record after each shard's checkpoint, the same consumer is the allowed lateness L further
behind, since a checkpoint waits for the records the exact trip machine has not consumed: that rule's
limit, gap + L + checkpoint interval, skips exactly when this one does.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from processors.frontier import Behind, BehindReason, behind
from processors.ports import ProgressStore
from processors.signals import parse_time
from processors.trip_items import SWEEP_SHARDS, silent_until
from processors.trips import TripStateMachine
from schemas.items import TripStateItem
from worker.aws import AwsClients
from worker.checkpoint import spread_ms
from worker.config import Settings
from worker.leases import Lease, read_leases
from worker.logs import event
from worker.retry import DEFAULT, WRITE, Retrier
from worker.trip_commit import (
    TripArchiver,
    TripCommitter,
    commit_with_replans,
    completion_plan,
    reclaim,
)
from worker.wiring import TripStores, progress_store, trip_stores

log = logging.getLogger(__name__)

PARALLEL = 16


@dataclass
class SweepReport:
    shards: int = 0
    """Leased shards whose consumer's progress was checked."""
    candidates: int = 0
    """Vehicles the index named as silent."""
    items_read: int = 0
    """trip-state items read (the candidates still stored)."""
    requests: int = 0
    """Every request the sweep made (leases and progress, queries, reads, commits)."""
    orphaned: list[str] = field(default_factory=list)
    """Trip ids completed as orphans."""
    finished: list[str] = field(default_factory=list)
    """Trip ids whose pending archive (left by a crashed writer) was completed."""
    lost_race: int = 0
    skipped: str | None = None
    """The shard whose consumer is behind when the sweep did nothing, else None."""
    skip_reason: BehindReason | None = None


@dataclass(frozen=True, slots=True)
class Frontier:
    shards: int
    """Leased shards not ended: those whose consumer was checked."""
    requests: int
    """Requests made to read the progress reports (the lease table's not included)."""
    behind: Behind | None
    """The shard furthest behind the limit (no report first), else None."""
    behind_shards: int = 0
    """How many shards are behind the limit."""


def consumer_frontier(
    leases: Mapping[str, Lease], progress: ProgressStore, now_ms: int, limit_ms: int
) -> Frontier:
    """Whether each leased, unfinished shard's consumer keeps up at ``now_ms``, from its progress report
    (``processors.frontier.behind``), without a read of the stream."""
    shards = sorted(shard for shard, lease in leases.items() if lease.checkpoint != "SHARD_END")
    if not shards:
        return Frontier(0, 0, None)
    reports, requests = progress.read(shards)
    late = [b for shard in shards if (b := behind(shard, reports.get(shard), now_ms, limit_ms)) is not None]
    # No report at all first: nothing is known of that consumer; then the furthest behind.
    worst = max(late, key=lambda b: (b.behind_ms is None, b.behind_ms or 0), default=None)
    return Frontier(len(shards), requests, worst, len(late))


SKIP_DETAIL: dict[BehindReason, str] = {
    BehindReason.NO_PROGRESS: "the shard's record processor has reported no progress yet: its trips "
    "could look silent",
    BehindReason.NOT_REPORTING: "the shard's record processor has not reported progress for longer than "
    "the trip gap plus the checkpoint interval (none runs, or it is stuck): its trips would look silent",
    BehindReason.LAGGING: "the shard's consumer received nothing newer than the trip gap plus the "
    "checkpoint interval ago: its trips would look silent",
}


def skip_limit_ms(settings: Settings) -> int:
    """How far behind ``now`` a shard's progress (``through``) may be before the sweep skips: a trip gap
    past the designed lag of the reports, one checkpoint interval and its spread (a report comes with each
    checkpoint, once everything received when it was called for is written)."""
    checkpoint_ms = round(settings.checkpoint_every_seconds * 1000)
    return settings.trip_gap_seconds * 1000 + checkpoint_ms + spread_ms(settings.checkpoint_every_seconds)


def sweep_orphans(
    settings: Settings, clients: AwsClients, now_ms: int | None = None, idle_ms: int | None = None
) -> SweepReport:
    """The sweep on AWS (``python -m worker sweep-orphans``): skipped while a shard's consumer is further
    behind than ``skip_limit_ms`` (a gap past its designed lag), else ``sweep`` over the stores ``wiring``
    builds."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    limit_ms = skip_limit_ms(settings)
    leases = read_leases(clients.dynamodb, settings.application_name)
    frontier = consumer_frontier(leases, progress_store(settings, clients), now, limit_ms)
    requests = 1 + frontier.requests  # the lease table's Scan
    if frontier.behind is not None:
        late = frontier.behind
        report = SweepReport(
            shards=frontier.shards, requests=requests, skipped=late.shard_id, skip_reason=late.reason
        )
        event(
            log,
            "sweep_skipped",
            shard=late.shard_id,
            reason=str(late.reason),
            behindSeconds=late.behind_ms // 1000 if late.behind_ms is not None else None,
            limitSeconds=limit_ms // 1000,
            shardsBehind=frontier.behind_shards,
            detail=SKIP_DETAIL[late.reason],
        )
        return report
    return sweep(
        settings,
        trip_stores(settings, clients),
        now,
        idle_ms,
        shards=frontier.shards,
        requests=requests,
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
