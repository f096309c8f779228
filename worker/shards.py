"""The stream's shards and the drain check: has every record that was in the stream been checkpointed?

``drain_targets`` reads each shard to its end once (the last sequence number in it now); ``drained`` then
compares the checkpoints in the lease table (``worker.leases``) with those targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from worker.aws import AwsClients
from worker.config import Settings
from worker.leases import lease_checkpoints

if TYPE_CHECKING:
    from mypy_boto3_kinesis.type_defs import ShardTypeDef


def drain_targets(settings: Settings, clients: AwsClients) -> dict[str, str]:
    """Shard id -> sequence number of the last record currently in that shard (shards with records)."""
    kinesis = clients.kinesis
    targets: dict[str, str] = {}
    for shard in shards_of(settings, clients):
        iterator = kinesis.get_shard_iterator(
            StreamName=settings.stream_name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ).get("ShardIterator")
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if page["Records"]:
                targets[shard["ShardId"]] = page["Records"][-1]["SequenceNumber"]
            elif page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return targets


def shards_of(settings: Settings, clients: AwsClients) -> list[ShardTypeDef]:
    shards: list[ShardTypeDef] = []
    kwargs: dict[str, str] = {"StreamName": settings.stream_name}
    while True:
        page = clients.kinesis.list_shards(**kwargs)  # type: ignore[arg-type]
        shards += page["Shards"]
        if "NextToken" not in page:
            return shards
        kwargs = {"NextToken": page["NextToken"]}


def drained(settings: Settings, clients: AwsClients, targets: Mapping[str, str]) -> bool:
    """Whether every shard's checkpoint has reached its target (``drain_targets``), or SHARD_END."""
    recorded = lease_checkpoints(settings, clients)
    if not recorded:
        return False
    for shard_id, last_sequence in targets.items():
        checkpoint = recorded.get(shard_id)
        if checkpoint is None:
            # The KCL deletes the lease of a finished parent shard once its children have leases.
            if not any(key != shard_id for key in recorded):
                return False
            continue
        if checkpoint == "SHARD_END":
            continue
        if not checkpoint.isdigit() or int(checkpoint) < int(last_sequence):
            return False
    return True
