"""Carries out a ``WritePlan`` through the ports of ``processors.ports``: the thin I/O layer.

Writes run concurrently on a bounded thread pool (the adapters' boto3 clients are thread-safe), one task
per vehicle where order matters, so a vehicle's writes stay in order while vehicles proceed in parallel.
Every port call runs under ``retry.WRITE``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from processors.batch import DeadLetter, WritePlan
from processors.errors import RejectReason, StaleTripState, UnwritableUpdate
from processors.ports import Stores
from processors.pseudonymize import SeenVehicles
from processors.trail import BucketMerge
from processors.trips import TripThresholds, VehicleTripPlan
from processors.vehicle_state import coalesce
from schemas.records import VehicleReading
from worker.freshness import PendingState
from worker.retry import DEFAULT, READ, TRIP_REPLANS, WRITE, Retrier
from worker.trip_commit import (
    Committed,
    Replanned,
    TripArchiver,
    TripCommitter,
    commit_with_replans,
    run_each,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

UNWRITABLE_DETAIL = "vehicle-state refused the record as invalid (ValidationException)"


@dataclass(frozen=True, slots=True)
class Executed:
    """What carrying out a plan did, besides the plan itself."""

    requests: int
    dead_letters: list[DeadLetter] = field(default_factory=list)
    """Records a store refused as invalid while executing (``unwritable``), dead-lettered here."""
    versions: dict[str, str | None] = field(default_factory=dict)
    """pseudoVin -> version of the trip-state item now stored, for the vehicles committed."""
    refused: list[str] = field(default_factory=list)
    """pseudoVins whose ``vehicle-state`` update the store refused as invalid (applied record by record)."""


class PlanExecutor:
    """Carries out writes against the ports: with the batch (``write_now``: VIN vault, dead letters), and
    from the buffers (``flush``: vehicle state and trail buckets, then each vehicle's trip commit, in order
    per vehicle and in parallel across vehicles).

    Guarantees: each returns only once every write it was given is durable, or raises, and then the
    caller must not checkpoint. A record whose vehicle-state update a store refuses as invalid is
    dead-lettered (and reported in ``Executed``) instead of failing the flush.
    """

    def __init__(
        self, stores: Stores, pool_size: int, thresholds: TripThresholds, retrier: Retrier = DEFAULT
    ) -> None:
        self._stores = stores
        self._retrier = retrier
        self._pool = ThreadPoolExecutor(pool_size, thread_name_prefix="write")
        self._seen = SeenVehicles()
        self._committer = TripCommitter(stores.trips, TripArchiver(stores.trail, stores.archive, thresholds))

    def write_now(self, plan: WritePlan) -> int:
        """What is written with the batch, before anything is buffered: the VIN vault for unseen vehicles
        and the dead letters. Returns requests made."""
        tasks: list[Callable[[], int]] = [
            partial(self._remember, pv, vin) for pv, vin in self._not_in_vault(plan.sightings).items()
        ]
        return self.dead_letter(plan.dead_letters) + sum(self._run_all(lambda task: task(), tasks))

    def flush(
        self,
        states: Sequence[PendingState],
        trail: list[BucketMerge],
        trips: Sequence[VehicleTripPlan],
        replan: Callable[[StaleTripState], Replanned],
        on_committed: Callable[[str, str | None], None],
    ) -> Executed:
        """Write buffered vehicle-state updates and trail merges, then each vehicle's trip commit (in order
        per vehicle, vehicles in parallel). ``replan`` rebuilds a vehicle's trip plan over another writer's
        state, ``on_committed`` hears of each version stored. Returns only once all is durable, else
        raises; raises ``TransientError("trip_state_contention")`` when vehicles stay contended after
        ``retry.TRIP_REPLANS`` rounds."""
        refused: list[PendingState] = []
        tasks: list[Callable[[], int]] = [partial(self._vehicle_state_or_refused, p, refused) for p in states]
        tasks += self._trail_tasks(trail)
        requests = sum(self._run_all(lambda task: task(), tasks))
        dead_letters: list[DeadLetter] = []
        if refused:
            made, dead_letters = self._dead_letter_refused(refused)
            requests += made
        commits = commit_with_replans(
            trips,
            self._retrier.wrap(WRITE, self._committer.commit),
            replan,
            self._run_commits,
            on_committed,
        )
        if commits.contended:
            raise TRIP_REPLANS.exhausted(f"{len(commits.contended)} vehicles, {TRIP_REPLANS.rounds} plans")
        refused_vins = [pending.update.pseudo_vin for pending in refused]
        return Executed(requests + commits.requests, dead_letters, commits.versions, refused_vins)

    def _not_in_vault(self, sightings: dict[str, str]) -> dict[str, str]:
        """Of the vehicles sighted, those whose VIN is not in the vault: only vehicles this worker has not
        seen yet are looked up (``VinVault.known``, a read per 100 of them), so a known vehicle never costs
        a KMS call, even on the first batch after a restart."""
        unseen = self._seen.unknown(sightings)
        if not unseen:
            return {}
        stored = self._retrier.call(READ, self._stores.vault.known, list(unseen))
        self._seen.add_all(stored)
        return {pv: vin for pv, vin in unseen.items() if pv not in stored}

    def _remember(self, pseudo_vin: str, vin: str) -> int:
        requests = self._retrier.call(WRITE, self._stores.vault.remember, pseudo_vin, vin)
        self._seen.add(pseudo_vin)
        return requests

    def dead_letter(self, dead_letters: Sequence[DeadLetter]) -> int:
        """Write dead letters under one fresh data key (envelope encryption). Returns requests made."""
        if not dead_letters:
            return 0
        writer = self._stores.dead_letters
        data_key = self._retrier.call(WRITE, writer.data_key)
        write = self._retrier.wrap(WRITE, writer.write)
        return 1 + sum(self._run_all(lambda letter: write(letter, data_key), dead_letters))

    def _vehicle_state_or_refused(self, pending: PendingState, refused: list[PendingState]) -> int:
        try:
            return self._retrier.call(WRITE, self._stores.vehicle_state.apply, pending.update)
        except UnwritableUpdate:
            refused.append(pending)  # not retryable: find the record at fault, don't fail the flush
            return 1

    def _dead_letter_refused(self, refused: list[PendingState]) -> tuple[int, list[DeadLetter]]:
        """A vehicle's state update refused as invalid: apply its records one by one and dead-letter the
        ones refused, instead of failing (and endlessly redelivering) the batch."""
        requests, dead_letters = 0, []
        for pending in refused:
            records = {reading.position: record for reading, record in pending.readings}
            made, readings = self._refused_readings([reading for reading, _ in pending.readings])
            requests += made
            dead_letters += [
                DeadLetter(records[r.position], RejectReason.UNWRITABLE, UNWRITABLE_DETAIL) for r in readings
            ]
        return requests + self.dead_letter(dead_letters), dead_letters

    def _refused_readings(self, readings: list[VehicleReading]) -> tuple[int, list[VehicleReading]]:
        """Apply a vehicle's readings one at a time; return (requests, those the store refuses)."""
        requests, refused = 0, []
        for reading in readings:
            (update,) = coalesce([reading]).values()
            try:
                requests += self._retrier.call(WRITE, self._stores.vehicle_state.apply, update)
            except UnwritableUpdate:
                requests += 1
                refused.append(reading)
        return requests, refused

    def _trail_tasks(self, merges: list[BucketMerge]) -> list[Callable[[], int]]:
        """One task per vehicle (its buckets in order), each merge call under ``retry.WRITE``: the one call
        site of the trail write (``TrailBuffer`` hands it the merges due)."""
        merge = self._retrier.wrap(WRITE, self._stores.trail.merge)
        by_vehicle: dict[str, list[BucketMerge]] = {}
        for item in merges:
            by_vehicle.setdefault(item.pseudo_vin, []).append(item)
        return [partial(merge, group) for group in by_vehicle.values()]

    def _run_commits(self, task: Callable[[T], Committed], plans: Sequence[T]) -> list[Committed]:
        return self._run_all(task, plans)

    def _run_all(self, task: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """Run ``task`` on every item concurrently; wait for all; re-raise the first failure."""
        futures: list[Future[R]] = [self._pool.submit(task, item) for item in items]
        return run_each(future.result for future in futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
