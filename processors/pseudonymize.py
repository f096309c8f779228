"""Pseudonymization at the boundary: VIN -> pseudoVin.

Pure: ``Pseudonymizer`` (a keyed HMAC) and ``SeenVehicles`` (which vehicles this worker already put in
the VIN vault). The vault itself, the only place a real VIN is ever stored (encrypted), is the
``processors.ports.VinVault`` port; its adapter and the key loader live in ``worker.stores.vin_vault``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache

from schemas.records import StreamPosition, TelemetryRecord, VehicleReading


class Pseudonymizer:
    """``pseudoVin`` = first 32 lowercase hex chars of HMAC-SHA256(key, normalized VIN)."""

    def __init__(self, key: bytes, cache_size: int = 131_072) -> None:
        if not key:
            raise ValueError("empty pseudonymization key")
        self._key = key
        # HMAC per record would dominate the hot path; a fleet has few vehicles per shard.
        self.pseudo_vin = lru_cache(maxsize=cache_size)(self._pseudo_vin)

    def _pseudo_vin(self, vin: str) -> str:
        # UTF-8 equals ASCII for a VIN; it matters for partition keys, which Kinesis allows in Unicode.
        return hmac.new(self._key, vin.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<redacted>)"

    def reading(self, record: TelemetryRecord, position: StreamPosition) -> VehicleReading:
        return VehicleReading(self.pseudo_vin(record.vin), record.event_time_ms, record.signals, position)


class SeenVehicles:
    """The vehicles this worker already stored in the VIN vault: a bounded, thread-safe LRU, so the vault
    is written once per vehicle per worker (the vault's own write is a no-op for a known vehicle anyway)."""

    def __init__(self, capacity: int = 131_072) -> None:
        self._known: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def unknown(self, sightings: Mapping[str, str]) -> dict[str, str]:
        with self._lock:
            return {pv: vin for pv, vin in sightings.items() if pv not in self._known}

    def add(self, pseudo_vin: str) -> None:
        with self._lock:
            self._known[pseudo_vin] = None
            if len(self._known) > self._capacity:
                self._known.popitem(last=False)
