"""The one retry module: named policies on tenacity, tested with a recorded sleep and a seeded jitter."""

from __future__ import annotations

import random
from typing import Any

import pytest
from botocore.exceptions import ClientError

from processors.errors import TransientError
from worker.retry import (
    CHECKPOINT,
    TRIP_REPLANS,
    UNPROCESSED,
    VEHICLE_STATE_ROUNDS,
    WRITE,
    Backoff,
    Policy,
    Retrier,
    is_transient,
    never,
)


def client_error(code: str, status: int = 400) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Op")


class Flaky:
    """Fails with ``errors`` in turn, then answers ``result``."""

    def __init__(self, *errors: BaseException, result: str = "done") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def recording() -> tuple[Retrier, list[float], list[tuple[str, int]]]:
    slept: list[float] = []
    retried: list[tuple[str, int]] = []
    retrier = Retrier(
        sleep=slept.append, rng=random.Random(7), on_retry=lambda p, n, _e: retried.append((p.name, n))
    )
    return retrier, slept, retried


def test_a_transient_error_is_retried_with_backoff_until_the_call_succeeds() -> None:
    retrier, slept, retried = recording()
    flaky = Flaky(client_error("ThrottlingException"), TransientError("SlowDown"))
    assert retrier.call(WRITE, flaky) == "done"
    assert flaky.calls == 3
    assert retried == [("write_retry", 1), ("write_retry", 2)]
    assert 0 <= slept[0] <= 0.1 and 0 <= slept[1] <= 0.2


def test_giving_up_raises_the_last_error_after_the_policys_attempts() -> None:
    retrier, slept, _ = recording()
    flaky = Flaky(*[client_error("ProvisionedThroughputExceededException")] * 10)
    with pytest.raises(ClientError):
        retrier.call(WRITE, flaky)
    assert flaky.calls == WRITE.attempts == 6
    assert len(slept) == 5


def test_an_error_that_is_not_transient_is_raised_at_once() -> None:
    retrier, slept, _ = recording()
    flaky = Flaky(client_error("ValidationException"))
    with pytest.raises(ClientError):
        retrier.call(WRITE, flaky)
    assert (flaky.calls, slept) == (1, [])


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (client_error("ThrottlingException"), True),
        (client_error("Whatever", status=503), True),
        (client_error("ConditionalCheckFailedException"), False),
        (TransientError("vehicle_state_contention"), True),
        (ValueError("bug"), False),
    ],
)
def test_what_counts_as_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    plain = Backoff(0.1, 1.0, jitter=False)
    assert [plain.seconds(n, random.Random(0)) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    rng = random.Random(3)
    jittered = Backoff(0.1, 1.0)
    assert all(0 <= jittered.seconds(n, rng) <= min(1.0, 0.1 * 2 ** (n - 1)) for n in range(1, 20))


def test_drain_resends_only_the_leftovers() -> None:
    retrier, slept, _ = recording()
    sent: list[list[int]] = []

    def send(items: list[int]) -> list[int]:
        sent.append(items)
        return items[1:]  # the first item of each call goes through

    assert retrier.drain(UNPROCESSED, send, [1, 2, 3], reason="unprocessed_test") == 3
    assert sent == [[1, 2, 3], [2, 3], [3]]
    assert len(slept) == 2


def test_drain_gives_up_with_the_reason_it_was_given() -> None:
    retrier, slept, _ = recording()
    policy = Policy("tiny", 3, Backoff(0.01, 0.01), never)
    with pytest.raises(TransientError) as raised:
        retrier.drain(policy, lambda items: items, ["a", "b"], reason="breadcrumbs_unprocessed")
    assert raised.value.reason == "breadcrumbs_unprocessed"
    assert str(raised.value) == "breadcrumbs_unprocessed: 2 items"
    assert len(slept) == 2


def test_a_limit_counts_rounds_and_names_its_exhaustion() -> None:
    assert list(VEHICLE_STATE_ROUNDS) == list(range(1, 9))
    assert list(TRIP_REPLANS) == [1, 2, 3, 4, 5]
    assert TRIP_REPLANS.exhausted("2 vehicles").reason == "trip_state_contention"


def test_wrap_keeps_the_arguments() -> None:
    retrier, _, _ = recording()
    flaky = Flaky(TransientError("x"))

    def add(a: int, b: int) -> int:
        flaky()
        return a + b

    assert retrier.wrap(WRITE, add)(2, b=3) == 5
    assert flaky.calls == 2


def test_the_checkpoint_policy_retries_kclpy_throttling_only() -> None:
    from amazon_kclpy.checkpoint_error import CheckpointError

    assert CHECKPOINT.retry_on(CheckpointError("ThrottlingException"))
    assert not CHECKPOINT.retry_on(CheckpointError("ShutdownException"))
    assert not CHECKPOINT.retry_on(client_error("ThrottlingException"))
