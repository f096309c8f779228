"""``DynamoVehicleState``: the ``VehicleStateWriter`` port on the ``vehicle-state`` table.

The requests are built by ``processors.vehicle_state`` (pure, conditions included); this module sends
them, re-sends the remainder a failed condition leaves (``retry.VEHICLE_STATE_ROUNDS``) and turns a
``ValidationException`` into ``UnwritableUpdate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from processors.errors import UnwritableUpdate
from processors.vehicle_state import (
    CHUNK_SIGNALS,
    StateUpdate,
    chunks,
    is_number,
    outstanding,
    stored_value,
)
from schemas.dynamo import AttributeValue, from_attribute, from_item, to_attribute
from schemas.signal_codes import encode
from worker.aws import aws_error_code
from worker.retry import VEHICLE_STATE_ROUNDS

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class DynamoVehicleState:
    """Applies ``StateUpdate``s. Idempotent: re-applying any update leaves the item unchanged."""

    def __init__(self, dynamodb: DynamoDBClient, table: str, chunk_signals: int = CHUNK_SIGNALS) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._chunk_signals = chunk_signals

    def apply(self, update: StateUpdate) -> int:
        """Write until the item reflects ``update``, chunk by chunk, the item's timestamp last; returns
        the number of UpdateItem calls made. Raised out of a later chunk, an error leaves the earlier
        chunks stored: applying the update again finds them current (one failed condition each)."""
        return sum(self._apply(chunk) for chunk in chunks(update, self._chunk_signals))

    def _apply(self, update: StateUpdate) -> int:
        pending: StateUpdate | None = update
        stored: Mapping[str, AttributeValue] | None = None
        for rounds in VEHICLE_STATE_ROUNDS:
            assert pending is not None
            try:
                self._dynamodb.update_item(**update_request(self._table, pending, stored))
                return rounds
            except ClientError as failed:
                code = aws_error_code(failed)
                if code == "ValidationException":
                    raise UnwritableUpdate(
                        update.pseudo_vin, "refused as invalid (ValidationException)"
                    ) from None
                if code != "ConditionalCheckFailedException":
                    raise
                stored = cast(Mapping[str, AttributeValue], failed.response.get("Item") or {})
            pending = outstanding(update, from_item(stored))
            if pending is None:
                return rounds
        raise VEHICLE_STATE_ROUNDS.exhausted(f"{VEHICLE_STATE_ROUNDS.rounds} conditional rounds")


def update_request(
    table: str, update: StateUpdate, stored: Mapping[str, AttributeValue] | None
) -> dict[str, Any]:
    """``UpdateItem`` arguments. Without ``stored``: guard that every value is strictly newer
    (``attribute_not_exists(#s) OR #s[1] < :t``). With ``stored`` (the item a failed condition returned):
    guard that nothing touched has changed. The item's ``ts`` is written (and guarded) only when
    ``update.sets_timestamp``.
    """
    names: dict[str, str] = {}
    values: dict[str, AttributeValue] = {}
    assignments: list[str] = []
    conditions: list[str] = []
    if update.sets_timestamp:
        names["#ts"] = "ts"
        new_ts = {"N": str(update.timestamp_ms)}
        stored_ts = stored.get("ts") if stored is not None else None
        if stored is None:
            assignments.append("#ts = :ts")
            conditions.append("(attribute_not_exists(#ts) OR #ts < :ts)")
            values[":ts"] = new_ts
        else:
            if stored_ts is None or update.timestamp_ms > _number(stored_ts):
                assignments.append("#ts = :ts")
                values[":ts"] = new_ts
            conditions.append("#ts = :oldts" if stored_ts is not None else "attribute_not_exists(#ts)")
            if stored_ts is not None:
                values[":oldts"] = stored_ts
    coded = sorted((encode(name), name) for name in update.signals)
    for i, (code, name) in enumerate(coded):
        obs = update.signals[name]
        names[f"#s{i}"] = code
        at = {"N": str(obs.at_ms)}
        values[f":v{i}"] = {"L": [to_attribute(stored_value(name, obs.value)), at]}
        assignments.append(f"#s{i} = :v{i}")
        if stored is None:
            values[f":t{i}"] = at
            conditions.append(f"(attribute_not_exists(#s{i}) OR #s{i}[1] < :t{i})")
        elif code in stored:
            values[f":o{i}"] = stored[code]
            conditions.append(f"#s{i} = :o{i}")
        else:
            conditions.append(f"attribute_not_exists(#s{i})")
    return {
        "TableName": table,
        "Key": {"pseudoVin": {"S": update.pseudo_vin}},
        "UpdateExpression": "SET " + ", ".join(assignments),
        "ConditionExpression": " AND ".join(conditions),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def _number(attribute: AttributeValue) -> int | float:
    """A stored ``ts``; one of another type (never written by us) reads as older than anything."""
    number = from_attribute(attribute)
    return number if is_number(number) else -1
