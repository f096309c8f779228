"""Carries out a ``WritePlan``: the thin I/O layer.

Writes run concurrently on a bounded thread pool (boto3 clients are thread-safe), one task per vehicle
where order matters, so a vehicle's writes stay in order while vehicles proceed in parallel.
``execute`` returns only after every write of the plan is durable, or raises: the caller must then not
checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from processors.archive import TripArchiver, TripCommitter
from processors.batch import Quarantined, WritePlan
from processors.dead_letter import DeadLetterSink, partition_key_hasher
from processors.errors import RetryableWriteError, aws_error_code
from processors.pseudonymize import Pseudonymizer, VinVault
from processors.trip_store import BATCH_WRITE_LIMIT, StaleTripState, TripStore
from processors.trips import Breadcrumb, VehicleTripPlan
from processors.vehicle_state import StateUpdate, VehicleStateSink, coalesce
from schemas.records import VehicleReading
from worker.aws import AwsClients
from worker.config import Settings
from worker.logs import event

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "SlowDown",
        "InternalServerError",
        "InternalError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "LimitExceededException",
    }
)


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, RetryableWriteError | ConnectionError | ReadTimeoutError):
        return True
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in RETRYABLE_CODES or status >= 500
    return False


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    event(log, "write_retry", logging.WARNING, attempt=state.attempt_number, error=type(error).__name__)


write_retry = retry(
    retry=retry_if_exception(is_retryable),
    wait=wait_random_exponential(multiplier=0.1, max=10),
    stop=stop_after_attempt(6),
    before_sleep=_log_retry,
    reraise=True,
)
"""On top of botocore's own retries: rides out longer throttling storms before failing the batch (for
the reads a batch needs, too)."""


@dataclass(frozen=True, slots=True)
class IndependentWrites:
    requests: int
    refused: list[str]
    """Vehicles whose coalesced state update DynamoDB refused as invalid (not retryable)."""


@dataclass(frozen=True, slots=True)
class TripCommits:
    versions: dict[str, str | None]
    """pseudoVin -> version of the trip-state item now stored, for the vehicles committed."""
    stale: list[StaleTripState]
    """Vehicles another writer moved first: to be re-planned on top of what is stored."""
    requests: int


class PlanExecutor:
    def __init__(self, settings: Settings, clients: AwsClients, pseudonymizer: Pseudonymizer) -> None:
        tables = settings.table_names
        self._pool = ThreadPoolExecutor(settings.write_concurrency, thread_name_prefix="write")
        self._vault = VinVault(clients.dynamodb, clients.kms, tables["vin-mapping"], settings.vin_key_alias)
        self._dead_letters = DeadLetterSink(
            clients.s3,
            clients.kms,
            settings.archive_bucket,
            settings.vin_key_alias,
            partition_key_hasher(pseudonymizer.pseudo_vin),
        )
        self._vehicle_state = VehicleStateSink(clients.dynamodb, tables["vehicle-state"])
        self.trip_store = TripStore(clients.dynamodb, tables["trip-state"], tables["live-breadcrumbs"])
        archiver = TripArchiver(
            clients.s3, settings.archive_bucket, self.trip_store, clients.dynamodb, tables["trips-index"]
        )
        self._committer = TripCommitter(self.trip_store, archiver)

    def write_independent(self, plan: WritePlan) -> IndependentWrites:
        """Writes nothing else waits on, all at once: the VIN vault, dead letters, vehicle state and
        breadcrumbs."""
        refused: list[str] = []
        tasks: list[Callable[[], int]] = [
            partial(write_retry(self._vault.remember), pv, vin)
            for pv, vin in self._vault.unknown(plan.sightings).items()
        ]
        tasks += [partial(self._vehicle_state_or_refused, update, refused) for update in plan.vehicle_states]
        tasks += self._breadcrumb_tasks(plan.breadcrumbs)
        requests = self.dead_letter(plan.quarantined) + sum(self._run_all(lambda task: task(), tasks))
        return IndependentWrites(requests, refused)

    def dead_letter(self, quarantined: list[Quarantined]) -> int:
        if not quarantined:
            return 0
        data_key = write_retry(self._dead_letters.data_key)()  # one per batch: envelope encryption
        write = write_retry(self._dead_letters.write)
        return 1 + sum(self._run_all(lambda q: write(q, data_key), quarantined))

    def _vehicle_state_or_refused(self, update: StateUpdate, refused: list[str]) -> int:
        try:
            return write_retry(self._vehicle_state.apply)(update)
        except ClientError as error:
            if aws_error_code(error) != "ValidationException":
                raise
            refused.append(update.pseudo_vin)  # not retryable: find the record at fault, don't fail the batch
            return 1

    def refused_readings(self, readings: list[VehicleReading]) -> tuple[int, list[VehicleReading]]:
        """Apply a vehicle's readings one at a time; return (requests, those DynamoDB refuses)."""
        requests, refused = 0, []
        for reading in readings:
            (update,) = coalesce([reading]).values()
            try:
                requests += write_retry(self._vehicle_state.apply)(update)
            except ClientError as error:
                if aws_error_code(error) != "ValidationException":
                    raise
                requests += 1
                refused.append(reading)
        return requests, refused

    def _breadcrumb_tasks(self, crumbs: list[Breadcrumb]) -> list[Callable[[], int]]:
        put = write_retry(self.trip_store.put_breadcrumbs)
        return [
            partial(put, crumbs[i : i + BATCH_WRITE_LIMIT]) for i in range(0, len(crumbs), BATCH_WRITE_LIMIT)
        ]

    def put_breadcrumbs(self, crumbs: list[Breadcrumb]) -> int:
        return sum(self._run_all(lambda task: task(), self._breadcrumb_tasks(crumbs)))

    def commit_trips(self, plans: list[VehicleTripPlan]) -> TripCommits:
        """Each vehicle's trip writes in order, vehicles in parallel (their breadcrumbs are durable)."""
        commit = write_retry(self._committer.commit)
        futures = [(plan.pseudo_vin, self._pool.submit(commit, plan)) for plan in plans]
        versions: dict[str, str | None] = {}
        stale: list[StaleTripState] = []
        requests, first_error = 0, None
        for pseudo_vin, future in futures:
            try:
                versions[pseudo_vin], made = future.result()
                requests += made
            except StaleTripState as conflict:
                stale.append(conflict)
            except BaseException as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error
        return TripCommits(versions, stale, requests)

    def _run_all(self, task: Callable[[T], int], items: Iterable[T]) -> list[int]:
        """Run ``task`` on every item concurrently; wait for all; re-raise the first failure."""
        futures: list[Future[int]] = [self._pool.submit(task, item) for item in items]
        results, first_error = [], None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)
