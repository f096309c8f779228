"""In-memory fakes of ``processors.ports``: the same contracts as the boto3 adapters (checked by
``tests/integration/test_store_contracts.py``), for testing the executor, pipeline, commit loop and sweep
without AWS.

Each fake is thread-safe (the executor writes from a pool) and takes failures to inject: ``fail_next``
holds errors raised, one per call, by its next writes (quix-streams' ``FailingSink``, as a list).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from processors.batch import DeadLetter
from processors.dead_letter import DataKey, dead_letter_key
from processors.errors import ConflictReason, StaleTripState, UnwritableUpdate, WriteOnceConflict
from processors.frontier import ShardProgress
from processors.ports import Stores
from processors.pseudonymize import PSEUDONYM_KEY_ITEM, is_vehicle
from processors.signals import format_time
from processors.trail import BucketMerge, Crumb, bucket_range, decode_item, one_per_slot
from processors.trail import outstanding as trail_outstanding
from processors.trip_items import earliest_start, item_from_mark
from processors.vehicle_state import StateUpdate, outstanding, stored_value
from schemas.dynamo import from_attribute, to_attribute
from schemas.items import TripIndexItem, TripMarkItem, TripStateItem
from schemas.signal_codes import encode as signal_code


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
                mark = self.marks.get(pv)
                if current is not None or (mark is not None and mark.hwm >= earliest_start(item)):
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


class MemoryTrail(_Failing):
    """Bucket items as ``from_item`` reads them back: ``{"pseudoVin", "bucket", "expiresAt", slot: value}``,
    each slot the join of what was written to it (``processors.trail.outstanding``, the remainder the
    DynamoDB adapter swaps in), applied atomically: where the adapter takes rounds under contention, the
    fake ends in one at the same item."""

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, int], dict[str, Any]] = {}

    def merge(self, merges: Sequence[BucketMerge]) -> int:
        self._maybe_fail()
        with self.lock:
            for merge in merges:
                item = self.items.setdefault(
                    (merge.pseudo_vin, merge.bucket), {"pseudoVin": merge.pseudo_vin, "bucket": merge.bucket}
                )
                remainder = trail_outstanding(merge, item)
                if remainder is None:
                    continue
                item.update(remainder.slots)
                if remainder.expires_at is not None:
                    item["expiresAt"] = remainder.expires_at
        return len(merges)

    def read(self, pseudo_vin: str, from_ms: int, to_ms: int) -> list[Crumb]:
        low, high = bucket_range(from_ms, to_ms)
        with self.lock:
            items = [dict(i) for (pv, b), i in self.items.items() if pv == pseudo_vin and low <= b <= high]
        return one_per_slot(c for item in items for c in decode_item(item) if from_ms <= c.t_ms <= to_ms)


NESTING_MAX_LEVELS = 32
"""DynamoDB's nesting limit: a top-level map attribute is level 1."""


def _levels(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_levels, value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max(map(_levels, value), default=0)
    return 0


class MemoryVehicleState(_Failing):
    """Items as ``from_item`` reads them back: ``{"ts": ms, code: [value, at_ms]}`` (``signal_codes``).
    Refuses, as DynamoDB does, a value nested past 32 levels; ``refuse`` names more signals to refuse.
    ``writes`` counts the updates sent per vehicle."""

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}
        self.refuse: set[str] = set()
        self.writes: Counter[str] = Counter()

    def apply(self, update: StateUpdate) -> int:
        self._maybe_fail()
        self.writes[update.pseudo_vin] += 1
        too_deep = any(1 + _levels(o.value) > NESTING_MAX_LEVELS for o in update.signals.values())
        if too_deep or self.refuse & update.signals.keys():
            raise UnwritableUpdate(update.pseudo_vin, "refused as invalid")
        with self.lock:
            item = self.items.setdefault(update.pseudo_vin, {})
            remainder = outstanding(update, item)
            if remainder is None:
                return 1
            for name, observation in remainder.signals.items():
                value = from_attribute(
                    to_attribute(stored_value(name, observation.value))
                )  # as stored and read
                item[signal_code(name)] = [value, observation.at_ms]
            if remainder.sets_timestamp:
                item["ts"] = remainder.timestamp_ms
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
        key = dead_letter_key(dead_letter.record.position)
        with self.lock:
            # Write-once, as S3DeadLetters: the same record again is a no-op, another one a conflict.
            stored, new = self.letters.setdefault(key, dead_letter).record, dead_letter.record
            if (stored.data, stored.partition_key) != (new.data, new.partition_key):
                raise WriteOnceConflict(key, ConflictReason.DIFFERENT_RECORD)
        return 1


class MemoryVinVault(_Failing):
    """``items`` as the table holds them (plain values; ``encryptedVin`` is the VIN itself here);
    ``encrypts`` counts what would be KMS Encrypt calls, ``reads`` the keys looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}
        self.encrypts = 0
        self.reads = 0

    @property
    def vins(self) -> dict[str, str]:
        """pseudoVin -> VIN of every vehicle stored (``_meta#`` items left out)."""
        with self.lock:
            return {pv: item["encryptedVin"] for pv, item in self.items.items() if "encryptedVin" in item}

    def known(self, pseudo_vins: Sequence[str]) -> set[str]:
        self._maybe_fail()
        with self.lock:
            self.reads += len(set(pseudo_vins))
            return {pv for pv in pseudo_vins if "encryptedVin" in self.items.get(pv, {})}

    def remember(self, pseudo_vin: str, vin: str) -> int:
        self._maybe_fail()
        with self.lock:
            self.encrypts += 1
            item = self.items.setdefault(pseudo_vin, {"pseudoVin": pseudo_vin})
            item.setdefault("encryptedVin", vin)
            item.setdefault("createdAt", format_time(0))
        return 1

    def resolve(self, pseudo_vin: str) -> str | None:
        with self.lock:
            return self.items.get(pseudo_vin, {}).get("encryptedVin") if is_vehicle(pseudo_vin) else None

    def fingerprint(self) -> str | None:
        with self.lock:
            return self.items.get(PSEUDONYM_KEY_ITEM, {}).get("fingerprint")

    def record_fingerprint(self, fingerprint: str) -> str:
        self._maybe_fail()
        with self.lock:
            item = self.items.setdefault(
                PSEUDONYM_KEY_ITEM,
                {"pseudoVin": PSEUDONYM_KEY_ITEM, "fingerprint": fingerprint, "createdAt": format_time(0)},
            )
            return str(item["fingerprint"])


class MemoryTripArchive(_Failing):
    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}
        self.index: dict[tuple[str, str], TripIndexItem] = {}

    def put_object(self, key: str, body: bytes, *, provisional: bool = False) -> None:
        self._maybe_fail()
        with self.lock:
            # Write-once, as S3TripArchive: the same bytes again is a no-op, other bytes a conflict.
            if self.objects.setdefault(key, body) != body:
                reason = ConflictReason.PROVISIONAL_BYTES if provisional else ConflictReason.DIFFERENT_BYTES
                raise WriteOnceConflict(key, reason)

    def get_object(self, key: str) -> bytes:
        with self.lock:
            return self.objects[key]

    def put_index(self, item: TripIndexItem) -> None:
        self._maybe_fail()
        with self.lock:
            stored = self.index.get((item.pseudoVin, item.tripId))
            if item.provisional and stored is not None and not stored.provisional:
                return  # as S3TripArchive: an on-time item never replaces the final one
            self.index[(item.pseudoVin, item.tripId)] = item


class MemoryProgress(_Failing):
    """``items``: shard id -> its last report; ``writes`` counts ``record`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, ShardProgress] = {}
        self.writes = 0

    def record(self, progress: ShardProgress) -> int:
        self._maybe_fail()
        with self.lock:
            self.items[progress.shard_id] = progress
            self.writes += 1
        return 1

    def read(self, shard_ids: Sequence[str]) -> tuple[dict[str, ShardProgress], int]:
        with self.lock:
            found = {shard: self.items[shard] for shard in shard_ids if shard in self.items}
        return found, -(-len(set(shard_ids)) // 100)


class MemoryStores(Stores):
    """``Stores`` whose members are the fakes above (typed as such, for tests to reach in)."""

    trips: MemoryTripStore
    trail: MemoryTrail
    vehicle_state: MemoryVehicleState
    dead_letters: MemoryDeadLetters
    vault: MemoryVinVault
    archive: MemoryTripArchive
    progress: MemoryProgress


def memory_stores() -> MemoryStores:
    return MemoryStores(
        trips=MemoryTripStore(),
        trail=MemoryTrail(),
        vehicle_state=MemoryVehicleState(),
        dead_letters=MemoryDeadLetters(),
        vault=MemoryVinVault(),
        archive=MemoryTripArchive(),
        progress=MemoryProgress(),
    )
