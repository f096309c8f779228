"""``python -m worker inspect``: what the worker stored about one vehicle, one trip or one vehicle's
trail, readably.

Read-only. A vehicle is named by its pseudoVin (never a VIN: this tool does not decrypt); a trip by its
id, which names its vehicle (``trip_{YYYYMMDD_HHMMSS}_{pseudoVin}``): one GetItem in ``trips-index``, and
if it is not archived one GetItem in ``trip-state`` (still running). At most 2 requests either way (an
archived trip's second is its S3 archive); a trail by its vehicle and a time range (the live map's read,
``DynamoTrail.read_trail``).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from typing import Any

import orjson

from processors.errors import OperatorError
from processors.signals import format_time
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from worker.aws import AwsClients
from worker.config import Settings
from worker.stores.dynamo_trail import DynamoTrail

PSEUDO_VIN = re.compile(r"[0-9a-f]{32}")
TRIP_ID = re.compile(r"trip_(\d{4})(\d{2})(\d{2})_\d{6}_([0-9a-f]{32})")
RECENT_TRIPS = 5
VALUE_COLUMN = 22


class NotFound(OperatorError):
    """Nothing stored under that name (the CLI prints it as one line)."""


class BadName(OperatorError):
    """Not a pseudoVin / trip id. The message never echoes the input: it may be a VIN."""


def check_pseudo_vin(text: str) -> str:
    if not PSEUDO_VIN.fullmatch(text):
        raise BadName("a pseudoVin is 32 lowercase hex characters (`resolve` maps the other way, for admins)")
    return text


def check_trip_id(text: str) -> re.Match[str]:
    match = TRIP_ID.fullmatch(text)
    if match is None:
        raise BadName("a trip id looks like trip_YYYYMMDD_HHMMSS_<pseudoVin> (32 lowercase hex characters)")
    return match


# --- formatting ---------------------------------------------------------------------------------------


def row(key: str, value: object, indent: int = 2) -> str:
    """``key`` indented, ``value`` in one column for every indent (at least two spaces after the key)."""
    label = " " * indent + key
    return f"{label.ljust(max(VALUE_COLUMN, len(label) + 2))}{value}".rstrip()


def place(location: Any) -> str:
    if isinstance(location, dict) and "lat" in location and "lng" in location:
        return f"{location['lat']:.5f}, {location['lng']:.5f}"
    return "-"


def value_text(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"lat", "lng"}:
        return place(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def minutes(seconds: int | float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    return f"{whole // 60} min {whole % 60} s"


# --- DynamoDB reads -----------------------------------------------------------------------------------


def _get(clients: AwsClients, table: str, key: dict[str, str]) -> dict[str, Any] | None:
    item = clients.dynamodb.get_item(
        TableName=table, Key={name: {"S": value} for name, value in key.items()}, ConsistentRead=True
    ).get("Item")
    return from_item(item) if item else None


def _query(clients: AwsClients, **request: Any) -> Iterator[dict[str, Any]]:
    while True:
        page = clients.dynamodb.query(**request)
        for item in page.get("Items", []):
            yield from_item(item)
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _count(clients: AwsClients, **request: Any) -> int:
    total = 0
    while True:
        page = clients.dynamodb.query(Select="COUNT", **request)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _by_vehicle(pseudo_vin: str) -> dict[str, Any]:
    return {
        "KeyConditionExpression": "pseudoVin = :p",
        "ExpressionAttributeValues": {":p": {"S": pseudo_vin}},
    }


# --- inspect vehicle ----------------------------------------------------------------------------------


def vehicle_report(settings: Settings, clients: AwsClients, pseudo_vin: str) -> list[str]:
    check_pseudo_vin(pseudo_vin)
    tables = settings.table_names
    state = _get(clients, tables["vehicle-state"], {"pseudoVin": pseudo_vin})
    trip = _get(clients, tables["trip-state"], {"pseudoVin": pseudo_vin})
    trips = list(_query(clients, TableName=tables["trips-index"], **_by_vehicle(pseudo_vin)))
    if state is None and trip is None and not trips:
        raise NotFound(f"no vehicle {pseudo_vin} in {tables['vehicle-state']}, trip-state or trips-index")
    buckets = _count(clients, TableName=tables["live-breadcrumbs"], **_by_vehicle(pseudo_vin))

    lines = [f"vehicle {pseudo_vin}"]
    lines.append(f"  latest values ({tables['vehicle-state']})")
    if state is None:
        lines.append(row("(none)", "", 4))
    else:
        named = named_item(state)  # signal codes back to names, times back to ISO
        lines.append(row("newest record", named.get("timestamp", "-"), 4))
        for name in sorted(k for k in named if k not in ("pseudoVin", "timestamp")):
            signal = named[name]
            lines.append(row(name, f"{value_text(signal['value']):<28} at {signal['at']}", 4))
    lines.append(f"  trip machine ({tables['trip-state']})")
    if trip is None:
        lines.append(row("status", "idle: no open trip (trip-state holds open trips only)", 4))
    else:
        lines += trip_state_rows(trip)
    lines.append(
        row(
            "live trail",
            f"{buckets} buckets of 15 s ({tables['live-breadcrumbs']}, kept 24 h; inspect trail)",
        )
    )
    trips.sort(key=lambda item: str(item.get("startTime", "")), reverse=True)
    shown = f"; the latest {min(len(trips), RECENT_TRIPS)}:" if trips else ""
    lines.append(row("archived trips", f"{len(trips)} ({tables['trips-index']}){shown}"))
    for item in trips[:RECENT_TRIPS]:
        lines.append(
            f"    {item['tripId']}  {item.get('startTime', '-')} -> {item.get('endTime', '-')}  "
            f"{item.get('distanceMiles', 0):.2f} mi  {item.get('breadcrumbCount', 0)} breadcrumbs  "
            f"{item.get('endReason', '-')}"
        )
    return lines


def trip_state_rows(trip: dict[str, Any]) -> list[str]:
    lines = [row("status", trip.get("status", "-"), 4)]
    if trip.get("tripId"):
        lines.append(row("tripId", trip["tripId"], 4))
        lines.append(row("started", trip.get("startTime", "-"), 4))
        lines.append(row("so far", f"{trip.get('breadcrumbCount', 0)} breadcrumbs", 4))
    if trip.get("gapStartTime"):
        lines.append(row("stopped at", f"{trip['gapStartTime']} (ends after the trip gap)", 4))
    lines.append(row("last event", trip.get("lastEventTime", "-"), 4))
    lines.append(row("last written", trip.get("lastUpdate", "-"), 4))
    if trip.get("closing"):  # the outbox's stored name (TripStateItem.outbox)
        lines.append(row("outbox", "a completed trip is being archived (outbox not empty)", 4))
    return lines


# --- inspect trip ---------------------------------------------------------------------------------------


def find_indexed_trip(settings: Settings, clients: AwsClients, trip_id: str) -> dict[str, Any] | None:
    """The trip's trips-index item: one GetItem (the id names the vehicle)."""
    pseudo_vin = check_trip_id(trip_id).group(4)
    return _get(clients, settings.table_names["trips-index"], {"pseudoVin": pseudo_vin, "tripId": trip_id})


def find_running_trip(settings: Settings, clients: AwsClients, trip_id: str) -> dict[str, Any] | None:
    """The vehicle's trip-state item if it is this trip: one GetItem (trip-state holds open trips only)."""
    pseudo_vin = check_trip_id(trip_id).group(4)
    item = _get(clients, settings.table_names["trip-state"], {"pseudoVin": pseudo_vin})
    return item if item and item.get("tripId") == trip_id else None


def trip_report(settings: Settings, clients: AwsClients, trip_id: str, pseudo_vin: str | None) -> list[str]:
    owner = check_trip_id(trip_id).group(4)
    if pseudo_vin is not None and check_pseudo_vin(pseudo_vin) != owner:
        raise BadName(f"that trip id belongs to vehicle {owner}")
    item = find_indexed_trip(settings, clients, trip_id)
    if item is None:
        running = find_running_trip(settings, clients, trip_id)
        if running is None:
            raise NotFound(f"no trip {trip_id} in {settings.table_names['trips-index']} or trip-state")
        return [
            f"trip {trip_id}  (vehicle {running['pseudoVin']})",
            row("status", "running, not archived yet (trip-state)"),
            *trip_state_rows(running)[1:],
        ]
    lines = [
        f"trip {trip_id}  (vehicle {item['pseudoVin']})",
        row(
            "status",
            f"archived, ended by {item.get('endReason', '-')} ({settings.table_names['trips-index']})",
        ),
        row(
            "start",
            f"{item.get('startTime', '-')}  at {place(item.get('startLocation'))}  "
            f"battery {item.get('startBattery', '-')} %",
        ),
        row(
            "end",
            f"{item.get('endTime', '-')}  at {place(item.get('endLocation'))}  "
            f"battery {item.get('endBattery', '-')} %",
        ),
        row("duration", minutes(item.get("durationSeconds"))),
        row(
            "distance",
            f"{item.get('distanceMiles', 0):.2f} mi, avg {item.get('avgSpeedMph', '-')} mph, "
            f"max {item.get('maxSpeedMph', '-')} mph",
        ),
        row("breadcrumbs", item.get("breadcrumbCount", "-")),
    ]
    key = item.get("s3Key")
    if key:
        lines += archive_rows(settings, clients, str(key), item.get("breadcrumbCount"))
    return lines


def archive_rows(settings: Settings, clients: AwsClients, key: str, expected: Any) -> list[str]:
    body = clients.s3.get_object(Bucket=settings.archive_bucket, Key=key)["Body"].read()
    crumbs: list[dict[str, Any]] = orjson.loads(gzip.decompress(body))
    agrees = "" if crumbs and len(crumbs) == expected else f"  (the index says {expected})"
    lines = [row("archive", f"s3://{settings.archive_bucket}/{key}: {len(crumbs)} breadcrumbs{agrees}")]
    for label, crumb in (("first", crumbs[0]), ("last", crumbs[-1])) if crumbs else ():
        lines.append(
            row(
                label,
                f"{crumb.get('timestamp', '-')}  {place(crumb)}  {crumb.get('vehicleSpeed', '-')} mph",
                4,
            )
        )
    return lines


# --- inspect trail --------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def trail_report(
    settings: Settings, clients: AwsClients, pseudo_vin: str, from_ms: int, to_ms: int, now_ms: int
) -> list[str]:
    """The vehicle's trail between ``from_ms`` and ``to_ms`` as the live map reads it: eventually
    consistent, expired crumbs left out, values filled forward within the range."""
    check_pseudo_vin(pseudo_vin)
    if to_ms < from_ms:
        raise BadName("--from must not be after --to")
    table = settings.table_names["live-breadcrumbs"]
    points = DynamoTrail(clients.dynamodb, table).read_trail(pseudo_vin, from_ms, to_ms, now_ms)
    lines = [
        f"trail of {pseudo_vin}  {format_time(from_ms)} -> {format_time(to_ms)}",
        row("points", f"{len(points)} ({table}, kept 24 h)"),
    ]
    for point in points:
        lines.append(
            f"    {format_time(point.t_ms)}  {point.lat:.5f}, {point.lng:.5f}  "
            f"{_number(point.vehicle_speed)} mph  heading {_number(point.heading, 0)}  "
            f"odometer {_number(point.odometer)}  battery {_number(point.battery_level)} %"
        )
    return lines
