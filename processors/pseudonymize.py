"""Pseudonymization at the boundary: VIN -> pseudoVin, and the encrypted VIN vault.

Pure core: ``Pseudonymizer`` (a keyed HMAC). I/O edge: ``load_pseudonym_key`` (Secrets Manager) and
``VinVault`` (KMS + the ``vin-mapping`` table), the only place a real VIN is ever stored, encrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from processors.errors import aws_error_code
from processors.signals import format_time
from schemas.records import StreamPosition, TelemetryRecord, VehicleReading

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
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
        # UTF-8 equals ASCII for a VIN; it matters for partition keys, which Kinesis allows in Unicode.
        return hmac.new(self._key, vin.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

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


class VinVault:
    """``vin-mapping``: pseudoVin -> VIN encrypted under the VIN KMS key, with an encryption context
    naming the pseudoVin (a ciphertext moved to another item does not decrypt).

    Written once per vehicle per worker: a bounded cache remembers vehicles already stored, and the
    put is conditional (``attribute_not_exists``) so repeated or concurrent sightings are harmless.
    """

    def __init__(
        self, dynamodb: DynamoDBClient, kms: KMSClient, table: str, key_alias: str, cache_size: int = 131_072
    ) -> None:
        self._dynamodb = dynamodb
        self._kms = kms
        self._table = table
        self._key_alias = key_alias
        self._known: OrderedDict[str, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def unknown(self, sightings: Mapping[str, str]) -> dict[str, str]:
        with self._lock:
            return {pv: vin for pv, vin in sightings.items() if pv not in self._known}

    def remember(self, pseudo_vin: str, vin: str) -> int:
        """Store the vehicle's encrypted VIN unless already stored. Returns requests made."""
        ciphertext = self._kms.encrypt(
            KeyId=self._key_alias, Plaintext=vin.encode("ascii"), EncryptionContext={"pseudoVin": pseudo_vin}
        )["CiphertextBlob"]
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item={
                    "pseudoVin": {"S": pseudo_vin},
                    "encryptedVin": {"B": ciphertext},
                    "createdAt": {"S": format_time(int(time.time() * 1000))},
                },
                ConditionExpression="attribute_not_exists(pseudoVin)",
            )
        except ClientError as error:
            # Another worker, or an earlier run, stored it first: that is the same mapping.
            if aws_error_code(error) != "ConditionalCheckFailedException":
                raise
        with self._lock:
            self._known[pseudo_vin] = None
            if len(self._known) > self._cache_size:
                self._known.popitem(last=False)
        return 2

    def resolve(self, pseudo_vin: str) -> str | None:
        """The VIN behind a pseudoVin (admin only: needs kms:Decrypt). None if unknown."""
        item = self._dynamodb.get_item(TableName=self._table, Key={"pseudoVin": {"S": pseudo_vin}}).get(
            "Item"
        )
        if item is None:
            return None
        plaintext = self._kms.decrypt(
            CiphertextBlob=item["encryptedVin"]["B"], EncryptionContext={"pseudoVin": pseudo_vin}
        )["Plaintext"]
        return bytes(plaintext).decode("ascii")
