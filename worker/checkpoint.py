"""When to checkpoint, and how to checkpoint safely through amazon-kclpy.

The policy is a small frozen object with the clock passed in; the processor asks it after every batch
whose writes all succeeded. A failed batch never reaches it: the process exits first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from amazon_kclpy.checkpoint_error import CheckpointError
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from processors.errors import FleetIngestError
from schemas.records import StreamPosition
from worker.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    every_records: int = 500
    every_seconds: float = 60.0

    def due(self, *, now: float, last_checkpoint_at: float, pending_records: int, idle: bool) -> bool:
        """True when applied-but-uncheckpointed records should be checkpointed now.

        ``idle`` (the daemon delivered an empty batch: the shard has nothing new) checkpoints at once:
        it costs nothing then, and leaves nothing to replay after a quiet stop.
        """
        if pending_records <= 0:
            return False
        return idle or pending_records >= self.every_records or now - last_checkpoint_at >= self.every_seconds


class Checkpointer(Protocol):
    def checkpoint(
        self, sequence_number: str | None = None, sub_sequence_number: int | None = None
    ) -> None: ...


RETRYABLE_CHECKPOINT_ERRORS = frozenset({"ThrottlingException", "KinesisClientLibDependencyException"})
"""Transient: the lease table was busy. Anything else means we may no longer checkpoint this shard."""
LOST_LEASE_ERRORS = frozenset({"ShutdownException", "LeaseLostException"})


def _retryable(error: BaseException) -> bool:
    return isinstance(error, CheckpointError) and error.value in RETRYABLE_CHECKPOINT_ERRORS


class LeaseLost(FleetIngestError):
    """Checkpointing was refused because this worker no longer owns the shard."""


@retry(
    retry=retry_if_exception(_retryable),
    wait=wait_random_exponential(multiplier=0.2, max=5),
    stop=stop_after_attempt(8),
    reraise=True,
)
def _checkpoint_with_retry(checkpointer: Checkpointer, position: StreamPosition | None) -> None:
    if position is None:
        checkpointer.checkpoint()
    else:
        checkpointer.checkpoint(position.sequence_number, position.sub_sequence_number)


def checkpoint(checkpointer: Checkpointer, position: StreamPosition | None, shard_id: str) -> None:
    """Checkpoint at ``position`` (None: at the end of what the daemon delivered, e.g. SHARD_END).

    Raises ``LeaseLost`` when the daemon says we no longer own the shard (a zombie must not go on);
    any other refusal (``InvalidStateException``...) propagates, and the processor exits.
    """
    try:
        _checkpoint_with_retry(checkpointer, position)
    except CheckpointError as error:
        if error.value in LOST_LEASE_ERRORS:
            event(log, "checkpoint_refused", logging.WARNING, shard=shard_id, reason=error.value)
            raise LeaseLost(error.value) from None
        raise
