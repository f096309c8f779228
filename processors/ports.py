"""The ports between planning and I/O: what the worker needs of its stores, and what each promises.

Planning (``processors/``) states its needs here as Protocols; the boto3 adapters live in
``worker/stores/`` and the in-memory fakes in ``tests/support/fakes.py``. Both pass one contract suite
(``tests/integration/test_store_contracts.py``). An adapter translates every AWS outcome a caller must act
on into a domain error (``processors.errors``): ``StaleTripState``, ``UnwritableUpdate``, ``TransientError``.
Throttling and 5xx may surface as the AWS error itself: ``worker.retry.is_transient`` knows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from processors.batch import DeadLetter
    from processors.dead_letter import DataKey
    from processors.trips import Breadcrumb
    from processors.vehicle_state import StateUpdate
    from schemas.items import BreadcrumbItem, TripIndexItem, TripMarkItem, TripStateItem


class TripStore(Protocol):
    """``trip-state`` (one item per vehicle with an open trip), the marks of the others (``vin-mapping``)
    and ``live-breadcrumbs``.

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

    def put_breadcrumbs(self, crumbs: Sequence[Breadcrumb]) -> int:
        """Store breadcrumbs (idempotent: a breadcrumb's key is its vehicle and time). Returns requests."""
        ...

    def breadcrumbs(self, pseudo_vin: str, trip_id: str, from_ms: int, to_ms: int) -> list[BreadcrumbItem]:
        """A trip's breadcrumbs with ``from_ms <= time <= to_ms``, in time order, strongly consistent."""
        ...


class VehicleStateWriter(Protocol):
    """``vehicle-state``: per vehicle, the latest value of every signal."""

    def apply(self, update: StateUpdate) -> int:
        """Return only once the stored item reflects ``update``; re-applying any update changes nothing.
        Returns requests made. Raises ``UnwritableUpdate`` when the store refuses the content as invalid."""
        ...


class DeadLetterWriter(Protocol):
    """One object per dead letter, at a key derived from its stream position: a redelivery overwrites."""

    def data_key(self) -> DataKey:
        """A fresh data key for envelope encryption (one per batch)."""
        ...

    def write(self, dead_letter: DeadLetter, data_key: DataKey) -> int:
        """Store one dead letter, its original bytes sealed under ``data_key``. Returns requests made."""
        ...


class VinVault(Protocol):
    """``vin-mapping``: pseudoVin -> the VIN, encrypted. The only place a real VIN is stored."""

    def remember(self, pseudo_vin: str, vin: str) -> int:
        """Store the mapping; storing an existing one is a no-op. Returns requests made."""
        ...

    def resolve(self, pseudo_vin: str) -> str | None:
        """The VIN behind a pseudoVin (operators only), None if unknown."""
        ...


class TripArchive(Protocol):
    """Archive and segment objects (S3) and ``trips-index`` items: plain overwrites of deterministic
    content, so writing twice, or by two writers, leaves the same result."""

    def put_object(self, key: str, body: bytes) -> None: ...

    def get_object(self, key: str) -> bytes:
        """The object's bytes; raises if there is none (a sealed segment is never missing)."""
        ...

    def put_index(self, item: TripIndexItem) -> None: ...


@dataclass(frozen=True, slots=True)
class Stores:
    """Every port the record processor writes through, built in one place (``worker.wiring``)."""

    trips: TripStore
    vehicle_state: VehicleStateWriter
    dead_letters: DeadLetterWriter
    vault: VinVault
    archive: TripArchive
