"""Every retry of the worker: named policies on one primitive (tenacity), with the sleep and the jitter's
random source injectable so tests never sleep.

How the layers stack, innermost first. Each layer only sees what the one below gave up on:

=====  =============================================  ========================================================
layer  where                                          what it retries, and how often
=====  =============================================  ========================================================
0      botocore standard mode (``worker/aws.py``)     every AWS call: throttling, 5xx, connection errors;
                                                      ``FLEET_AWS_MAX_ATTEMPTS`` attempts, botocore's backoff.
1      inside an adapter (``worker/stores/``)         what botocore answers 200 to but did not do:
                                                      ``UNPROCESSED`` re-sends ``UnprocessedKeys/Items``;
                                                      ``VEHICLE_STATE_ROUNDS``, ``TRAIL_ROUNDS`` bound
                                                      conditional rounds.
2      around each port call (executor, pipeline,     ``WRITE``/``READ``: rides out throttling that outlasts
       sweep)                                         layer 0. Stacks on it: one call may make up to
                                                      ``WRITE.attempts`` x ``FLEET_AWS_MAX_ATTEMPTS``
                                                      requests (layer 1 runs inside each attempt).
                                                      ``TRIP_REPLANS`` bounds the commit/re-plan rounds.
3      the process (exit 3, ``record_processor``)     the whole batch: the KCL restarts the shard from
                                                      its last checkpoint.
=====  =============================================  ========================================================

Outside that stack: ``CHECKPOINT`` retries amazon-kclpy's checkpoint call (the daemon's lease-table
write, not a botocore call of ours).

A ``Policy`` sleeps between attempts (exponential backoff, full jitter unless disabled); a ``Limit``
bounds a loop that recomputes rather than waits (a conditional write answered with the stored item), and
never sleeps. Both end in a ``TransientError`` named after them, or re-raise the last error.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from amazon_kclpy.checkpoint_error import CheckpointError
from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_never

from processors.errors import TransientError
from worker.aws import aws_error_code
from worker.logs import event

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
X = TypeVar("X")

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
"""AWS error codes worth another attempt once botocore's own attempts are spent."""

RETRYABLE_CHECKPOINT_ERRORS = frozenset({"ThrottlingException", "KinesisClientLibDependencyException"})
"""Transient: the lease table was busy. Anything else means we may no longer checkpoint this shard."""


def is_transient(error: BaseException) -> bool:
    """Worth trying again: our own ``TransientError``, a connection problem, throttling or a 5xx."""
    if isinstance(error, TransientError | ConnectionError | ReadTimeoutError):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return aws_error_code(error) in RETRYABLE_CODES or status >= 500
    return False


def is_transient_checkpoint(error: BaseException) -> bool:
    return isinstance(error, CheckpointError) and error.value in RETRYABLE_CHECKPOINT_ERRORS


def never(error: BaseException) -> bool:
    """For policies whose only retried outcome is a leftover (``Retrier.drain``), not an error."""
    return False


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait before attempt n+1: ``min(cap, multiplier * 2**(n-1))`` seconds, uniformly jittered in
    [0, that] unless ``jitter`` is False (full jitter keeps the shards of a worker, and the workers of a
    service, from retrying in step against the same partition)."""

    multiplier: float
    cap_seconds: float
    jitter: bool = True

    def seconds(self, attempt: int, rng: random.Random) -> float:
        bound = min(self.cap_seconds, self.multiplier * 2 ** (attempt - 1))
        return rng.uniform(0, bound) if self.jitter else bound


@dataclass(frozen=True, slots=True)
class Policy:
    """Try up to ``attempts`` times (None: until done), sleeping ``backoff`` between attempts, as long as
    the error is one ``retry_on`` accepts. ``logged`` emits a ``write_retry`` event per retry."""

    name: str
    attempts: int | None
    backoff: Backoff
    retry_on: Callable[[BaseException], bool]
    logged: bool = True


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``rounds`` rounds of a loop that recomputes from what it was answered; no sleep."""

    name: str
    rounds: int

    def __iter__(self) -> Iterator[int]:
        return iter(range(1, self.rounds + 1))

    def exhausted(self, detail: str = "") -> TransientError:
        return TransientError(self.name, detail or f"{self.rounds} rounds")


class _Leftover(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def log_retry(policy: Policy, attempt: int, error: BaseException | None) -> None:
    if policy.logged:
        event(
            log,
            "write_retry",
            logging.WARNING,
            attempt=attempt,
            error=type(error).__name__,
            policy=policy.name,
        )


class Retrier:
    """Runs calls under a ``Policy``. ``sleep`` and ``rng`` are injected so tests record the waits."""

    def __init__(
        self,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[Policy, int, BaseException | None], None] = log_retry,
    ) -> None:
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry

    def _retrying(self, policy: Policy, retry_on: Callable[[BaseException], bool]) -> Retrying:
        def wait(state: RetryCallState) -> float:
            return policy.backoff.seconds(state.attempt_number, self._rng)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self._on_retry(policy, state.attempt_number, error)

        return Retrying(
            retry=retry_if_exception(retry_on),
            wait=wait,
            stop=stop_never if policy.attempts is None else stop_after_attempt(policy.attempts),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def call(self, policy: Policy, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, retried under ``policy``; once given up, its last error is raised."""
        return self._retrying(policy, policy.retry_on)(fn, *args, **kwargs)

    def wrap(self, policy: Policy, fn: Callable[P, T]) -> Callable[P, T]:
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(policy, fn, *args, **kwargs)

        return wrapped

    def drain(
        self, policy: Policy, send: Callable[[list[X]], Sequence[X]], items: list[X], reason: str
    ) -> int:
        """Send ``items``, then re-send whatever ``send`` returns as left over, until nothing is. Returns
        the calls made. Raises ``TransientError(reason)`` once ``policy.attempts`` calls left something."""
        pending, calls = items, 0

        def attempt() -> None:
            nonlocal pending, calls
            calls += 1
            pending = list(send(pending))
            if pending:
                raise _Leftover(len(pending))

        def retry_on(error: BaseException) -> bool:
            return isinstance(error, _Leftover) or policy.retry_on(error)

        try:
            self._retrying(policy, retry_on)(attempt)
        except _Leftover as left:
            raise TransientError(reason, f"{left.count} items") from None
        return calls


DEFAULT = Retrier()

WRITE = Policy("write_retry", 6, Backoff(0.1, 10.0), is_transient)
"""Every port call of a batch (layer 2). Rides out throttling longer than botocore's attempts."""
READ = WRITE
"""The reads a batch needs (the trip-state load): the same policy as the writes, under its own name."""
UNPROCESSED = Policy("unprocessed", 10, Backoff(0.05, 1.0), never, logged=False)
"""Batch reads/writes DynamoDB answered with ``Unprocessed*`` leftovers (layer 1, inside ``WRITE``)."""
CHECKPOINT = Policy("checkpoint", 8, Backoff(0.2, 5.0), is_transient_checkpoint, logged=False)
"""amazon-kclpy's checkpoint: the daemon's lease-table write was throttled."""
VEHICLE_STATE_ROUNDS = Limit("vehicle_state_contention", 8)
"""Conditional UpdateItem rounds of one vehicle-state chunk (layer 1, inside ``WRITE``)."""
TRAIL_ROUNDS = Limit("trail_contention", 4)
"""Conditional UpdateItem rounds of one trail bucket chunk (layer 1, inside ``WRITE``): each round swaps in
the join of the stored slots and ours where the stored ones do not cover ours yet, so it ends when no other
writer raced ahead meanwhile; a writer needs at most one round per concurrent writer plus one, so 4 rounds
cover three writers of one bucket at once."""
TRIP_REPLANS = Limit("trip_state_contention", 5)
"""Commit rounds of a batch's trip plans (or a sweep's claim) re-planned over another writer's state."""
