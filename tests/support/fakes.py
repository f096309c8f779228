"""In-memory fakes of ``processors.ports``: the same contracts as the boto3 adapters (checked by
``tests/integration/test_store_contracts.py``), for testing the executor, pipeline, commit loop and sweep
without AWS.

Each fake is thread-safe (the executor writes from a pool) and takes failures to inject: ``fail_next``
holds errors raised, one per call, by its next writes (quix-streams' ``FailingSink``, as a list).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from processors.batch import DeadLetter
from processors.dead_letter import DataKey, dead_letter_key
from processors.errors import StaleTripState, UnwritableUpdate
from processors.ports import Stores
from processors.signals import format_time, parse_time
from processors.trip_items import breadcrumb_item, item_from_mark
from processors.trips import Breadcrumb
from processors.vehicle_state import StateUpdate, outstanding
from schemas.dynamo import from_item
from schemas.items import BreadcrumbItem, TripIndexItem, TripMarkItem, TripStateItem


class _Failing:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail_next: list[BaseException] = []
        self.always: BaseException | None = None

    def _maybe_fail(self) -> None:
        with self.lock:
            if self.always is not None:
                raise self.always
            if self.fail_next:
                raise self.fail_next.pop(0)


class MemoryTripStore(_Failing):
    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, TripStateItem] = {}
        self.marks: dict[str, TripMarkItem] = {}
        self.crumbs: dict[tuple[str, str], BreadcrumbItem] = {}

    def load(self, pseudo_vins: Sequence[str]) -> dict[str, TripStateItem]:
        with self.lock:
            return self._load(pseudo_vins)

    def _load(self, pseudo_vins: Sequence[str]) -> dict[str, TripStateItem]:
        found = {pv: self.items[pv] for pv in pseudo_vins if pv in self.items}
        for pv in pseudo_vins:
            if pv not in found and pv in self.marks:
                found[pv] = item_from_mark(pv, self.marks[pv])
        return found

    def write(self, item: TripStateItem, expected_last_update: str | None) -> None:
        self._maybe_fail()
        with self.lock:
            pv = item.pseudoVin
            current = self.items.get(pv)
            if expected_last_update is None:
                starts = [parse_time(t.startTime) for t in item.outbox]
                starts += [parse_time(item.startTime)] if item.startTime else []
                mark = self.marks.get(pv)
                if current is not None or (mark is not None and mark.hwm >= min(starts, default=0)):
                    raise StaleTripState(pv, self._load([pv]).get(pv))
            elif current is None or current.lastUpdate != expected_last_update:
                raise StaleTripState(pv, self._load([pv]).get(pv))
            self.items[pv] = item

    def close(self, pseudo_vin: str, mark: TripMarkItem | None, expected_last_update: str | None) -> int:
        self._maybe_fail()
        with self.lock:
            stored = self.marks.get(pseudo_vin)
            if mark is not None and (stored is None or stored.hwm <= mark.hwm):
                self.marks[pseudo_vin] = mark
            if expected_last_update is None:
                return int(mark is not None)
            current = self.items.get(pseudo_vin)
            if current is None or current.lastUpdate != expected_last_update:
                raise StaleTripState(pseudo_vin, self._load([pseudo_vin]).get(pseudo_vin))
            del self.items[pseudo_vin]
        return 1 + int(mark is not None)

    def open_items(self, pseudo_vins: Sequence[str]) -> tuple[dict[str, TripStateItem], int]:
        with self.lock:
            return {pv: self.items[pv] for pv in pseudo_vins if pv in self.items}, -(-len(pseudo_vins) // 100)

    def silent(self, shard: int, until_s: int) -> tuple[list[str], int]:
        with self.lock:
            return [
                pv
                for pv, item in self.items.items()
                if item.sweepShard == shard and item.idleAfter is not None and item.idleAfter <= until_s
            ], 1

    def put_breadcrumbs(self, crumbs: Sequence[Breadcrumb]) -> int:
        self._maybe_fail()
        with self.lock:
            for crumb in crumbs:
                item = BreadcrumbItem.model_validate(from_item(breadcrumb_item(crumb)))
                self.crumbs[(item.pseudoVin, item.timestamp)] = item
        return math.ceil(len(crumbs) / 25)

    def breadcrumbs(self, pseudo_vin: str, trip_id: str, from_ms: int, to_ms: int) -> list[BreadcrumbItem]:
        low, high = format_time(from_ms), format_time(to_ms)
        with self.lock:
            return [
                crumb
                for (pv, at), crumb in sorted(self.crumbs.items())
                if pv == pseudo_vin and low <= at <= high and crumb.tripId == trip_id
            ]


NESTING_MAX_LEVELS = 32
"""DynamoDB's nesting limit: a top-level map attribute is level 1."""


def _levels(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_levels, value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max(map(_levels, value), default=0)
    return 0


class MemoryVehicleState(_Failing):
    """Items as ``from_item`` reads them back: ``{"timestamp": ..., name: {"value": ..., "at": ...}}``.
    Refuses, as DynamoDB does, a value nested past 32 levels; ``refuse`` names more signals to refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}
        self.refuse: set[str] = set()

    def apply(self, update: StateUpdate) -> int:
        self._maybe_fail()
        too_deep = any(1 + _levels(o.value) > NESTING_MAX_LEVELS for o in update.signals.values())
        if too_deep or self.refuse & update.signals.keys():
            raise UnwritableUpdate(update.pseudo_vin, "refused as invalid")
        with self.lock:
            item = self.items.setdefault(update.pseudo_vin, {})
            remainder = outstanding(update, item)
            if remainder is None:
                return 1
            for name, observation in remainder.signals.items():
                item[name] = {"value": observation.value, "at": format_time(observation.at_ms)}
            if remainder.sets_timestamp:
                item["timestamp"] = format_time(remainder.timestamp_ms)
        return 1


class MemoryDeadLetters(_Failing):
    KEY = DataKey(b"k" * 32, b"encrypted-k")

    def __init__(self) -> None:
        super().__init__()
        self.letters: dict[str, DeadLetter] = {}

    def data_key(self) -> DataKey:
        return self.KEY

    def write(self, dead_letter: DeadLetter, data_key: DataKey) -> int:
        self._maybe_fail()
        with self.lock:
            self.letters[dead_letter_key(dead_letter.record.position)] = dead_letter
        return 1


class MemoryVinVault(_Failing):
    def __init__(self) -> None:
        super().__init__()
        self.vins: dict[str, str] = {}

    def remember(self, pseudo_vin: str, vin: str) -> int:
        self._maybe_fail()
        with self.lock:
            self.vins.setdefault(pseudo_vin, vin)
        return 1

    def resolve(self, pseudo_vin: str) -> str | None:
        with self.lock:
            return self.vins.get(pseudo_vin)


class MemoryTripArchive(_Failing):
    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}
        self.index: dict[tuple[str, str], TripIndexItem] = {}

    def put_object(self, key: str, body: bytes) -> None:
        self._maybe_fail()
        with self.lock:
            self.objects[key] = body

    def get_object(self, key: str) -> bytes:
        with self.lock:
            return self.objects[key]

    def put_index(self, item: TripIndexItem) -> None:
        self._maybe_fail()
        with self.lock:
            self.index[(item.pseudoVin, item.tripId)] = item


class MemoryStores(Stores):
    """``Stores`` whose members are the fakes above (typed as such, for tests to reach in)."""

    trips: MemoryTripStore
    vehicle_state: MemoryVehicleState
    dead_letters: MemoryDeadLetters
    vault: MemoryVinVault
    archive: MemoryTripArchive


def memory_stores() -> MemoryStores:
    return MemoryStores(
        trips=MemoryTripStore(),
        vehicle_state=MemoryVehicleState(),
        dead_letters=MemoryDeadLetters(),
        vault=MemoryVinVault(),
        archive=MemoryTripArchive(),
    )
