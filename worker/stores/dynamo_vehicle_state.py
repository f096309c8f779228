"""``DynamoVehicleState``: the ``VehicleStateWriter`` port on the ``vehicle-state`` table.

The requests are built by ``processors.vehicle_state`` (pure, conditions included); this module sends
them, re-sends the remainder a failed condition leaves (``retry.VEHICLE_STATE_ROUNDS``) and turns a
``ValidationException`` into ``UnwritableUpdate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from botocore.exceptions import ClientError

from processors.errors import UnwritableUpdate
from processors.vehicle_state import CHUNK_SIGNALS, StateUpdate, chunks, outstanding, update_request
from schemas.dynamo import AttributeValue, from_item
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
