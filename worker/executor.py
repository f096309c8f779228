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
from typing import TypeVar

from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from processors.batch import WritePlan
from processors.errors import RetryableWriteError
from processors.vehicle_state import VehicleStateSink
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
"""On top of botocore's own retries: rides out longer throttling storms before failing the batch."""


@dataclass(frozen=True, slots=True)
class ExecutionStats:
    writes: int


class PlanExecutor:
    def __init__(self, settings: Settings, clients: AwsClients) -> None:
        self._pool = ThreadPoolExecutor(settings.write_concurrency, thread_name_prefix="write")
        self._vehicle_state = VehicleStateSink(clients.dynamodb, settings.table_names["vehicle-state"])

    def execute(self, plan: WritePlan) -> ExecutionStats:
        writes = self._run_all(write_retry(self._vehicle_state.apply), plan.vehicle_states)
        return ExecutionStats(writes=sum(writes))

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
