"""What AWS would bill for a write: DynamoDB write units on the whole item, S3 objects stored.

A DynamoDB write is billed on the whole item, before or after the write, whichever is larger, rounded up to
1 KB, at least one unit (a failed condition included): ``LocalAwsApp`` reads the stored item's size before
and after each write and tallies ``Written`` per table and bucket.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

from devtools.local_aws.limits import AwsRequest, KeySchemaOf


@dataclass(slots=True)
class Written:
    """What write requests stored in one table or bucket, and what AWS would bill for it."""

    requests: int = 0
    items: int = 0
    bytes: int = 0
    """DynamoDB: the billed size of each item (by DynamoDB's rules, the whole item before or after the write,
    whichever is larger); S3: object bodies."""
    units: int = 0
    """DynamoDB: write capacity units as AWS bills them (``write_units``); S3: PUT requests."""


DYNAMODB_WRITE_UNIT = 1024
DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
"""The writes billed per item."""
TRANSACTION_FACTOR = 2
"""TransactWriteItems bills two write units per started KB of each item it names, a ConditionCheck's
included (DynamoDB developer guide, "Capacity management for transactions"); a cancelled one too."""


def write_factor(operation: str) -> int:
    """How many times ``write_units`` an item written by ``operation`` costs."""
    return TRANSACTION_FACTOR if operation == "TransactWriteItems" else 1


def write_units(before: int, after: int) -> int:
    """What DynamoDB bills one item written: the larger of its whole size before and after the write,
    one unit per started KB, at least one (a delete of nothing and a failed condition included)."""
    return max(1, math.ceil(max(before, after) / DYNAMODB_WRITE_UNIT))


def written_keys(request: AwsRequest, key_schema: KeySchemaOf) -> list[tuple[str, dict[str, Any]]]:
    """(table, key) of every item a DynamoDB write request may change; [] for other requests and for
    tables that do not exist (moto refuses those, and AWS bills nothing for them)."""
    if request.service != "dynamodb" or request.operation not in DYNAMODB_WRITES:
        return []
    payload = json.loads(request.body or b"{}")
    named: list[tuple[str, dict[str, Any]]] = []
    if request.operation == "PutItem":
        named.append((payload.get("TableName", ""), payload.get("Item", {})))
    elif request.operation in ("UpdateItem", "DeleteItem"):
        named.append((payload.get("TableName", ""), payload.get("Key", {})))
    for action in payload.get("TransactItems", ()):
        ((kind, body),) = action.items()
        named.append((body.get("TableName", ""), body.get("Item" if kind == "Put" else "Key", {})))
    for table, writes in payload.get("RequestItems", {}).items():
        for write in writes:
            named.append(
                (
                    table,
                    write["PutRequest"]["Item"] if "PutRequest" in write else write["DeleteRequest"]["Key"],
                )
            )
    keys = []
    for table, item in named:
        schema = key_schema(table)
        if schema is not None:
            keys.append((table, {name: item[name] for name in schema if name is not None and name in item}))
    return keys


def written_items(request: AwsRequest, environ: dict[str, Any]) -> list[tuple[str, int]]:
    """(bucket, bytes) of the object an S3 PutObject stores; [] for other requests. DynamoDB writes are
    billed from the stored items before and after (``LocalAwsApp``), which a request alone cannot tell."""
    if request.service == "s3" and request.operation == "PutObject":
        bucket = urllib.parse.unquote(str(environ.get("PATH_INFO", "/"))).lstrip("/").split("/", 1)[0]
        decoded = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH")  # aws-chunked bodies carry framing
        return [(bucket, int(decoded) if decoded else len(request.body))]
    return []
