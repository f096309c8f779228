"""The KCL's lease table, read in one place: who holds each shard and where its checkpoint is.

The KCL names the table after the application and writes one item per shard (``leaseKey``). The drain
check, ``status``, the demo and the chaos suite all read it through ``read_leases``; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from worker.aws import AwsClients, aws_error_code
from worker.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@dataclass(frozen=True, slots=True)
class Lease:
    shard_id: str
    owner: str | None
    """The worker holding the lease; None while nobody does."""
    checkpoint: str | None
    """A sequence number, or TRIM_HORIZON / LATEST / AT_TIMESTAMP / SHARD_END; None: none recorded."""
    owner_switches: int | None


def read_leases(dynamodb: DynamoDBClient, table: str) -> dict[str, Lease]:
    """Shard id -> its lease, from a consistent, paginated scan; {} while the table does not exist."""
    found: dict[str, Lease] = {}
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    try:
        while True:
            page = dynamodb.scan(**request)
            for item in page["Items"]:
                lease = _lease(item)
                found[lease.shard_id] = lease
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    except ClientError as error:
        if aws_error_code(error) == "ResourceNotFoundException":
            return {}
        raise


def lease_checkpoints(settings: Settings, clients: AwsClients) -> dict[str, str]:
    """Shard id -> checkpoint, "" for a lease without one (the drain check's view: not drained yet)."""
    leases = read_leases(clients.dynamodb, settings.application_name)
    return {shard_id: lease.checkpoint or "" for shard_id, lease in leases.items()}


def lease_owners(settings: Settings, clients: AwsClients) -> dict[str, str]:
    """Shard id -> the worker holding its lease, "" for a lease nobody holds."""
    leases = read_leases(clients.dynamodb, settings.application_name)
    return {shard_id: lease.owner or "" for shard_id, lease in leases.items()}


def _lease(item: Mapping[str, Any]) -> Lease:
    def text(name: str) -> str | None:
        value = item.get(name, {})
        return str(value["S"]) if "S" in value else None

    switches = item.get("ownerSwitchesSinceCheckpoint", {})
    return Lease(
        shard_id=str(item["leaseKey"]["S"]),
        owner=text("leaseOwner"),
        checkpoint=text("checkpoint"),
        owner_switches=int(switches["N"]) if "N" in switches else None,
    )
