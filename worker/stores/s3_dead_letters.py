"""``S3DeadLetters``: the ``DeadLetterWriter`` port on S3 and KMS, plus the reads an operator's redrive
needs (list, read, tag). The document and its envelope encryption are built by ``processors.dead_letter``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from processors.batch import DeadLetter
from processors.dead_letter import ENCRYPTION_CONTEXT, DataKey, dead_letter_key, document, seal
from processors.errors import ConflictReason
from worker.stores.s3_write_once import put_once

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client


def content_hash(dead_letter: DeadLetter, hash_key: Callable[[str], str]) -> str:
    """What makes two dead letters "the same": the record (its stream position, partition key and bytes).

    Not the object's bytes: the original is sealed under a fresh data key and nonce each time, so the same
    dead letter never has the same bytes twice, and the worker cannot decrypt to compare. Not the reason
    either: a redelivery after a deploy may quarantine the same record for another reason, and it stays
    quarantined under its first. Keyed (``hash_key``, the pseudonymizer's HMAC): a plain hash of a short
    payload (a bare VIN, say) could be found by hashing candidates, and the metadata is readable by anyone
    who may list dead letters.
    """
    record = dead_letter.record
    position = record.position
    digest = hashlib.sha256()
    for part in (
        position.shard_id.encode(),
        position.sequence_number.encode(),
        str(position.sub_sequence_number).encode(),
        record.partition_key.encode("utf-8"),
        record.data,
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return hash_key(digest.hexdigest())


class S3DeadLetters:
    """One object per dead letter under ``dead-letter/``, written once; its key comes from the record's
    stream position, so a redelivered record finds its own object and writes nothing."""

    def __init__(
        self, s3: S3Client, kms: KMSClient, bucket: str, key_alias: str, hash_key: Callable[[str], str]
    ) -> None:
        self._s3 = s3
        self._kms = kms
        self._bucket = bucket
        self._key_alias = key_alias
        self._hash_key = hash_key

    def data_key(self) -> DataKey:
        generated = self._kms.generate_data_key(
            KeyId=self._key_alias, KeySpec="AES_256", EncryptionContext=ENCRYPTION_CONTEXT
        )
        return DataKey(generated["Plaintext"], generated["CiphertextBlob"])

    def write(self, dead_letter: DeadLetter, data_key: DataKey) -> int:
        """Put one dead letter unless its record's is stored (a redelivery: a no-op, however it was sealed);
        ``WriteOnceConflict`` if another record's is. Returns requests made."""
        record = dead_letter.record
        key = dead_letter_key(record.position)
        envelope = seal(data_key, record.data, record.partition_key, key)
        partition_key_hash = self._hash_key(record.partition_key)
        body = orjson.dumps(document(dead_letter, partition_key_hash, envelope))

        def same_legacy(stored: bytes) -> bool:
            # Written before dead letters carried a content hash: the same position (the key), the same
            # partition key and length is the same record (a stream position holds one record, forever).
            old = orjson.loads(stored)
            same_key = old.get("partitionKeyHash") == partition_key_hash
            return bool(same_key and old.get("payloadBytes") == len(record.data))

        stored = put_once(
            self._s3,
            self._bucket,
            key,
            body,
            content_hash(dead_letter, self._hash_key),
            ConflictReason.DIFFERENT_RECORD,
            same_legacy,
            ContentType="application/json",
        )
        return 1 if stored else 2  # the refused PUT, then the HEAD that compared

    # --- the operator's side (redrive) ----------------------------------------------------------------

    def decrypt_data_key(self, encrypted: bytes) -> bytes:
        return self._kms.decrypt(CiphertextBlob=encrypted, EncryptionContext=ENCRYPTION_CONTEXT)["Plaintext"]

    def folders(self, prefix: str) -> list[str]:
        """The ``…/`` folders right under ``prefix`` (years, months, days, shards), as S3 lists them."""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix, Delimiter="/"
        )
        return [folder["Prefix"] for page in pages for folder in page.get("CommonPrefixes", [])]

    def keys(self, prefix: str) -> Iterator[str]:
        """Every object's key under ``prefix`` (one shard's day: in key order, not stream order for keys
        written before ``dead_letter_key`` padded them), page by page."""
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix)
        for page in pages:
            for entry in page.get("Contents", []):
                yield entry["Key"]

    def read(self, key: str) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(
            self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        )
        return document

    def tags(self, key: str) -> dict[str, str]:
        tag_set = self._s3.get_object_tagging(Bucket=self._bucket, Key=key)["TagSet"]
        return {t["Key"]: t["Value"] for t in tag_set}

    def tag(self, key: str, tags: dict[str, str]) -> None:
        self._s3.put_object_tagging(
            Bucket=self._bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )
