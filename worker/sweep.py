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

from processors.archive import TripArchiver, TripCommitter
from processors.signals import parse_time
from processors.trip_store import StaleTripState, TripStore, completed_trip, state_fields, state_from_item
from processors.trips import CompletedTrip, EndReason, VehicleTripPlan, complete
from schemas.items import TripStateItem
from worker.aws import AwsClients
from worker.config import Settings
from worker.executor import write_retry
from worker.logs import event

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    scanned: int = 0
    orphaned: list[str] = field(default_factory=list)
    """Trip ids completed as orphans."""
    finished: list[str] = field(default_factory=list)
    """Trip ids whose pending archive (left by a crashed writer) was completed."""
    lost_race: int = 0


def completion_plan(item: TripStateItem) -> tuple[VehicleTripPlan, CompletedTrip | None]:
    """Finish the item's outbox and, if a trip is still open, complete it as an orphan."""
    state = state_from_item(item)
    outbox = [completed_trip(item.pseudoVin, c) for c in item.closing]
    orphan = None
    if state.trip is not None:
        orphan = complete(item.pseudoVin, state.trip, EndReason.ORPHAN)
        outbox.append(orphan)
        state.trip = None
    plan = VehicleTripPlan(
        pseudo_vin=item.pseudoVin,
        seals=[],
        outbox=outbox,
        new_completions=1 if orphan else 0,
        state=state_fields(state),
        expected_last_update=item.lastUpdate,
        write=True,
    )
    return plan, orphan


MAX_RECLAIMS = 3


def _commit(committer: TripCommitter, plan: VehicleTripPlan, orphan: CompletedTrip | None) -> None:
    """Commit with retries. When the claim landed but a later step failed, the retry meets our own
    claim (the orphan in the stored outbox), not a live processor: finish that outbox instead (a few
    times at most; whoever loads the item next finishes it otherwise)."""
    for attempt in range(MAX_RECLAIMS + 1):
        try:
            write_retry(committer.commit)(plan)
            return
        except StaleTripState as stale:
            current = stale.current
            if current is None or orphan is None or attempt == MAX_RECLAIMS:
                raise
            if orphan.trip_id not in {c.tripId for c in current.closing}:
                raise  # not our claim: the vehicle's processor wrote meanwhile
            plan, _ = completion_plan(current)


def sweep_orphans(
    settings: Settings, clients: AwsClients, now_ms: int | None = None, idle_ms: int | None = None
) -> SweepReport:
    tables = settings.table_names
    store = TripStore(clients.dynamodb, tables["trip-state"], tables["live-breadcrumbs"])
    archiver = TripArchiver(
        clients.s3, settings.archive_bucket, store, clients.dynamodb, tables["trips-index"]
    )
    committer = TripCommitter(store, archiver)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    cutoff = now - (idle_ms if idle_ms is not None else 2 * settings.trip_gap_seconds * 1000)
    report = SweepReport()
    for item in store.scan():
        report.scanned += 1
        if (item.status == "IDLE" and not item.closing) or parse_time(item.lastUpdate) > cutoff:
            continue
        plan, orphan = completion_plan(item)
        try:
            _commit(committer, plan, orphan)
        except StaleTripState:
            report.lost_race += 1  # the vehicle spoke up meanwhile: its processor owns the trip
            continue
        report.finished += [c.tripId for c in item.closing]
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
