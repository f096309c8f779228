"""Pseudonymization at the boundary: VIN -> pseudoVin, and the encrypted VIN vault.

Pure core: ``Pseudonymizer`` (a keyed HMAC). I/O edge: ``load_pseudonym_key`` (Secrets Manager) and
``VinVault`` (KMS + the ``vin-mapping`` table), the only place a real VIN is ever stored, encrypted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from schemas.records import StreamPosition, TelemetryRecord, VehicleReading

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient


class Pseudonymizer:
    """``pseudoVin`` = first 32 lowercase hex chars of HMAC-SHA256(key, normalized VIN)."""

    def __init__(self, key: bytes, cache_size: int = 131_072) -> None:
        if not key:
            raise ValueError("empty pseudonymization key")
        self._key = key
        # HMAC per record would dominate the hot path; a fleet has few vehicles per shard.
        self.pseudo_vin = lru_cache(maxsize=cache_size)(self._pseudo_vin)

    def _pseudo_vin(self, vin: str) -> str:
        return hmac.new(self._key, vin.encode("ascii"), hashlib.sha256).hexdigest()[:32]

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<redacted>)"

    def reading(self, record: TelemetryRecord, position: StreamPosition) -> VehicleReading:
        return VehicleReading(self.pseudo_vin(record.vin), record.event_time_ms, record.signals, position)


def load_pseudonym_key(secret_id: str, client: SecretsManagerClient) -> bytes:
    """Read the HMAC key once at startup. Never logged."""
    secret = client.get_secret_value(SecretId=secret_id)
    if "SecretBinary" in secret:
        return bytes(secret["SecretBinary"])
    return secret["SecretString"].encode("utf-8")


def first_sightings(pairs: Mapping[str, str], known: set[str]) -> dict[str, str]:
    """pseudoVin -> VIN for the vehicles this worker has not yet put into the vault."""
    return {pseudo_vin: vin for pseudo_vin, vin in pairs.items() if pseudo_vin not in known}
