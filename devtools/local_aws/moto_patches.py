"""What we take from moto and what we change in it: its server app, its resharding (made to behave like
Kinesis, which the KCL depends on), its item-size check (left to ``limits``), and the stored items we read
to bill writes (``StoredItems``). Everything that reaches into moto's internals is here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from typing import Any

from devtools.local_aws.limits import KeySchema, item_size

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def moto_app() -> WsgiApp:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    _reshard_like_kinesis()
    _leave_item_size_to_our_limits()
    app: WsgiApp = DomainDispatcherApplication(create_backend_app)
    return app


def _leave_item_size_to_our_limits() -> None:
    """moto refuses items over 405,000 bytes as it measures them (a number as its text), which is
    neither DynamoDB's limit nor its rules, and it checks on every attribute set (quadratic in the
    attributes). ``check`` and ``refuse_updated_item`` enforce DynamoDB's 400 KB by DynamoDB's rules."""
    from moto.dynamodb.models import dynamo_type

    setattr(dynamo_type.LimitedSizeDict, "__setitem__", dict.__setitem__)  # noqa: B010 - patching moto


_resharding_patched = False


def _reshard_like_kinesis() -> None:
    """Make moto's resharding behave like Kinesis, which the KCL depends on (moto 5 does not):

    - a split closes the parent and keeps its records there (moto re-puts them into the children);
    - records are routed to *open* shards only (moto keeps routing to the closed parent);
    - reading a closed shard to its end returns no next iterator and the ``ChildShards``, which is how
      the KCL learns the shard ended (moto returns an iterator forever: shardEnded never comes).
    """
    global _resharding_patched  # noqa: PLW0603 - patch moto's classes once per process
    if _resharding_patched:
        return
    from moto.kinesis import models, responses
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.utils import decompose_shard_iterator

    def shard_for_key(self: Any, partition_key: str, explicit_hash_key: str | None) -> Any:
        if explicit_hash_key:
            key = int(explicit_hash_key)
        else:
            key = int(hashlib.md5(partition_key.encode("utf-8")).hexdigest(), 16)  # noqa: S324 - Kinesis' hash
        return next(
            (s for s in self.shards.values() if s.is_open and s.starting_hash <= key <= s.ending_hash), None
        )

    def split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
        shard = self.shards[shard_to_split]
        boundary = int(new_starting_hash_key)
        if not shard.is_open or not shard.starting_hash < boundary <= shard.ending_hash:
            raise InvalidArgumentError(f"cannot split {shard_to_split} at {new_starting_hash_key}")
        last = max(s._shard_id for s in self.shards.values())
        for offset, (low, high) in enumerate(
            ((shard.starting_hash, boundary - 1), (boundary, shard.ending_hash))
        ):
            child = models.Shard(
                last + 1 + offset, starting_hash=low, ending_hash=high, parent=shard.shard_id
            )
            self.shards[child.shard_id] = child
        shard.is_open = False

    read = responses.KinesisResponse.get_records

    def get_records(self: Any) -> Any:
        result = read(self)
        body: dict[str, Any] = result.result  # type: ignore[assignment]
        stream_name, shard_id, last = decompose_shard_iterator(body["NextShardIterator"])
        stream = self.kinesis_backend.describe_stream(
            stream_arn=self._get_param("StreamARN"), stream_name=stream_name
        )
        shard = stream.get_shard(shard_id)
        if not shard.is_open and int(last) >= shard.get_max_sequence_number():
            del body["NextShardIterator"]
            body["ChildShards"] = [
                {
                    "ShardId": child.shard_id,
                    "ParentShards": [shard_id],
                    "HashKeyRange": {
                        "StartingHashKey": str(child.starting_hash),
                        "EndingHashKey": str(child.ending_hash),
                    },
                }
                for child in stream.shards.values()
                if child.parent == shard_id
            ]
        return result

    setattr(models.Stream, "get_shard_for_key", shard_for_key)  # noqa: B010 - monkeypatching moto
    setattr(models.Stream, "split_shard", split_shard)  # noqa: B010
    setattr(responses.KinesisResponse, "get_records", get_records)  # noqa: B010
    _resharding_patched = True


class StoredItems:
    """The items moto holds for one request's account and region: read to bill a write by the whole item
    before and after it, and written only to undo an update DynamoDB would have refused. Use it only
    while holding ``LocalAwsApp``'s lock: requests are serialized, so nothing changes in between."""

    def __init__(self, environ: dict[str, Any]) -> None:
        from moto.dynamodb.models import dynamodb_backends
        from moto.iam.models import get_account_id_from

        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/") if "Credential=" in auth else []
        region = scope[2] if len(scope) > 2 else "us-east-1"
        # The account moto itself picks for this request (moto.core.responses.get_current_account).
        account = (
            os.environ.get("MOTO_ACCOUNT_ID")
            or environ.get("HTTP_X_MOTO_ACCOUNT_ID")
            or get_account_id_from(scope[0] if scope else "")
        )
        self._backend = dynamodb_backends[account][region]

    def key_schema(self, table: str) -> KeySchema | None:
        found = self._backend.tables.get(table)
        return None if found is None else (found.hash_key_attr, found.range_key_attr)

    def _locate(self, table: str, key: dict[str, Any]) -> tuple[Any, Any, Any] | None:
        """moto's table and the moto keys of an item (None if the key does not fit the table)."""
        from moto.dynamodb.models.dynamo_type import DynamoType

        found = self._backend.tables.get(table)
        if found is None or found.hash_key_attr not in key:
            return None
        if found.range_key_attr is not None and found.range_key_attr not in key:
            return None
        sort = DynamoType(key[found.range_key_attr]) if found.range_key_attr is not None else None
        return found, DynamoType(key[found.hash_key_attr]), sort

    def get(self, table: str, key: dict[str, Any]) -> Any:
        """moto's Item for a key, or None. Read with ``.get``: moto's own lookup inserts empty buckets."""
        located = self._locate(table, key)
        if located is None:
            return None
        found, partition, sort = located
        stored = found.items.get(partition)
        return stored.get(sort) if sort is not None and stored is not None else stored

    def size(self, table: str, key: dict[str, Any]) -> int:
        """The whole stored item's size by DynamoDB's rules (0 if there is none)."""
        stored = self.get(table, key)
        return 0 if stored is None else item_size(stored.to_json()["Attributes"])

    def restore(self, table: str, key: dict[str, Any], previous: Any) -> None:
        """Put back the item as it was before a write (``previous`` None: there was none)."""
        located = self._locate(table, key)
        if located is None:
            return
        found, partition, sort = located
        if sort is None:
            if previous is None:
                found.items.pop(partition, None)
            else:
                found.items[partition] = previous
        elif previous is None:
            found.items.get(partition, {}).pop(sort, None)
        else:
            found.items[partition][sort] = previous
