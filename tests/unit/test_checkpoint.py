from __future__ import annotations

import pytest
from amazon_kclpy.checkpoint_error import CheckpointError

from schemas.records import StreamPosition
from worker.checkpoint import CheckpointPolicy, LeaseLost, checkpoint
from worker.retry import Retrier

POSITION = StreamPosition("shardId-000000000000", "4900000000000000000001", 0, 0)


@pytest.mark.parametrize(("now", "due"), [(10.0, False), (59.9, False), (60.0, True), (600.0, True)])
def test_the_policy_is_time_only(now: float, due: bool) -> None:
    # No record count, no idle trigger: each checkpoint first writes the trip-state of every vehicle whose
    # mark moved, so only the clock may decide how often that is paid.
    policy = CheckpointPolicy(every_seconds=60)
    assert not policy.due(0.0)  # the first call starts its clock
    assert policy.due(now) is due
    policy.done(now)
    assert not policy.due(now + 59.9) and policy.due(now + 60.0)


class ScriptedCheckpointer:
    def __init__(self, *errors: str | None) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[str | None, int | None]] = []

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        self.calls.append((sequence_number, sub_sequence_number))
        error = self.errors.pop(0) if self.errors else None
        if error:
            raise CheckpointError(error)


def test_throttled_checkpoints_are_retried() -> None:
    checkpointer = ScriptedCheckpointer("ThrottlingException", "ThrottlingException", None)
    slept: list[float] = []
    checkpoint(checkpointer, POSITION, "s", Retrier(sleep=slept.append))
    assert checkpointer.calls == [(POSITION.sequence_number, 0)] * 3
    assert len(slept) == 2 and all(0 <= s <= 5 for s in slept)


def test_a_lost_lease_stops_checkpointing_without_retrying() -> None:
    checkpointer = ScriptedCheckpointer("ShutdownException")
    with pytest.raises(LeaseLost):
        checkpoint(checkpointer, POSITION, "s")
    assert len(checkpointer.calls) == 1


def test_invalid_state_is_not_swallowed() -> None:
    with pytest.raises(CheckpointError):
        checkpoint(ScriptedCheckpointer("InvalidStateException"), POSITION, "s")


def test_shard_end_checkpoints_without_a_position() -> None:
    checkpointer = ScriptedCheckpointer()
    checkpoint(checkpointer, None, "s")
    assert checkpointer.calls == [(None, None)]
