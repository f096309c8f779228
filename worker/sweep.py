"""The orphan sweep: complete trips of vehicles that went silent (``python -m worker sweep-orphans``).

A vehicle that stops sending mid-trip (parked and asleep, out of coverage) never delivers the record
that would complete its trip. The sweep finds trip-state items not written for ``2 x gap`` of wall
clock and completes them with ``endReason: orphan``.

It never races a live processor into a double or torn archive: its first write claims the trip (state
IDLE, the completed trip in the outbox) conditionally on the ``lastUpdate`` it read. If the processor
wrote in between, the claim fails and the trip is left alone; if the claim wins, the processor's next
write fails instead and it re-plans on top of the claimed state. Archive and index are then written
from the outbox, which is deterministic content whoever writes it. Outboxes left behind by a crashed
processor are finished the same way.

What it cannot see is the stream: "silent" means "no write for 2 x gap", so while a shard's consumer
is more than 2 x gap behind (an outage, a backlog), its vehicles' trips look silent too. Swept, such a
trip ends at its last applied record and the records still in the stream start a new one: the same
data, cut differently from one clean pass. Skip the sweep while ``MillisBehindLatest`` is that high,
or give it a longer ``--idle-seconds``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

from processors.signals import parse_time
from worker.aws import AwsClients
from worker.config import Settings
from worker.logs import event
from worker.retry import DEFAULT, WRITE, Retrier
from worker.trip_commit import TripArchiver, TripCommitter, commit_until_settled, completion_plan, reclaim
from worker.wiring import TripStores, trip_stores

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    scanned: int = 0
    orphaned: list[str] = field(default_factory=list)
    """Trip ids completed as orphans."""
    finished: list[str] = field(default_factory=list)
    """Trip ids whose pending archive (left by a crashed writer) was completed."""
    lost_race: int = 0


def sweep_orphans(
    settings: Settings, clients: AwsClients, now_ms: int | None = None, idle_ms: int | None = None
) -> SweepReport:
    """The sweep on AWS (``python -m worker sweep-orphans``): ``sweep`` over the stores ``wiring`` builds."""
    return sweep(settings, trip_stores(settings, clients), now_ms, idle_ms)


def sweep(
    settings: Settings,
    stores: TripStores,
    now_ms: int | None = None,
    idle_ms: int | None = None,
    retrier: Retrier = DEFAULT,
) -> SweepReport:
    """Complete the trips of vehicles silent for ``idle_ms`` (default ``2 x gap``) and finish pending
    outboxes. Each claim goes through ``commit_until_settled``, the record processor's own commit loop:
    when our claim landed but a later step failed and was retried, it meets our own claim and finishes
    it; when the vehicle's processor wrote meanwhile, the trip is left to it (``lost_race``)."""
    committer = TripCommitter(stores.trips, TripArchiver(stores.trail, stores.archive))
    commit = retrier.wrap(WRITE, committer.commit)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    cutoff = now - (idle_ms if idle_ms is not None else 2 * settings.trip_gap_seconds * 1000)
    report = SweepReport()
    for item in stores.trips.scan():
        report.scanned += 1
        if (item.status == "IDLE" and not item.outbox) or parse_time(item.lastUpdate) > cutoff:
            continue
        plan, orphan = completion_plan(item, now)
        settled = commit_until_settled([plan], commit, partial(reclaim, orphan=orphan, now_ms=now))
        if settled.unsettled:
            report.lost_race += 1  # the vehicle spoke up meanwhile: its processor owns the trip
            continue
        report.finished += [c.tripId for c in item.outbox]
        if orphan:
            report.orphaned.append(orphan.trip_id)
    event(
        log,
        "sweep",
        scanned=report.scanned,
        orphaned=len(report.orphaned),
        finished=len(report.finished),
        lostRace=report.lost_race,
    )
    return report
