"""``S3TripArchive``: the ``TripArchive`` port on the archive bucket and the ``trips-index`` table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from processors.errors import ConflictReason
from schemas.dynamo import to_item
from schemas.items import TripIndexItem
from worker.stores.s3_write_once import put_once, sha256_hex

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client


class S3TripArchive:
    """Gzipped JSON objects (archives, sealed segments), written once (``put_once``: the same bytes again
    is a no-op, other bytes raise ``WriteOnceConflict``), and index items (plain overwrites)."""

    def __init__(self, s3: S3Client, bucket: str, dynamodb: DynamoDBClient, index_table: str) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._dynamodb = dynamodb
        self._index_table = index_table

    def put_object(self, key: str, body: bytes) -> None:
        put_once(
            self._s3,
            self._bucket,
            key,
            body,
            sha256_hex(body),
            ConflictReason.DIFFERENT_BYTES,
            same_legacy=lambda stored: stored == body,
            ContentType="application/json",
            ContentEncoding="gzip",
        )

    def get_object(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()

    def put_index(self, item: TripIndexItem) -> None:
        self._dynamodb.put_item(TableName=self._index_table, Item=to_item(item.model_dump(exclude_none=True)))
