"""``KmsVinVault``: the ``VinVault`` port on KMS and the ``vin-mapping`` table; ``load_pseudonym_key``
(Secrets Manager)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from processors.pseudonymize import PSEUDONYM_KEY_ITEM, is_vehicle
from processors.signals import format_time
from worker.aws import aws_error_code
from worker.retry import DEFAULT, UNPROCESSED, Retrier

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient


def load_pseudonym_key(secret_id: str, client: SecretsManagerClient) -> bytes:
    """Read the HMAC key once at startup. Never logged."""
    secret = client.get_secret_value(SecretId=secret_id)
    if "SecretBinary" in secret:
        return bytes(secret["SecretBinary"])
    return secret["SecretString"].encode("utf-8")


BATCH_GET_LIMIT = 100
"""Keys per BatchGetItem (DynamoDB's limit)."""


class KmsVinVault:
    """``vin-mapping``: pseudoVin -> VIN encrypted under the VIN KMS key, with an encryption context
    naming the pseudoVin (a ciphertext moved to another item does not decrypt).

    ``known`` reads in BatchGetItems of 100 (projection: the key and ``encryptedVin``), so a restart over
    a known fleet makes no KMS call. The vault write is an ``UpdateItem`` that sets ``encryptedVin`` and
    ``createdAt`` only where absent (``if_not_exists``): repeated or concurrent sightings are harmless,
    and any other attribute of the item (written before or after) is neither blocked nor lost.
    Reading the table is ``BatchGetItem`` only: ``GetItem`` (and ``kms:Decrypt``) stay the admin's.
    """

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        kms: KMSClient,
        table: str,
        key_alias: str,
        clock: Callable[[], float] = time.time,
        retrier: Retrier = DEFAULT,
    ) -> None:
        self._dynamodb = dynamodb
        self._kms = kms
        self._table = table
        self._key_alias = key_alias
        self._clock = clock
        self._retrier = retrier

    def known(self, pseudo_vins: Sequence[str]) -> set[str]:
        """Those of ``pseudo_vins`` with an ``encryptedVin``. Eventually consistent (half the read price):
        a mapping stored within the last second may be missed, and remembering it again is a no-op."""
        found: set[str] = set()
        unique = list(dict.fromkeys(pseudo_vins))  # BatchGetItem refuses a key asked twice
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            for item in self._batch_get(unique[start : start + BATCH_GET_LIMIT], consistent=False):
                if "encryptedVin" in item:
                    found.add(item["pseudoVin"]["S"])
        return found

    def remember(self, pseudo_vin: str, vin: str) -> int:
        """Encrypt the VIN and store it unless the item has one already. Returns requests made."""
        ciphertext = self._kms.encrypt(
            KeyId=self._key_alias, Plaintext=vin.encode("ascii"), EncryptionContext={"pseudoVin": pseudo_vin}
        )["CiphertextBlob"]
        self._dynamodb.update_item(
            TableName=self._table,
            Key={"pseudoVin": {"S": pseudo_vin}},
            UpdateExpression="SET encryptedVin = if_not_exists(encryptedVin, :c), "
            "createdAt = if_not_exists(createdAt, :now)",
            ExpressionAttributeValues={
                ":c": {"B": ciphertext},
                ":now": {"S": format_time(int(self._clock() * 1000))},
            },
        )
        return 2

    def resolve(self, pseudo_vin: str) -> str | None:
        """The VIN behind a pseudoVin (admin only: needs GetItem and kms:Decrypt). None if unknown."""
        if not is_vehicle(pseudo_vin):
            return None
        item = self._dynamodb.get_item(TableName=self._table, Key={"pseudoVin": {"S": pseudo_vin}}).get(
            "Item"
        )
        if item is None or "encryptedVin" not in item:
            return None
        plaintext = self._kms.decrypt(
            CiphertextBlob=item["encryptedVin"]["B"], EncryptionContext={"pseudoVin": pseudo_vin}
        )["Plaintext"]
        return bytes(plaintext).decode("ascii")

    def fingerprint(self) -> str | None:
        """The recorded key fingerprint (strongly consistent), None if none is."""
        items = self._batch_get([PSEUDONYM_KEY_ITEM], consistent=True)
        return str(items[0]["fingerprint"]["S"]) if items and "fingerprint" in items[0] else None

    def record_fingerprint(self, fingerprint: str) -> str:
        """Set the fingerprint item unless one is recorded; returns the fingerprint recorded now. An
        ``UpdateItem``, so the worker's role (no ``PutItem`` on this table) can record it too."""
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"pseudoVin": {"S": PSEUDONYM_KEY_ITEM}},
                UpdateExpression="SET fingerprint = :f, createdAt = :now",
                ConditionExpression="attribute_not_exists(fingerprint)",
                ExpressionAttributeValues={
                    ":f": {"S": fingerprint},
                    ":now": {"S": format_time(int(self._clock() * 1000))},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if aws_error_code(error) != "ConditionalCheckFailedException":
                raise
            old = cast(dict[str, Any], error.response.get("Item") or {})
            return str(old.get("fingerprint", {}).get("S", ""))
        return fingerprint

    def _batch_get(self, pseudo_vins: list[str], consistent: bool) -> list[dict[str, Any]]:
        """The items of up to 100 keys (key and ``encryptedVin``, or ``fingerprint``), re-asking for
        ``UnprocessedKeys`` under ``retry.UNPROCESSED``."""
        found: list[dict[str, Any]] = []

        def get(keys: list[Any]) -> list[Any]:
            request: Any = {
                self._table: {
                    "Keys": keys,
                    "ConsistentRead": consistent,
                    "ProjectionExpression": "pseudoVin, encryptedVin, fingerprint",
                }
            }
            response = self._dynamodb.batch_get_item(RequestItems=request)
            found.extend(cast(list[dict[str, Any]], response["Responses"].get(self._table, [])))
            unprocessed: Any = response.get("UnprocessedKeys") or {}
            return list(unprocessed.get(self._table, {}).get("Keys", []))

        keys: list[Any] = [{"pseudoVin": {"S": pv}} for pv in pseudo_vins]
        self._retrier.drain(UNPROCESSED, get, keys, reason="vin_mapping_read_throttled")
        return found
