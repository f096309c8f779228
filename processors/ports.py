"""The ports between planning and I/O: what the worker needs of its stores, and what each promises.

Planning (``processors/``) states its needs here as Protocols; the boto3 adapters live in
``worker/stores/`` and the in-memory fakes in ``tests/support/fakes.py``. Both pass one contract suite
(``tests/integration/test_store_contracts.py``). An adapter translates every AWS outcome a caller must act
on into a domain error (``processors.errors``): ``StaleTripState``, ``UnwritableUpdate``, ``TransientError``.
Throttling and 5xx may surface as the AWS error itself: ``worker.retry.is_transient`` knows them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

from schemas.records import KinesisRecord, StreamPosition, VehicleReading

if TYPE_CHECKING:
    from processors.batch import DeadLetter
    from processors.dead_letter import DataKey
    from processors.frontier import ShardProgress
    from processors.trail import BucketMerge, Crumb
    from processors.vehicle_state import StateUpdate
    from schemas.items import TripIndexItem, TripMarkItem, TripStateItem


class TripStore(Protocol):
    """``trip-state`` (one item per vehicle with an open trip) and the marks of the others (``vin-mapping``).

    Every trip-state write is conditional on the version the writer read: a lost race raises
    ``StaleTripState`` carrying the item stored now, and never overwrites it.
    """

    def load(self, pseudo_vins: Sequence[str]) -> dict[str, TripStateItem]:
        """The state of these vehicles, strongly consistent: the trip-state item, else the vehicle's mark
        as an IDLE item whose ``lastUpdate`` is ``MARK_VERSION`` (no item); absent: neither is stored."""
        ...

    def write(self, item: TripStateItem, expected_last_update: str | None) -> None:
        """Store ``item`` if the stored one is still at ``expected_last_update``; None: create it, only if
        there is no item and the mark's high-water mark is older than the item's earliest trip. Else raise
        ``StaleTripState(current)`` (``current`` as ``load`` returns it)."""
        ...

    def close(self, pseudo_vin: str, mark: TripMarkItem | None, expected_last_update: str | None) -> int:
        """No trip left open: raise the mark to ``mark`` (monotone on ``hwm``; an older one changes
        nothing), then delete the item if still at ``expected_last_update`` (None: there is none), else
        raise ``StaleTripState(current)``. Returns requests made."""
        ...

    def open_items(self, pseudo_vins: Sequence[str]) -> tuple[dict[str, TripStateItem], int]:
        """Trip-state items only (never marks), strongly consistent. Returns (items, requests)."""
        ...

    def silent(self, shard: int, until_s: int) -> tuple[list[str], int]:
        """The orphan sweep's candidates: vehicles of sweep shard ``shard`` whose item has ``idleAfter <=
        until_s`` (the sparse index ``open-trips-by-idle``). Returns (pseudoVins, requests)."""
        ...


class TrailStore(Protocol):
    """``live-breadcrumbs``: per vehicle, 15 s buckets of crumbs (``processors.trail``), each slot the join
    of its crumbs."""

    def merge(self, merges: Sequence[BucketMerge]) -> int:
        """Return only once every bucket holds, per slot, a value covering the merge's (``join(stored,
        ours) == stored``: the join of both, under concurrent writers too) and an ``expiresAt`` at least the
        merge's. Idempotent, commutative: re-merging, in any order or by any writer, changes nothing.
        Returns requests made."""
        ...

    def read(self, pseudo_vin: str, from_ms: int, to_ms: int) -> list[Crumb]:
        """The vehicle's crumbs with ``from_ms <= t <= to_ms``, strongly consistent, in (t, value) order.
        Expired crumbs TTL has not yet removed are included: callers filter against their own clock."""
        ...


class VehicleStateWriter(Protocol):
    """``vehicle-state``: per vehicle, the latest value of every signal."""

    def apply(self, update: StateUpdate) -> int:
        """Return only once the stored item reflects ``update``; re-applying any update changes nothing.
        Returns requests made. Raises ``UnwritableUpdate`` when the store refuses the content as invalid."""
        ...


class DeadLetterWriter(Protocol):
    """One object per dead letter, at a key derived from its stream position, written once: a redelivered
    record's dead letter writes nothing; another record's at the same key raises ``WriteOnceConflict``."""

    def data_key(self) -> DataKey:
        """A fresh data key for envelope encryption (one per batch)."""
        ...

    def write(self, dead_letter: DeadLetter, data_key: DataKey) -> int:
        """Store one dead letter, its original bytes sealed under ``data_key``. Returns requests made."""
        ...


class VinVault(Protocol):
    """``vin-mapping``: pseudoVin -> the VIN, encrypted. The only place a real VIN is stored.

    The table also holds the fingerprint of the pseudonymization key its pseudoVins were derived with
    (item ``processors.pseudonymize.PSEUDONYM_KEY_ITEM``), and other per-vehicle attributes a vault
    write never blocks nor drops. Encrypting is the costly part (a KMS call): ``known`` first, then
    ``remember`` only the vehicles it did not return.
    """

    def known(self, pseudo_vins: Sequence[str]) -> set[str]:
        """Those of ``pseudo_vins`` whose encrypted VIN is stored. May miss a mapping stored within the last
        second (an eventually consistent read): remembering it again is harmless."""
        ...

    def remember(self, pseudo_vin: str, vin: str) -> int:
        """Store the vehicle's encrypted VIN unless one is stored; other attributes of its item are kept.
        Storing an existing mapping changes nothing. Returns requests made."""
        ...

    def resolve(self, pseudo_vin: str) -> str | None:
        """The VIN behind a pseudoVin (operators only), None if unknown."""
        ...

    def fingerprint(self) -> str | None:
        """The recorded pseudonymization key fingerprint, None when none is."""
        ...

    def record_fingerprint(self, fingerprint: str) -> str:
        """Record ``fingerprint`` unless one is recorded; returns the one recorded now (first wins)."""
        ...


class ProgressStore(Protocol):
    """The record processors' reports of how far each shard's consumer has come
    (``processors.frontier.ShardProgress``), one item per shard in ``vin-mapping``, never a vehicle's."""

    def record(self, progress: ShardProgress) -> int:
        """Store the shard's report in place of the previous one (last writer wins: a report only ever
        vouches for what its writer already wrote, so an older one overwriting a newer one only makes the
        sweep more careful). Returns requests made."""
        ...

    def read(self, shard_ids: Sequence[str]) -> tuple[dict[str, ShardProgress], int]:
        """The stored reports of these shards (strongly consistent; a shard without one is absent).
        Returns (reports, requests)."""
        ...


class TripArchive(Protocol):
    """Archive and segment objects (S3), written once, and ``trips-index`` items (overwrites, the final item
    over the on-time one) of deterministic content, so writing twice, or by two writers, leaves the same
    result."""

    def put_object(self, key: str, body: bytes, *, provisional: bool = False) -> None:
        """Store ``body`` unless the key holds an object: the same bytes is a no-op, other bytes raise
        ``WriteOnceConflict`` (the stored object is kept; alarmed, unless ``provisional``: an on-time
        archive that a late crumb changed, which the final archive carries)."""
        ...

    def get_object(self, key: str) -> bytes:
        """The object's bytes; raises if there is none (a sealed segment is never missing)."""
        ...

    def put_index(self, item: TripIndexItem) -> None:
        """Store the item; a ``provisional`` one only where there is none or a provisional one (a replayed
        on-time archive never replaces the final item)."""
        ...


@dataclass(frozen=True, slots=True)
class Stores:
    """Every port the record processor writes through, built in one place (``worker.wiring``)."""

    trips: TripStore
    trail: TrailStore
    vehicle_state: VehicleStateWriter
    dead_letters: DeadLetterWriter
    vault: VinVault
    archive: TripArchive
    progress: ProgressStore


W = TypeVar("W")

K = TypeVar("K")
M = TypeVar("M")

Staged: TypeAlias = dict[Any, Any]
"""What a spread checkpoint waits for in one buffer: each write that was pending when it was called for,
by key, with a mark that tells whether it is still that same unwritten write (opaque to the pipeline)."""


def take_unwritten(staged: dict[K, M], unwritten: Callable[[K, M], bool], share: float) -> list[K]:
    """Forget the staged writes made since they were staged (``unwritten(key, mark)`` is False: a later
    write for the same key holds later records only), then remove and return the first ``share`` of the
    rest (rounded up: a share above 0 takes one at least), oldest first."""
    for key in [key for key, mark in staged.items() if not unwritten(key, mark)]:
        del staged[key]
    taken = list(staged)[: math.ceil(len(staged) * share)] if share > 0 else []
    for key in taken:
        del staged[key]
    return taken


@dataclass(frozen=True, slots=True)
class Hold:
    """A buffer holds records back from the checkpoint: it may go no further than ``before`` (None: the
    lease's starting point, nothing of it may be checkpointed yet)."""

    before: StreamPosition | None


class WriteBuffer(Protocol[W]):
    """The one shape of what the record processor holds in memory before writing it (``vehicle-state``,
    the trail, ``trip-state``): the pipeline adds every accepted record to each, asks each what is due at
    every flush and flushes it through the executor, and checkpoints no further than any holds back.

    ``due(everything=True)`` hands over all that must be written before a checkpoint; what a buffer still
    keeps after it must be safe to lose with the process (``holds_back`` keeps the checkpoint before its
    records, so the KCL redelivers them). A checkpoint may also be spread (``stage``, ``take_staged``):
    what was pending when it was called for is written over the next flushes, and the checkpoint goes to
    the watermark of that moment once all of it is."""

    def add(self, reading: VehicleReading, record: KinesisRecord, now_ms: int) -> None:
        """Take an accepted record (in stream order), received at ``now_ms``."""
        ...

    def due(self, now_ms: int, *, everything: bool) -> list[W]:
        """Remove and return the writes to make now (``everything``: before a checkpoint)."""
        ...

    def holds_back(self) -> Hold | None:
        """How far a checkpoint may go while this buffer keeps records unwritten (None: no limit)."""
        ...

    def stage(self, now_ms: int) -> Staged:
        """A checkpoint is called for at ``now_ms``: every write pending now (what ``due(everything=True)``
        would take), each with its mark."""
        ...

    def take_staged(self, staged: Staged, share: float, now_ms: int) -> list[W]:
        """Forget the ones of ``staged`` written since, then remove and return ``share`` of the rest
        (``take_unwritten``) as writes to make now."""
        ...
