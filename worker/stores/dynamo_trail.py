"""``DynamoTrail``: the ``TrailStore`` port on the ``live-breadcrumbs`` table (packed buckets, 15 s at 1 Hz).

``processors.trail`` decides what to write (pure: the merges, their chunks, the remainder after a failed
guard); this module alone turns it into DynamoDB expressions (``update_request``).

A slot must end as the join of every crumb written to it (``processors.trail.join``), which no single
DynamoDB comparison computes, so each bucket chunk is a conditional UpdateItem in rounds
(``retry.TRAIL_ROUNDS``):

1. every slot ``SET`` to ours if absent or already equal, ``expiresAt`` raised if lower; the common case
   (new slots, a redelivery's identical rewrite) ends here: one request per chunk;
2. if a guard fails, the stored item comes back (``ALL_OLD``, no extra read): each slot it does not already
   cover is swapped for join(stored, ours), guarded on the stored value (compare-and-swap); slots it covers
   are done;
3. if a swap fails, another writer changed the slot meanwhile: round 2 again on what it stored.

Every value ever stored is the join of records really written, and a round returns only once the stored
value covers ours, so concurrent writers and retries converge to the join of the whole record set; a failed
round writes nothing (an UpdateItem is atomic), so no value is lost in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from processors.trail import (
    CHUNK_SLOTS,
    BucketMerge,
    Crumb,
    Remainder,
    TrailPoint,
    bucket_range,
    chunks,
    decode_item,
    one_per_slot,
    remainder_of,
    remainder_outstanding,
    trail_points,
)
from schemas.dynamo import AttributeValue, from_item
from worker.aws import aws_error_code
from worker.retry import TRAIL_ROUNDS

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class DynamoTrail:
    """Joins ``BucketMerge``s into the stored buckets and reads crumbs back. Idempotent: re-merging changes
    nothing."""

    def __init__(self, dynamodb: DynamoDBClient, table: str, chunk_slots: int = CHUNK_SLOTS) -> None:
        self._dynamodb = dynamodb
        self.table = table
        self._chunk_slots = chunk_slots

    def merge(self, merges: Sequence[BucketMerge]) -> int:
        """Every merge, chunk by chunk; returns the UpdateItem calls made. Raised out of a later chunk, an
        error leaves the earlier chunks stored: merging again finds them current."""
        requests = 0
        for merge in merges:
            for chunk in chunks(remainder_of(merge), self._chunk_slots):
                requests += self._merge(merge.pseudo_vin, merge.bucket, chunk)
        return requests

    def _merge(self, pseudo_vin: str, bucket: int, chunk: Remainder) -> int:
        pending: Remainder | None = chunk
        for rounds in TRAIL_ROUNDS:
            assert pending is not None
            try:
                self._dynamodb.update_item(**update_request(self.table, pseudo_vin, bucket, pending))
                return rounds
            except ClientError as failed:
                if aws_error_code(failed) != "ConditionalCheckFailedException":
                    raise
                stored = cast(Mapping[str, AttributeValue], failed.response.get("Item") or {})
            pending = remainder_outstanding(pending, pseudo_vin, bucket, from_item(stored))
            if pending is None:
                return rounds
        raise TRAIL_ROUNDS.exhausted(f"{TRAIL_ROUNDS.rounds} conditional rounds")

    def read(self, pseudo_vin: str, from_ms: int, to_ms: int, *, consistent: bool = True) -> list[Crumb]:
        """Crumbs with ``from_ms <= t <= to_ms``, one per slot, in (t, value) order: one Query over every
        bucket key that may hold one, whatever span its writer chose (``processors.trail.bucket_range``)."""
        if to_ms < from_ms:
            return []
        low, high = bucket_range(from_ms, to_ms)
        query: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": consistent,
            "KeyConditionExpression": "pseudoVin = :pv AND #b BETWEEN :b0 AND :b1",
            "ExpressionAttributeNames": {"#b": "bucket"},
            "ExpressionAttributeValues": {
                ":pv": {"S": pseudo_vin},
                ":b0": {"N": str(low)},
                ":b1": {"N": str(high)},
            },
        }
        crumbs: list[Crumb] = []
        while True:
            page = self._dynamodb.query(**query)
            for raw in page["Items"]:
                crumbs += decode_item(from_item(raw))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return one_per_slot(c for c in crumbs if from_ms <= c.t_ms <= to_ms)

    def read_trail(
        self,
        pseudo_vin: str,
        from_ms: int,
        to_ms: int,
        now_ms: int,
        *,
        consistent: bool = False,
        fill_forward: bool = True,
    ) -> list[TrailPoint]:
        """The live map's trail (``processors.trail.trail_points``): eventually consistent by default (half
        the price; the map tolerates a second), expired crumbs filtered against ``now_ms``."""
        crumbs = self.read(pseudo_vin, from_ms, to_ms, consistent=consistent)
        return trail_points(crumbs, from_ms, to_ms, now_ms, fill_forward=fill_forward)


def update_request(table: str, pseudo_vin: str, bucket: int, remainder: Remainder) -> dict[str, Any]:
    """The UpdateItem of one chunk's round: ``SET #k = :c`` per slot, guarded ``#k = :s`` where the slot held
    ``:s`` (a swap, ``remainder.expected``), else ``attribute_not_exists(#k) OR #k = :c``; ``expiresAt`` a
    guarded max-register; the stored item comes back when a guard fails (``ALL_OLD``), for the next round."""
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    sets: list[str] = []
    guards: list[str] = []
    for i, (slot, value) in enumerate(remainder.slots.items()):
        names[f"#k{i}"], values[f":c{i}"] = slot, {"S": value}
        sets.append(f"#k{i} = :c{i}")
        held = remainder.expected.get(slot)
        if held is None:
            guards.append(f"(attribute_not_exists(#k{i}) OR #k{i} = :c{i})")
        else:
            values[f":s{i}"] = {"S": held}
            guards.append(f"#k{i} = :s{i}")
    if remainder.expires_at is not None:
        values[":e"] = {"N": str(remainder.expires_at)}
        sets.append("expiresAt = :e")
        guards.append("(attribute_not_exists(expiresAt) OR expiresAt <= :e)")
    request: dict[str, Any] = {
        "TableName": table,
        "Key": {"pseudoVin": {"S": pseudo_vin}, "bucket": {"N": str(bucket)}},
        "UpdateExpression": "SET " + ", ".join(sets),
        "ConditionExpression": " AND ".join(guards),
        "ExpressionAttributeValues": values,
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    if names:
        request["ExpressionAttributeNames"] = names
    return request
