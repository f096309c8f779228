"""How far each shard's consumer has come, without reading the stream: the progress a record processor
reports at each checkpoint, and the orphan sweep's rule on it.

The stream's partition key is the VIN, so whoever reads records can read every VIN. The sweep must know
whether each shard's consumer keeps up (a lagging consumer's vehicles look silent), yet read no record.
So each record processor reports what it knew when each checkpoint was called for, once the checkpoint's
writes made ``trip-state`` current for every record it had received by then: a ``ShardProgress``, stored
in ``vin-mapping`` under ``_meta#progress#<shardId>`` (``progress_key``; not a vehicle: ``is_vehicle`` is
False, and it holds no VIN, only a shard id and times). Pure: the tracker (``ConsumerPosition``) and the
rule (``behind``); the store is the ``processors.ports.ProgressStore`` port.

**What a progress item vouches for** (``ShardProgress.through_ms``, the stream's clock): every record of
the shard that arrived before it was received, and is in ``trip-state``, by ``written_ms``. It is the
later of two facts: the arrival of the newest record received (records of a shard arrive in sequence
order), and the last time the daemon said the shard had nothing newer (``millisBehindLatest`` 0: a caught-up
consumer of a quiet shard is current although its newest record is old). A lagging poll (``> 0``) moves
neither. The KCL may have fetched a poll up to one poll interval before handing it over; a gap of slack
in the limit (below) covers that.

**The rule** (``behind``): a shard is behind when its progress vouches for less than the limit, i.e.
``now - through_ms > limit_ms``; no item (or one vouching for nothing) is behind too. A consumer that died
or hangs writes no more progress, so its item ages past the limit by itself: ``through_ms`` is never later
than ``written_ms``. The sweep's limit is a gap past the lag a healthy consumer's progress has by design,
one checkpoint interval and its spread (``worker.sweep.skip_limit_ms``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from processors.pseudonymize import META_PREFIX
from schemas.items import ShardProgressItem

PROGRESS_PREFIX = META_PREFIX + "progress#"
"""``vin-mapping`` keys of the per-shard progress items (``_meta#progress#shardId-000000000000``)."""


def progress_key(shard_id: str) -> str:
    """The ``vin-mapping`` key of a shard's progress item."""
    return PROGRESS_PREFIX + shard_id


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """What a shard's record processor reported at a checkpoint (or at the end of its shard)."""

    shard_id: str
    written_ms: int
    """Wall clock of the report: after the checkpoint's writes, before its checkpoint."""
    last_arrival_ms: int | None = None
    """Arrival (stream clock) of the newest record the processor had received when the checkpoint was
    called for; None: none yet."""
    caught_up_ms: int | None = None
    """The processor's clock when it got the last poll the daemon said was 0 behind; None: none yet."""
    millis_behind: int | None = None
    """``millisBehindLatest`` of the last poll (for operators; the rule reads the two above)."""
    ended: bool = False
    """Reported at the end of the shard: every record of it is in ``trip-state``, none can follow."""

    @property
    def through_ms(self) -> int | None:
        """Every record of the shard that arrived before this was received and written; None: nothing is
        vouched for."""
        known = [t for t in (self.last_arrival_ms, self.caught_up_ms) if t is not None]
        return max(known) if known else None


@dataclass(slots=True)
class ConsumerPosition:
    """A record processor's view of its shard's position, fed every poll (``polled``) and reported at each
    checkpoint (``progress``). One per shard lease."""

    last_arrival_ms: int | None = None
    caught_up_ms: int | None = None
    millis_behind: int | None = None

    def polled(self, arrivals: Iterable[int], millis_behind: int | None, now_ms: int) -> None:
        """A poll got at ``now_ms``: its records' arrivals and the daemon's ``millisBehindLatest`` (None:
        not reported, taken as behind)."""
        newest = max(arrivals, default=None)
        if newest is not None:
            self.last_arrival_ms = max(newest, self.last_arrival_ms or newest)
        if millis_behind == 0:
            self.caught_up_ms = max(now_ms, self.caught_up_ms or now_ms)
        self.millis_behind = millis_behind

    def progress(self, shard_id: str, now_ms: int, *, ended: bool = False) -> ShardProgress | None:
        """The report to write at ``now_ms``, once everything received is written; None: nothing to vouch
        for yet (no poll said caught up, no record received) and the shard did not end."""
        if not ended and self.last_arrival_ms is None and self.caught_up_ms is None:
            return None
        return ShardProgress(
            shard_id=shard_id,
            written_ms=now_ms,
            last_arrival_ms=self.last_arrival_ms,
            caught_up_ms=self.caught_up_ms,
            millis_behind=self.millis_behind,
            ended=ended,
        )


class BehindReason(StrEnum):
    """Why the sweep counts a shard's consumer as behind (``sweep_skipped``'s ``reason``)."""

    NO_PROGRESS = "no_progress"
    """No progress item: the shard's processor never reached a checkpoint (a new lease, or none runs)."""
    NOT_REPORTING = "not_reporting"
    """The item was written longer ago than the limit: no processor checkpoints the shard (dead, stuck,
    crash-looping, or the lease is not taken)."""
    LAGGING = "lagging"
    """The processor reports, but what it has received is older than the limit: it does not keep up."""


@dataclass(frozen=True, slots=True)
class Behind:
    shard_id: str
    reason: BehindReason
    behind_ms: int | None
    """``now - through_ms``; None when there is no progress to measure."""


def behind(shard_id: str, progress: ShardProgress | None, now_ms: int, limit_ms: int) -> Behind | None:
    """The shard's consumer is behind at ``now_ms`` (see the module docstring), else None."""
    if progress is not None and progress.ended:
        return None  # every record of the shard is in trip-state, and no other can come
    through = progress.through_ms if progress is not None else None
    if progress is None or through is None:
        return Behind(shard_id, BehindReason.NO_PROGRESS, None)
    lag = now_ms - through
    if lag <= limit_ms:
        return None
    stale = now_ms - progress.written_ms > limit_ms
    return Behind(shard_id, BehindReason.NOT_REPORTING if stale else BehindReason.LAGGING, lag)


def progress_item(progress: ShardProgress) -> ShardProgressItem:
    """The stored shape of a report (``vin-mapping``)."""
    return ShardProgressItem(
        pseudoVin=progress_key(progress.shard_id),
        writtenAt=progress.written_ms,
        lastArrival=progress.last_arrival_ms,
        caughtUpAt=progress.caught_up_ms,
        millisBehindLatest=progress.millis_behind,
        shardEnded=progress.ended,
    )


def progress_of(item: ShardProgressItem) -> ShardProgress:
    return ShardProgress(
        shard_id=item.pseudoVin.removeprefix(PROGRESS_PREFIX),
        written_ms=item.writtenAt,
        last_arrival_ms=item.lastArrival,
        caught_up_ms=item.caughtUpAt,
        millis_behind=item.millisBehindLatest,
        ended=item.shardEnded,
    )
