"""``S3TripArchive``: the ``TripArchive`` port on the archive bucket and the ``trips-index`` table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from processors.errors import ConflictReason
from schemas.dynamo import to_item
from schemas.items import TripIndexItem
from worker.aws import aws_error_code
from worker.stores.s3_write_once import put_once, sha256_hex

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client


class S3TripArchive:
    """Gzipped JSON objects (archives, sealed segments), written once (``put_once``: the same bytes again
    is a no-op, other bytes raise ``WriteOnceConflict``), and index items (overwrites; an on-time item only
    over none or another on-time item)."""

    def __init__(self, s3: S3Client, bucket: str, dynamodb: DynamoDBClient, index_table: str) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._dynamodb = dynamodb
        self._index_table = index_table

    def put_object(self, key: str, body: bytes, *, provisional: bool = False) -> None:
        put_once(
            self._s3,
            self._bucket,
            key,
            body,
            sha256_hex(body),
            ConflictReason.PROVISIONAL_BYTES if provisional else ConflictReason.DIFFERENT_BYTES,
            same_legacy=lambda stored: stored == body,
            alarm=not provisional,
            ContentType="application/json",
            ContentEncoding="gzip",
        )

    def get_object(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()

    def put_index(self, item: TripIndexItem) -> None:
        request: dict[str, Any] = {}
        if item.provisional:
            request = {
                "ConditionExpression": "attribute_not_exists(tripId) OR provisional = :yes",
                "ExpressionAttributeValues": {":yes": {"BOOL": True}},
            }
        try:
            self._dynamodb.put_item(
                TableName=self._index_table, Item=to_item(item.model_dump(exclude_none=True)), **request
            )
        except ClientError as error:
            if aws_error_code(error) != "ConditionalCheckFailedException":
                raise
            # The final item is there (a replay of the on-time archive): it stays.
