from __future__ import annotations

import pytest
from amazon_kclpy.checkpoint_error import CheckpointError

from schemas.records import StreamPosition
from worker.checkpoint import CheckpointPolicy, LeaseLost, checkpoint
from worker.retry import Retrier

POLICY = CheckpointPolicy(every_records=500, every_seconds=60)
POSITION = StreamPosition("shardId-000000000000", "4900000000000000000001", 0, 0)


@pytest.mark.parametrize(
    ("now", "pending", "idle", "due"),
    [
        (10.0, 0, True, False),  # nothing applied since the last checkpoint: nothing to do
        (10.0, 499, False, False),
        (10.0, 500, False, True),  # enough records
        (59.9, 1, False, False),
        (60.0, 1, False, True),  # enough time
        (10.0, 1, True, True),  # the shard went idle: checkpoint what was applied
    ],
)
def test_policy(now: float, pending: int, idle: bool, due: bool) -> None:
    assert POLICY.due(now=now, last_checkpoint_at=0.0, pending_records=pending, idle=idle) is due


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
