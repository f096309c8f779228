"""A canonical digest of everything the worker writes, so two runs can be compared exactly.

Volatile attributes (documented in the README, "Failure semantics") are dropped:
- ``trip-state.lastUpdate``: wall-clock time of the last write; trip-state holds open trips only, the idle
  vehicles' marks are ``vin-mapping.m`` (kept: deterministic);
- ``vin-mapping.encryptedVin`` and ``createdAt``: KMS ciphertext is randomized, the time is the
  first sighting; the digest keeps the decrypted VIN's hash instead;
- ``vin-mapping``'s ``_meta#`` items, which are not vehicles: the pseudonymization key's fingerprint
  (bootstrap's, not the worker's) and each shard's progress report (wall-clock times, written at
  checkpoints; shard ids differ after a reshard);
- dead-letter objects are keyed by shard and sequence number (which differ after a reshard) and
  hold randomized ciphertext: the digest keeps how many there are per reason (their content is
  checked by the dead-letter tests);
- what records' *arrival* times decide, which two runs through a real stream never share: a trail
  slot's inverted arrival delay (its digits after the ms digit) and a bucket's ``expiresAt``
  (``live-breadcrumbs``), the recent trips' completion point R (``vin-mapping.m.recent[i][2]``,
  ``trip-state.machine.r[i][2]``: the greatest arrival received when the machine completed it), a
  seal's R (``machine.sa``), ``trip-state.heardAt`` and ``idleAfter`` (the newest record's arrival), the
  arrival of records held across a split (``machine.held[i][2]``) and the arrival second of a segment's
  raw crumbs (``trip-segments/``). Everything else of them is kept: the slots,
  their event-time ms and values, which trips and rows exist.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import orjson

from processors.archive import read_gzip_json
from processors.pseudonymize import is_vehicle
from processors.trail import DELAY_DIGITS
from processors.vehicle_state import named_item, stored_observations
from schemas.dynamo import from_item
from schemas.signal_codes import encode
from worker.aws import AwsClients
from worker.config import Settings

VOLATILE: dict[str, frozenset[str]] = {
    "trip-state": frozenset({"lastUpdate", "idleAfter", "heardAt"}),
    "vin-mapping": frozenset({"encryptedVin", "createdAt"}),
    "live-breadcrumbs": frozenset({"expiresAt"}),
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
        rows = [
            {k: v for k, v in item.items() if k not in volatile}
            for item in _scan(clients, physical)
            if is_vehicle(str(item.get("pseudoVin", "")))
        ]
        if logical == "vehicle-state":
            rows = [readable_vehicle_state(row) for row in rows]
        if logical == "live-breadcrumbs":
            rows = [_without_arrival(row) for row in rows]
        if logical == "vin-mapping":
            rows = [_mark_without_arrival(row) for row in rows]
        if logical == "trip-state":
            rows = [_machine_without_arrival(row) for row in rows]
        digest[logical] = sorted(rows, key=lambda row: orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
    for prefix in DIGESTED_PREFIXES:
        objects = _objects(clients, settings.archive_bucket, prefix)
        if prefix == "trip-segments/":
            objects = {key: _segment_without_arrival(body) for key, body in objects.items()}
        digest[prefix] = {key: hashlib.sha256(body).hexdigest() for key, body in sorted(objects.items())}
    digest["dead-letter/"] = dead_letter_digest(settings, clients)
    return digest


def readable_vehicle_state(item: dict[str, Any]) -> dict[str, Any]:
    """The item by signal name (``named_item``), with any attribute that is no signal code kept as it is,
    so that a digest diff reads in names and still sees everything stored."""
    named = named_item(item)
    _, observations = stored_observations(item)
    decoded = {encode(name) for name in observations} | ({"ts"} if "timestamp" in named else set())
    return named | {k: v for k, v in item.items() if k not in decoded and k not in named}


def _mark_without_arrival(item: dict[str, Any]) -> dict[str, Any]:
    """A vin-mapping item whose mark's recent trips keep [start, end, id second], not their R."""
    mark = item.get("m")
    if not isinstance(mark, dict) or not mark.get("recent"):
        return item
    recent = [[*trip[:2], *trip[3:]] for trip in mark["recent"]]
    return {**item, "m": {**mark, "recent": recent}}


def _machine_without_arrival(item: dict[str, Any]) -> dict[str, Any]:
    """A trip-state item whose machine keeps no arrival: recent trips as [start, end, id second], no seal
    R, held records without their arrival."""
    machine = item.get("machine")
    if not isinstance(machine, dict):
        return item
    machine = {k: v for k, v in machine.items() if k != "sa"}
    machine["r"] = [[*trip[:2], *trip[3:]] for trip in machine.get("r", [])]
    machine["held"] = [[*row[:2], *row[3:]] for row in machine.get("held", [])]
    return {**item, "machine": machine}


def _without_arrival(bucket: dict[str, Any]) -> dict[str, Any]:
    """A bucket item with each slot's inverted arrival delay cut out (the ms digit and values stay)."""
    keys = ("pseudoVin", "bucket")
    return {k: v if k in keys else v[0] + v[1 + DELAY_DIGITS :] for k, v in bucket.items()}


def _segment_without_arrival(body: bytes) -> bytes:
    """A segment's raw crumbs ``[tMs, aS, lat, ...]`` without ``aS``."""
    return orjson.dumps([[row[0], *row[2:]] for row in read_gzip_json(body)])


def dead_letter_digest(settings: Settings, clients: AwsClients) -> list[tuple[str, int]]:
    """Dead letters as a multiset of reasons (content checks live in the dead-letter tests)."""
    reasons: Counter[str] = Counter()
    for body in _objects(clients, settings.archive_bucket, "dead-letter/").values():
        reasons[orjson.loads(body)["reason"]] += 1
    return sorted(reasons.items())


def digest_hash(digest: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(digest, option=orjson.OPT_SORT_KEYS)).hexdigest()
