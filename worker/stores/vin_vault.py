"""``KmsVinVault``: the ``VinVault`` port on KMS and the ``vin-mapping`` table; ``load_pseudonym_key``
(Secrets Manager)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from processors.signals import format_time
from worker.aws import aws_error_code

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


class KmsVinVault:
    """``vin-mapping``: pseudoVin -> VIN encrypted under the VIN KMS key, with an encryption context
    naming the pseudoVin (a ciphertext moved to another item does not decrypt). The put is conditional
    (``attribute_not_exists``), so repeated or concurrent sightings are harmless."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        kms: KMSClient,
        table: str,
        key_alias: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamodb = dynamodb
        self._kms = kms
        self._table = table
        self._key_alias = key_alias
        self._clock = clock

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
                    "createdAt": {"S": format_time(int(self._clock() * 1000))},
                },
                ConditionExpression="attribute_not_exists(pseudoVin)",
            )
        except ClientError as error:
            # Another worker, or an earlier run, stored it first: that is the same mapping.
            if aws_error_code(error) != "ConditionalCheckFailedException":
                raise
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
