"""``DynamoTripStore``: the ``TripStore`` port on the ``trip-state`` table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from processors.errors import StaleTripState
from processors.trip_items import earliest_start, item_from_mark
from schemas.dynamo import from_item, to_item
from schemas.items import TripMarkItem, TripStateItem
from worker.aws import aws_error_code
from worker.retry import DEFAULT, UNPROCESSED, Retrier

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_LIMIT = 100


OPEN_TRIPS_INDEX = "open-trips-by-idle"


class DynamoTripStore:
    """The ``TripStore`` port on DynamoDB. Every ``trip-state`` write is conditional on the item's
    ``lastUpdate`` being what the writer last saw, so a zombie processor or the orphan sweeper can never
    overwrite a newer state unnoticed: the loser gets the current item back (``StaleTripState``).

    ``trip-state`` holds open trips only: a vehicle without one is its mark ``m`` in ``vin-mapping``
    (``TripMarkItem``), and creating an item is a transaction that checks the mark, so a writer whose view
    predates an archival cannot bring the archived trip back."""

    def __init__(
        self, dynamodb: DynamoDBClient, trip_table: str, vin_table: str, retrier: Retrier = DEFAULT
    ) -> None:
        self._dynamodb = dynamodb
        self._retrier = retrier
        self.trip_table = trip_table
        self.vin_table = vin_table

    def load(self, pseudo_vins: Sequence[str]) -> dict[str, TripStateItem]:
        """Current state of these vehicles (strongly consistent), one BatchGetItem per 50 vehicles over
        ``trip-state`` and ``vin-mapping``: the trip-state item if there is one, else the mark (version
        ``MARK_VERSION``); vehicles with neither are absent."""
        items, marks, _ = self._batch_get(pseudo_vins, with_marks=True)
        for pv, mark in marks.items():
            items.setdefault(pv, item_from_mark(pv, mark))
        return items

    def open_items(self, pseudo_vins: Sequence[str]) -> tuple[dict[str, TripStateItem], int]:
        """``trip-state`` items only (strongly consistent; the sweep). Returns (items, requests)."""
        items, _, requests = self._batch_get(pseudo_vins, with_marks=False)
        return items, requests

    def _batch_get(
        self, pseudo_vins: Sequence[str], with_marks: bool
    ) -> tuple[dict[str, TripStateItem], dict[str, TripMarkItem], int]:
        found: dict[str, TripStateItem] = {}
        marks: dict[str, TripMarkItem] = {}

        def get(request: Any) -> list[Any]:
            response = self._dynamodb.batch_get_item(RequestItems=request)
            for raw in response["Responses"].get(self.trip_table, []):
                item = TripStateItem.model_validate(from_item(raw))
                found[item.pseudoVin] = item
            for raw in response["Responses"].get(self.vin_table, []):
                if "m" in raw:
                    marks[raw["pseudoVin"]["S"]] = TripMarkItem.model_validate(from_item(raw)["m"])
            unprocessed: Any = response.get("UnprocessedKeys") or {}
            return [unprocessed] if unprocessed else []

        requests = 0
        step = BATCH_GET_LIMIT // 2 if with_marks else BATCH_GET_LIMIT
        for start in range(0, len(pseudo_vins), step):
            keys: list[Any] = [{"pseudoVin": {"S": pv}} for pv in pseudo_vins[start : start + step]]
            request: Any = {self.trip_table: {"Keys": keys, "ConsistentRead": True}}
            if with_marks:
                request[self.vin_table] = {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "pseudoVin, m",
                }
            requests += self._retrier.drain(
                UNPROCESSED, lambda pending: get(pending[0]), [request], reason="trip_state_load_throttled"
            )
        return found, marks, requests

    def write(self, item: TripStateItem, expected_last_update: str | None) -> None:
        """Put ``item`` if the stored one is still the version we expect. None: there is no item yet, and
        the vehicle's mark must be older than the item's earliest trip (one TransactWriteItems)."""
        if expected_last_update is None:
            self._create(item)
            return
        try:
            self._dynamodb.put_item(
                TableName=self.trip_table,
                Item=to_item(item.model_dump(exclude_none=True)),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                ConditionExpression="lastUpdate = :expected",
                ExpressionAttributeValues={":expected": {"S": expected_last_update}},
            )
        except ClientError as failed:
            if aws_error_code(failed) != "ConditionalCheckFailedException":
                raise
            raw = cast(dict[str, Any] | None, failed.response.get("Item"))
            current = TripStateItem.model_validate(from_item(raw)) if raw else self._current(item.pseudoVin)
            raise StaleTripState(item.pseudoVin, current) from None

    def _create(self, item: TripStateItem) -> None:
        key = {"pseudoVin": {"S": item.pseudoVin}}
        try:
            self._dynamodb.transact_write_items(
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self.vin_table,
                            "Key": key,
                            "ConditionExpression": "attribute_not_exists(m) OR m.hwm < :start",
                            "ExpressionAttributeValues": {":start": {"N": str(earliest_start(item))}},
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.trip_table,
                            "Item": to_item(item.model_dump(exclude_none=True)),
                            "ConditionExpression": "attribute_not_exists(pseudoVin)",
                        }
                    },
                ]
            )
        except ClientError as failed:
            if aws_error_code(failed) != "TransactionCanceledException":
                raise
            reasons = failed.response.get("CancellationReasons", [])
            if not any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                raise  # a conflict with another transaction: transient, retried as such
            raise StaleTripState(item.pseudoVin, self._current(item.pseudoVin)) from None

    def close(self, pseudo_vin: str, mark: TripMarkItem | None, expected_last_update: str | None) -> int:
        """The vehicle has no open trip left: store its mark (a monotone register on ``m.hwm``), then
        delete its trip-state item if it still is the version we expect. Returns requests made."""
        requests = 0
        if mark is not None:
            requests += 1
            try:
                self._dynamodb.update_item(
                    TableName=self.vin_table,
                    Key={"pseudoVin": {"S": pseudo_vin}},
                    UpdateExpression="SET m = :m",
                    ConditionExpression="attribute_not_exists(m) OR m.hwm <= :hwm",
                    ExpressionAttributeValues={
                        ":m": {"M": to_item(mark.model_dump(exclude_none=True))},
                        ":hwm": {"N": str(mark.hwm)},
                    },
                )
            except ClientError as failed:
                # A newer mark is stored already: the register keeps it.
                if aws_error_code(failed) != "ConditionalCheckFailedException":
                    raise
        if expected_last_update is None:
            return requests
        try:
            self._dynamodb.delete_item(
                TableName=self.trip_table,
                Key={"pseudoVin": {"S": pseudo_vin}},
                ConditionExpression="lastUpdate = :expected",
                ExpressionAttributeValues={":expected": {"S": expected_last_update}},
            )
        except ClientError as failed:
            if aws_error_code(failed) != "ConditionalCheckFailedException":
                raise
            raise StaleTripState(pseudo_vin, self._current(pseudo_vin)) from None
        return requests + 1

    def _current(self, pseudo_vin: str) -> TripStateItem | None:
        return self.load([pseudo_vin]).get(pseudo_vin)

    def silent(self, shard: int, until_s: int) -> tuple[list[str], int]:
        """pseudoVins in sweep shard ``shard`` of ``open-trips-by-idle`` with ``idleAfter <= until_s``
        (the sparse index holds open trips only). Returns (pseudoVins, requests)."""
        query: dict[str, Any] = {
            "TableName": self.trip_table,
            "IndexName": OPEN_TRIPS_INDEX,
            "KeyConditionExpression": "sweepShard = :s AND idleAfter <= :until",
            "ExpressionAttributeValues": {":s": {"N": str(shard)}, ":until": {"N": str(until_s)}},
        }
        found, requests = [], 0
        while True:
            page = self._dynamodb.query(**query)
            requests += 1
            found += [raw["pseudoVin"]["S"] for raw in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return found, requests
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
