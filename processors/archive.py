"""Archiving completed trips: ``trips/{pseudoVin}/{tripId}.json.gz`` in S3 and one ``trips-index`` item.

Pure: object keys, the gzipped JSON bodies (``mtime=0`` so equal input gives equal bytes) and the
index item. ``worker.trip_commit.TripArchiver`` gathers a trip's breadcrumbs (sealed segments in S3, then
the live tail in ``live-breadcrumbs``) and writes the archive, then the index item, through the
``processors.ports.TripArchive`` port. Both writes are plain overwrites of deterministic content: doing
them twice, or by two writers, leaves the same result.

Long trips: ``live-breadcrumbs`` keeps 24 h, so every ``segment_breadcrumbs`` breadcrumbs of a trip are
sealed into ``trip-segments/{pseudoVin}/{tripId}/{n}.json.gz`` while the trip runs; the archive is the
segments plus the tail. A bucket lifecycle rule expires segments.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from typing import Any

import orjson

from processors.trip_items import completed_item
from processors.trips import CompletedTrip
from schemas.items import BreadcrumbItem, TripIndexItem

INDEX_TTL_SECONDS = 90 * 24 * 3600
ARCHIVE_FIELDS = ("lat", "lng", "vehicleSpeed", "heading", "odometer", "batteryLevel")


def archive_key(pseudo_vin: str, trip_id: str) -> str:
    return f"trips/{pseudo_vin}/{trip_id}.json.gz"


def segment_key(pseudo_vin: str, trip_id: str, index: int) -> str:
    return f"trip-segments/{pseudo_vin}/{trip_id}/{index:05d}.json.gz"


def archive_record(crumb: BreadcrumbItem) -> dict[str, Any]:
    record: dict[str, Any] = {"timestamp": crumb.timestamp}
    for name in ARCHIVE_FIELDS:
        value = getattr(crumb, name)
        if value is not None:
            record[name] = value
    return record


def gzip_json(records: Iterable[dict[str, Any]]) -> bytes:
    return gzip.compress(orjson.dumps(list(records)), mtime=0)


def read_gzip_json(body: bytes) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = orjson.loads(gzip.decompress(body))
    return records


def index_item(trip: CompletedTrip, breadcrumbs: int) -> TripIndexItem:
    summary = completed_item(trip)
    duration = max(0, (trip.end_time_ms - trip.start_time_ms) // 1000)
    distance = round(trip.distance_miles, 3)
    return TripIndexItem(
        pseudoVin=trip.pseudo_vin,
        tripId=trip.trip_id,
        tripDate=summary.startTime[:10],
        startTime=summary.startTime,
        endTime=summary.endTime,
        durationSeconds=duration,
        breadcrumbCount=breadcrumbs,
        distanceMiles=distance,
        maxSpeedMph=round(trip.max_speed_mph, 1),
        avgSpeedMph=round(trip.distance_miles / (duration / 3600), 1) if duration else 0.0,
        startLocation=summary.startLocation,
        endLocation=summary.endLocation,
        startBattery=trip.start_battery,
        endBattery=trip.end_battery,
        s3Key=archive_key(trip.pseudo_vin, trip.trip_id),
        endReason=summary.endReason,
        expiresAt=trip.end_time_ms // 1000 + INDEX_TTL_SECONDS,
    )
