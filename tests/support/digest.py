"""A canonical digest of everything the worker writes, so two runs can be compared exactly.

Volatile attributes (documented in the README, "Failure semantics") are dropped:
- ``trip-state.lastUpdate``: wall-clock time of the last write;
- ``vin-mapping.encryptedVin`` and ``createdAt``: KMS ciphertext is randomized, the time is the
  first sighting; the digest keeps the decrypted VIN's hash instead;
- dead-letter objects are keyed by shard and sequence number (which differ after a reshard) and
  hold randomized ciphertext: the digest keeps how many there are per reason (their content is
  checked by the dead-letter tests).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import orjson

from schemas.dynamo import from_item
from worker.aws import AwsClients
from worker.config import Settings

VOLATILE: dict[str, frozenset[str]] = {
    "trip-state": frozenset({"lastUpdate"}),
    "vin-mapping": frozenset({"encryptedVin", "createdAt"}),
}
DIGESTED_PREFIXES = ("trips/", "trip-segments/")


def _scan(clients: AwsClients, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = clients.dynamodb.scan(**request)
        items += [from_item(raw) for raw in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _objects(clients: AwsClients, bucket: str, prefix: str) -> dict[str, bytes]:
    objects: dict[str, bytes] = {}
    for page in clients.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            objects[entry["Key"]] = clients.s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
    return objects


def state_digest(settings: Settings, clients: AwsClients) -> dict[str, Any]:
    """Tables and objects in canonical form (sorted, volatile attributes dropped)."""
    digest: dict[str, Any] = {}
    for logical, physical in settings.table_names.items():
        volatile = VOLATILE.get(logical, frozenset())
        rows = [{k: v for k, v in item.items() if k not in volatile} for item in _scan(clients, physical)]
        digest[logical] = sorted(rows, key=lambda row: orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
    for prefix in DIGESTED_PREFIXES:
        objects = _objects(clients, settings.archive_bucket, prefix)
        digest[prefix] = {key: hashlib.sha256(body).hexdigest() for key, body in sorted(objects.items())}
    digest["dead-letter/"] = dead_letter_digest(settings, clients)
    return digest


def dead_letter_digest(settings: Settings, clients: AwsClients) -> list[tuple[str, int]]:
    """Dead letters as a multiset of reasons (content checks live in the dead-letter tests)."""
    reasons: Counter[str] = Counter()
    for body in _objects(clients, settings.archive_bucket, "dead-letter/").values():
        reasons[orjson.loads(body)["reason"]] += 1
    return sorted(reasons.items())


def digest_hash(digest: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(digest, option=orjson.OPT_SORT_KEYS)).hexdigest()
