"""Committing trip plans: the archive, the crash-safe commit order, and the one commit/re-plan loop shared
by the record processor and the orphan sweep (``commit_with_replans``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from processors.archive import archive_trip, gzip_json, read_gzip_json, segment_key
from processors.errors import StaleTripState, WriteOnceConflict
from processors.ports import TrailStore, TripArchive, TripStore
from processors.signals import parse_time
from processors.trail import TRAIL_TTL_SECONDS, Crumb, from_segment_rows, segment_rows, trip_rows
from processors.trip_items import (
    completed_item,
    idle_after,
    item_fields,
    mark_of,
    next_last_update,
    outbox_of,
    state_from_item,
    sweep_shard,
)
from processors.trips import (
    CompletedTrip,
    EndReason,
    SegmentSeal,
    TripEffects,
    TripStateMachine,
    TripThresholds,
    VehicleTripPlan,
    complete,
    remember_completed,
)
from schemas.items import TripIndexItem, TripStateItem
from worker.logs import event
from worker.retry import TRIP_REPLANS, Limit

log = logging.getLogger(__name__)
R = TypeVar("R")


def archive_safe_ms(thresholds: TripThresholds) -> int:
    """How long after its completion point R a trip's archive is sure to find every crumb it needs: the tail
    after the sealed segments spans at most ``segment_max`` of event time (plus the gap), and a crumb stays
    24 h after its arrival (11 h 55 min at the defaults)."""
    return TRAIL_TTL_SECONDS * 1000 - thresholds.segment_max_ms - thresholds.gap_ms


class TripArchiver:
    """Writes sealed segments and completed trips' archives (segments + the trail's tail, then the index
    item) through the ``TripArchive`` port. Deterministic content: writing twice changes nothing, and the
    rows are selected against the trip's completion point R, never the wall clock."""

    def __init__(
        self,
        trail: TrailStore,
        archive: TripArchive,
        thresholds: TripThresholds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._trail = trail
        self._archive = archive
        self._safe_ms = archive_safe_ms(thresholds)
        self._clock = clock

    def seal(self, seal: SegmentSeal) -> None:
        crumbs = self._trail.read(seal.pseudo_vin, seal.from_ms, seal.to_ms)
        rows = trip_rows(crumbs, seal.from_ms, seal.to_ms, seal.completion_ms)
        self._put_once(segment_key(seal.pseudo_vin, seal.trip_id, seal.index), gzip_json(segment_rows(rows)))

    def _put_once(self, key: str, body: bytes, provisional: bool = False) -> bool:
        """Write-once: a rewrite with other bytes (a re-archive after crumbs expired, or after a late half
        of an instant joined a slot) keeps the stored object (False). ``put_once`` logged ``archive_conflict``
        at ERROR (alarmed; INFO for an on-time archive); failing the batch instead would stop the shard on
        every redelivery."""
        try:
            self._archive.put_object(key, body, provisional=provisional)
        except WriteOnceConflict:
            return False
        return True

    def archive(self, trip: CompletedTrip, *, provisional: bool = False) -> TripIndexItem:
        """Write the archive object, then its index item. Idempotent. ``provisional``: the on-time archive
        of a trip the live view completed (the exact machine's completion, L later, writes the final one);
        its index item is not written over another on-time archive's object."""
        lag_ms = int(self._clock() * 1000) - trip.completion_ms
        if lag_ms >= self._safe_ms:
            # Rows are chosen against R, so a re-archive reads the same set while every needed crumb is
            # still stored; this long after R, TTL may have removed some. Archived as found, but loudly.
            event(
                log,
                "archive_at_risk",
                logging.ERROR,
                pseudoVin=trip.pseudo_vin,
                tripId=trip.trip_id,
                lagSeconds=lag_ms // 1000,
            )
        body, item = archive_trip(trip, self.crumbs(trip), provisional=provisional)
        if self._put_once(item.s3Key, body, provisional) or not provisional:
            self._archive.put_index(item)
        return item

    def crumbs(self, trip: CompletedTrip) -> list[Crumb]:
        """The sealed segments' crumbs, then the trail's tail ``[sealedThrough + 1, end]``."""
        crumbs: list[Crumb] = []
        for index in range(trip.segments):
            body = self._archive.get_object(segment_key(trip.pseudo_vin, trip.trip_id, index))
            crumbs += from_segment_rows(read_gzip_json(body))
        tail_from = trip.start_time_ms if trip.sealed_through_ms is None else trip.sealed_through_ms + 1
        return crumbs + self._trail.read(trip.pseudo_vin, tail_from, trip.end_time_ms)


class TripCommitter:
    """Writes one vehicle's ``VehicleTripPlan``, in an order that makes a crash between any two steps
    harmless:

    1. seal segments (S3; deterministic content);
    2. if trips completed in this batch: the new state *with the completed trips in its outbox*
       (conditional on the version we built on). From here on, whoever loads the item (this processor
       after a restart, or the orphan sweep) finishes those trips identically;
    3. per outbox trip: archive object, then its index item (plain overwrites); then per trip the live
       view completed (``on_time``): its on-time archive and index item (``provisional``);
    4. the new state with an empty outbox (conditional on the version written in 2); or, with no trip
       left open, the vehicle's mark in ``vin-mapping`` (a monotone register), then the item's deletion
       (conditional on that version): ``trip-state`` holds open trips only.

    An item is created (no version yet) by a transaction that also checks the vehicle's mark: a writer
    whose view predates an archival cannot bring the archived trip back.

    ``commit`` returns (version now stored, requests made). It raises ``StaleTripState`` if another
    writer got there first: nothing of ours that could diverge has been written (steps 1-3 only run on
    our own version). Versions are the wall clock of ``clock``, strictly increasing per item.
    """

    def __init__(
        self, store: TripStore, archiver: TripArchiver, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._archiver = archiver
        self._clock = clock

    def commit(self, plan: VehicleTripPlan) -> tuple[str | None, int]:
        requests = 0
        for seal in plan.seals:
            self._archiver.seal(seal)
            requests += 2
        version = plan.expected_last_update
        if plan.new_completions:
            version = self._write(plan, plan.outbox, version)
            requests += 1
        for trip in plan.outbox:
            self._archiver.archive(trip)
            requests += 2 + trip.segments
        for trip in plan.on_time:
            # Before the state: the item stops showing the trip only once its on-time archive is stored.
            self._archiver.archive(trip, provisional=True)
            requests += 2 + trip.segments
        version, made = self._finish(plan, version)
        return version, requests + made

    def _finish(self, plan: VehicleTripPlan, expected: str | None) -> tuple[str | None, int]:
        """The state without an outbox: the item if anything is open, else the mark and no item."""
        if plan.open:
            return self._write(plan, [], expected), 1
        return None, self._store.close(plan.pseudo_vin, mark_of(plan.fields), expected)

    def _write(self, plan: VehicleTripPlan, outbox: list[CompletedTrip], expected: str | None) -> str:
        version = next_last_update(expected or None, int(self._clock() * 1000))
        heard = plan.fields.get("heardAt")
        item = TripStateItem(
            **plan.fields,
            lastUpdate=version,
            outbox=[completed_item(trip) for trip in outbox],
            sweepShard=sweep_shard(plan.pseudo_vin),
            # Silence is judged by the newest record's arrival; a writer that heard nothing (the sweep)
            # dates it by its own write.
            idleAfter=idle_after(heard if heard is not None else parse_time(version)),
        )
        self._store.write(item, expected)
        return item.lastUpdate


# --- one commit/re-plan loop for the processor and the sweep -----------------------------------------


@dataclass(frozen=True, slots=True)
class Replanned:
    """A vehicle re-planned on top of what another writer stored (its trail is written already: a crumb
    does not depend on the plan)."""

    plan: VehicleTripPlan


@dataclass(frozen=True, slots=True)
class Commits:
    versions: dict[str, str | None]
    """pseudoVin -> version of the trip-state item now stored, for every vehicle committed."""
    requests: int
    contended: list[StaleTripState]
    """Vehicles left to another writer (``replan`` answered None), or still contended after the limit."""


Committed = tuple[str | None, int] | StaleTripState
RunAll = Callable[[Callable[[VehicleTripPlan], Committed], Sequence[VehicleTripPlan]], list[Committed]]


def run_each(calls: Iterable[Callable[[], R]]) -> list[R]:
    """Every call's result, in order, once all have run; then the first failure is raised. The one way
    a batch of writes ends: no write is abandoned because another one failed."""
    results: list[R] = []
    first_error: BaseException | None = None
    for call in calls:
        try:
            results.append(call())
        except BaseException as error:
            first_error = first_error or error
    if first_error is not None:
        raise first_error
    return results


def serially(
    task: Callable[[VehicleTripPlan], Committed], plans: Sequence[VehicleTripPlan]
) -> list[Committed]:
    """``RunAll`` without threads."""
    return run_each(partial(task, plan) for plan in plans)


def _ignore(pseudo_vin: str, version: str | None) -> None:
    return None


def commit_with_replans(
    plans: Sequence[VehicleTripPlan],
    commit: Callable[[VehicleTripPlan], tuple[str | None, int]],
    replan: Callable[[StaleTripState], Replanned | None],
    run_all: RunAll = serially,
    on_committed: Callable[[str, str | None], None] = _ignore,
    limit: Limit = TRIP_REPLANS,
) -> Commits:
    """Commit every plan; re-plan the vehicles another writer moved first on top of what it stored, and
    commit those again: at most ``limit.rounds`` rounds of commits.

    ``run_all`` runs one round (in parallel for the processor) and returns each plan's outcome, or raises
    the first error other than ``StaleTripState`` once every commit of the round has ended.
    ``replan`` answers None for a vehicle that is not ours to redo; it ends up in ``contended``.
    """

    def attempt(plan: VehicleTripPlan) -> Committed:
        try:
            return commit(plan)
        except StaleTripState as stale:
            return stale

    pending, versions, requests, contended = list(plans), dict[str, str | None](), 0, list[StaleTripState]()
    for round_ in limit:
        stale: list[StaleTripState] = []
        for plan, outcome in zip(pending, run_all(attempt, pending), strict=True):
            if isinstance(outcome, StaleTripState):
                stale.append(outcome)
                continue
            versions[plan.pseudo_vin], made = outcome
            requests += made
            on_committed(plan.pseudo_vin, outcome[0])
        if not stale:
            break
        if round_ == limit.rounds:
            contended += stale
            break
        # Another writer (a zombie processor, the orphan sweep, the live processor) moved these vehicles
        # first: build on what is stored now. Whatever it already applied falls under the high-water mark.
        pending = []
        for conflict in stale:
            event(log, "trip_state_conflict", logging.WARNING, pseudoVin=conflict.pseudo_vin)
            replanned = replan(conflict)
            if replanned is None:
                contended.append(conflict)
                continue
            pending.append(replanned.plan)
        if not pending:
            break
    return Commits(versions, requests, contended)


# --- the orphan sweep's plans --------------------------------------------------------------------------


def completion_plan(
    item: TripStateItem, now_ms: int, machine: TripStateMachine
) -> tuple[VehicleTripPlan, CompletedTrip | None]:
    """Finish the item's outbox and, if a trip is still open, complete it as an orphan at R = ``now_ms``
    (the sweep's clock), after the records held for its machine (a shard split whose child never took
    the vehicle over: it fell silent)."""
    state, held = state_from_item(item)
    effects = TripEffects()
    for step in sorted(held, key=lambda s: s.order):
        machine.apply(state, step, effects, now_ms)
    outbox = outbox_of(item) + effects.completed
    orphan = None
    if state.trip is not None:
        orphan = complete(item.pseudoVin, state, state.trip, EndReason.ORPHAN, now_ms)
        remember_completed(state, orphan)
        outbox.append(orphan)
        state.trip = None
    plan = VehicleTripPlan(
        pseudo_vin=item.pseudoVin,
        seals=effects.seals,
        outbox=outbox,
        new_completions=len(effects.completed) + (1 if orphan else 0),
        fields=item_fields(item.pseudoVin, state, heard_ms=item.heardAt),
        open=False,
        expected_last_update=item.lastUpdate,
    )
    return plan, orphan


def reclaim(
    stale: StaleTripState, orphan: CompletedTrip | None, now_ms: int, machine: TripStateMachine
) -> Replanned | None:
    """The sweep lost a race. When the stored outbox holds our own orphan (our claim landed, a later step
    failed and was retried), finish that outbox; otherwise the vehicle's processor wrote meanwhile and
    owns the trip (None)."""
    current = stale.current
    if current is None or orphan is None or orphan.trip_id not in {c.tripId for c in current.outbox}:
        return None
    plan, _ = completion_plan(current, now_ms, machine)
    return Replanned(plan)
