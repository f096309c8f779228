"""``DynamoTripStore``: the ``TripStore`` port on the ``trip-state`` table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from processors.errors import StaleTripState
from schemas.dynamo import from_item, to_item
from schemas.items import TripStateItem
from worker.aws import aws_error_code
from worker.retry import DEFAULT, UNPROCESSED, Retrier

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_LIMIT = 100


class DynamoTripStore:
    """The ``TripStore`` port on DynamoDB. Every ``trip-state`` write is conditional on the item's
    ``lastUpdate`` being what the writer last saw, so a zombie processor or the orphan sweeper can never
    overwrite a newer state unnoticed: the loser gets the current item back (``StaleTripState``)."""

    def __init__(self, dynamodb: DynamoDBClient, trip_table: str, retrier: Retrier = DEFAULT) -> None:
        self._dynamodb = dynamodb
        self._retrier = retrier
        self.trip_table = trip_table

    def load(self, pseudo_vins: Sequence[str]) -> dict[str, TripStateItem]:
        """Current items of these vehicles (strongly consistent); absent vehicles have no item."""
        found: dict[str, TripStateItem] = {}

        def get(keys: list[Any]) -> list[Any]:
            request: Any = {self.trip_table: {"Keys": keys, "ConsistentRead": True}}
            response = self._dynamodb.batch_get_item(RequestItems=request)
            for raw in response["Responses"].get(self.trip_table, []):
                item = TripStateItem.model_validate(from_item(raw))
                found[item.pseudoVin] = item
            unprocessed: Any = response.get("UnprocessedKeys") or {}
            return list(unprocessed.get(self.trip_table, {}).get("Keys", []))

        for start in range(0, len(pseudo_vins), BATCH_GET_LIMIT):
            keys: list[Any] = [
                {"pseudoVin": {"S": pv}} for pv in pseudo_vins[start : start + BATCH_GET_LIMIT]
            ]
            self._retrier.drain(UNPROCESSED, get, keys, reason="trip_state_load_throttled")
        return found

    def write(self, item: TripStateItem, expected_last_update: str | None) -> None:
        """Put ``item`` if the stored one is still the version we expect (None: no item yet)."""
        condition = (
            {"ConditionExpression": "attribute_not_exists(pseudoVin)"}
            if expected_last_update is None
            else {
                "ConditionExpression": "lastUpdate = :expected",
                "ExpressionAttributeValues": {":expected": {"S": expected_last_update}},
            }
        )
        try:
            self._dynamodb.put_item(
                TableName=self.trip_table,
                Item=to_item(item.model_dump(exclude_none=True)),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **condition,
            )
        except ClientError as failed:
            if aws_error_code(failed) != "ConditionalCheckFailedException":
                raise
            raw = cast(dict[str, Any] | None, failed.response.get("Item"))
            current = TripStateItem.model_validate(from_item(raw)) if raw else None
            raise StaleTripState(item.pseudoVin, current) from None

    def scan(self) -> Iterator[TripStateItem]:
        """Every trip-state item (the orphan sweep's input)."""
        request: dict[str, Any] = {"TableName": self.trip_table}
        while True:
            page = self._dynamodb.scan(**request)
            for raw in page["Items"]:
                yield TripStateItem.model_validate(from_item(raw))
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
