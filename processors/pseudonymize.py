"""Pseudonymization at the boundary: VIN -> pseudoVin.

Pure: ``Pseudonymizer`` (a keyed HMAC), ``SeenVehicles`` (which vehicles this worker already knows to
be in the VIN vault) and the key's fingerprint (``key_fingerprint``, ``check_fingerprint``). The vault
itself, the only place a real VIN is ever stored (encrypted), is the ``processors.ports.VinVault`` port;
its adapter and the key loader live in ``worker.stores.vin_vault``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from functools import lru_cache

from processors.errors import PseudonymKeyMismatch
from schemas.records import StreamPosition, TelemetryRecord, VehicleReading

META_PREFIX = "_meta#"
"""pseudoVins of ``vin-mapping`` items that are not vehicles (a pseudoVin is 32 hex characters, so these
never collide with one). Whatever scans or reads the table as vehicles skips them (``is_vehicle``)."""
PSEUDONYM_KEY_ITEM = META_PREFIX + "pseudonym-key"
"""The ``vin-mapping`` item holding the fingerprint of the key the tables were built with."""
FINGERPRINT_MESSAGE = b"fleet-ingest pseudonym-key fingerprint v1"


def is_vehicle(pseudo_vin: str) -> bool:
    """A ``vin-mapping`` key names a vehicle (not a ``_meta#`` item)."""
    return not pseudo_vin.startswith(META_PREFIX)


def key_fingerprint(key: bytes) -> str:
    """A keyed hash that names the key without revealing it: HMAC-SHA256(key, a fixed message), 32 hex."""
    return hmac.new(key, FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:32]


def check_fingerprint(recorded: str | None, loaded: str) -> None:
    """Raise ``PseudonymKeyMismatch`` unless the fingerprint recorded in ``vin-mapping`` is ``loaded``'s."""
    if recorded is None:
        raise PseudonymKeyMismatch(
            "vin-mapping has no pseudonym key fingerprint; run python -m worker bootstrap"
        )
    if not hmac.compare_digest(recorded, loaded):
        raise PseudonymKeyMismatch(
            "pseudonym key does not match the key these tables were built with "
            f"(fingerprint {recorded[:8]}… expected, {loaded[:8]}… loaded); refusing to consume"
        )


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

    def fingerprint(self) -> str:
        """``key_fingerprint`` of this pseudonymizer's key."""
        return key_fingerprint(self._key)

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<redacted>)"

    def reading(self, record: TelemetryRecord, position: StreamPosition) -> VehicleReading:
        return VehicleReading(self.pseudo_vin(record.vin), record.event_time_ms, record.signals, position)


class SeenVehicles:
    """The vehicles this worker knows to be in the VIN vault (it read or wrote their mapping): a bounded,
    thread-safe LRU, so the vault is read at most once per vehicle per worker and written only for a
    vehicle it does not hold yet."""

    def __init__(self, capacity: int = 131_072) -> None:
        self._known: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def unknown(self, sightings: Mapping[str, str]) -> dict[str, str]:
        with self._lock:
            return {pv: vin for pv, vin in sightings.items() if pv not in self._known}

    def add(self, pseudo_vin: str) -> None:
        self.add_all((pseudo_vin,))

    def add_all(self, pseudo_vins: Iterable[str]) -> None:
        with self._lock:
            for pseudo_vin in pseudo_vins:
                self._known[pseudo_vin] = None
                self._known.move_to_end(pseudo_vin)
            while len(self._known) > self._capacity:
                self._known.popitem(last=False)
