"""``DynamoProgress``: the ``ProgressStore`` port on ``vin-mapping`` (one ``_meta#progress#<shardId>`` item
per shard), the record processors' reports the orphan sweep reads instead of the stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from processors.frontier import ShardProgress, progress_item, progress_key, progress_of
from schemas.dynamo import from_item, to_attribute
from schemas.items import ShardProgressItem
from worker.retry import DEFAULT, UNPROCESSED, Retrier

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_LIMIT = 100
FIELDS = ("writtenAt", "lastArrival", "caughtUpAt", "millisBehindLatest", "shardEnded")


class DynamoProgress:
    """One unconditional ``UpdateItem`` per report (the worker role has no ``PutItem`` on this table; a
    report replaces the previous one whole: absent fields are removed). Under 200 bytes: one write unit.
    Read with ``BatchGetItem`` (the sweep role's only read of this table), 100 shards a request."""

    def __init__(self, dynamodb: DynamoDBClient, table: str, retrier: Retrier = DEFAULT) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._retrier = retrier

    def record(self, progress: ShardProgress) -> int:
        values = progress_item(progress).model_dump(exclude={"pseudoVin"})
        present = {name: value for name, value in values.items() if value is not None}
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in present)
        absent = [name for name in FIELDS if name not in present]
        if absent:
            update += " REMOVE " + ", ".join(f"#{name}" for name in absent)
        self._dynamodb.update_item(
            TableName=self._table,
            Key={"pseudoVin": {"S": progress_key(progress.shard_id)}},
            UpdateExpression=update,
            ExpressionAttributeNames={f"#{name}": name for name in FIELDS},
            ExpressionAttributeValues={f":{name}": to_attribute(value) for name, value in present.items()},
        )
        return 1

    def read(self, shard_ids: Sequence[str]) -> tuple[dict[str, ShardProgress], int]:
        found: dict[str, ShardProgress] = {}
        requests = 0

        def get(keys: list[Any]) -> list[Any]:
            request: Any = {
                self._table: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "pseudoVin, " + ", ".join(f"#{name}" for name in FIELDS),
                    "ExpressionAttributeNames": {f"#{name}": name for name in FIELDS},
                }
            }
            response = self._dynamodb.batch_get_item(RequestItems=request)
            for raw in cast(list[dict[str, Any]], response["Responses"].get(self._table, [])):
                progress = progress_of(ShardProgressItem.model_validate(from_item(raw)))
                found[progress.shard_id] = progress
            unprocessed: Any = response.get("UnprocessedKeys") or {}
            return list(unprocessed.get(self._table, {}).get("Keys", []))

        unique = list(dict.fromkeys(shard_ids))  # BatchGetItem refuses a key asked twice
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            keys: list[Any] = [
                {"pseudoVin": {"S": progress_key(shard)}} for shard in unique[start : start + BATCH_GET_LIMIT]
            ]
            requests += self._retrier.drain(UNPROCESSED, get, keys, reason="progress_read_throttled")
        return found, requests
