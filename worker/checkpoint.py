"""When to checkpoint, and how to checkpoint safely through amazon-kclpy.

The policy is a small frozen object with the clock passed in; the processor asks it after every batch
whose writes all succeeded. A failed batch or flush never reaches it: the process exits first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from amazon_kclpy.checkpoint_error import CheckpointError

from processors.errors import FleetIngestError
from schemas.records import StreamPosition
from worker.logs import event
from worker.retry import CHECKPOINT, DEFAULT, Retrier

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CheckpointPolicy:
    """When to checkpoint: every ``every_seconds`` since the last one (and always at
    ``shutdown_requested``/``shard_ended``, which the processor handles itself). It owns its timing: the
    clock is passed in (arroyo's ``CommitPolicyState``: ``due`` / ``done``, done when a checkpoint is
    called for). Time only: each checkpoint first writes everything pending when it is called for (vehicle
    state, trail, and the trip-state of every vehicle whose exact machine moved), so a count trigger would
    multiply trip-state writes by the record rate, and an idle trigger by the poll rate."""

    every_seconds: float = 60.0
    last_at: float | None = None
    """When the last checkpoint (or the lease) started."""

    def due(self, now: float) -> bool:
        if self.last_at is None:
            self.last_at = now
        return now - self.last_at >= self.every_seconds

    def done(self, now: float) -> None:
        self.last_at = now


SPREAD_SHARE = 1 / 6
"""Of the checkpoint interval, how long the writes a checkpoint waits for are spread over (10 s at the
default 60 s): at a full shard everything pending is about 2 writes a vehicle (its partial trail bucket,
its ``vehicle-state`` or liveness, its exact trip machine), 2,400 at 1,000 vehicles, 30 times a poll's
flush. Written at once they held the shard's next poll back for seconds every minute; spread, they add
about 60 writes to each poll's ~80 for 10 s."""


def spread_ms(every_seconds: float) -> int:
    """How long a checkpoint called for every ``every_seconds`` spreads its writes (``SPREAD_SHARE``)."""
    return round(every_seconds * 1000 * SPREAD_SHARE)


class Checkpointer(Protocol):
    def checkpoint(
        self, sequence_number: str | None = None, sub_sequence_number: int | None = None
    ) -> None: ...


LOST_LEASE_ERRORS = frozenset({"ShutdownException", "LeaseLostException"})
"""We may no longer checkpoint this shard (what is retried: ``retry.RETRYABLE_CHECKPOINT_ERRORS``)."""


class LeaseLost(FleetIngestError):
    """Checkpointing was refused because this worker no longer owns the shard."""


def _checkpoint_once(checkpointer: Checkpointer, position: StreamPosition | None) -> None:
    if position is None:
        checkpointer.checkpoint()
    else:
        checkpointer.checkpoint(position.sequence_number, position.sub_sequence_number)


def checkpoint(
    checkpointer: Checkpointer, position: StreamPosition | None, shard_id: str, retrier: Retrier = DEFAULT
) -> None:
    """Checkpoint at ``position`` (None: at the end of what the daemon delivered, e.g. SHARD_END),
    retried under ``retry.CHECKPOINT`` while the lease table is busy.

    Raises ``LeaseLost`` when the daemon says we no longer own the shard (a zombie must not go on);
    any other refusal (``InvalidStateException``...) propagates, and the processor exits.
    """
    try:
        retrier.call(CHECKPOINT, _checkpoint_once, checkpointer, position)
    except CheckpointError as error:
        if error.value in LOST_LEASE_ERRORS:
            event(log, "checkpoint_refused", logging.WARNING, shard=shard_id, reason=error.value)
            raise LeaseLost(error.value) from None
        raise
