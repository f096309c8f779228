"""Archiving completed trips: ``trips/{pseudoVin}/{tripId}.json.gz`` in S3 and one ``trips-index`` item;
before it, when the live view completes the trip, its on-time archive under ``trips-provisional/`` and an
index item marked ``provisional`` (docs/design.md, "two archives of a trip").

Pure: object keys, the gzipped JSON bodies (``mtime=0`` so equal input gives equal bytes) and the index
item, computed from the trip's trail rows (``processors.trail.trip_rows``). ``worker.trip_commit.
TripArchiver`` gathers the crumbs (sealed segments in S3, then the live tail in ``live-breadcrumbs``) and
writes the archive, then the index item, through the ``processors.ports.TripArchive`` port. Both writes are
plain overwrites of deterministic content: doing them twice, or by two writers, leaves the same result.

**Aggregates at archive time** (proposal §3.3): the machine keeps no running figures. Over the rows sorted
by (t, value): speed, heading, odometer and battery are filled forward; every row with a location is
emitted; ``breadcrumbCount`` = emitted rows, distance = the haversine sum between consecutive emitted rows,
``maxSpeedMph`` over all rows, ``avgSpeedMph`` = distance / duration, start/end location = first/last
emitted, start/end battery = first/last battery value. The battery is ``batteryLevel`` if the vehicle is
known to report it or any row has it, else ``soc``, for the whole trip: the archive is a function of the
trail's record set, whatever order the records arrived in.

Long trips: ``live-breadcrumbs`` keeps 24 h, so a trip's trail is sealed while it runs, window by window,
into ``trip-segments/{pseudoVin}/{tripId}/{n}.json.gz`` as raw crumbs; the archive is the segments plus
the tail. A bucket lifecycle rule expires segments.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

import orjson

from processors.signals import format_time
from processors.trail import Crumb, filled, trip_rows
from processors.trips import CompletedTrip
from schemas.items import LocationItem, TripIndexItem

INDEX_TTL_SECONDS = 90 * 24 * 3600
EARTH_RADIUS_MILES = 3958.7613
ARCHIVE_FIELDS = ("lat", "lng", "vehicleSpeed", "heading", "odometer", "batteryLevel")


def archive_key(pseudo_vin: str, trip_id: str) -> str:
    return f"trips/{pseudo_vin}/{trip_id}.json.gz"


def provisional_key(pseudo_vin: str, trip_id: str, end_time_ms: int) -> str:
    """The on-time archive of a trip ending at ``end_time_ms``: one key per end, so it is written once too
    (a trip the live view completes twice, a late record having resumed it, ends at two instants)."""
    return f"trips-provisional/{pseudo_vin}/{trip_id}/{end_time_ms}.json.gz"


def segment_key(pseudo_vin: str, trip_id: str, index: int) -> str:
    return f"trip-segments/{pseudo_vin}/{trip_id}/{index:05d}.json.gz"


def gzip_json(records: Iterable[Any]) -> bytes:
    return gzip.compress(orjson.dumps(list(records)), mtime=0)


def read_gzip_json(body: bytes) -> list[Any]:
    records: list[Any] = orjson.loads(gzip.decompress(body))
    return records


def haversine_miles(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lat2 = math.radians(a[0]), math.radians(b[0])
    dlat, dlng = lat2 - lat1, math.radians(b[1] - a[1])
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
    return 2 * EARTH_RADIUS_MILES * math.asin(min(1.0, math.sqrt(h)))


def _row(t_ms: int, lat: float, lng: float, values: Sequence[float | None]) -> dict[str, Any]:
    row: dict[str, Any] = {"timestamp": format_time(t_ms), "lat": lat, "lng": lng}
    for name, value in zip(ARCHIVE_FIELDS[2:], values, strict=True):
        if value is not None:
            row[name] = value
    return row


def archive_trip(
    trip: CompletedTrip, crumbs: Sequence[Crumb], *, provisional: bool = False
) -> tuple[bytes, TripIndexItem]:
    """The archive object's bytes and the index item of ``trip``, from any superset of its crumbs;
    ``provisional``: the on-time archive (its own key, the item marked so)."""
    rows = trip_rows(crumbs, trip.start_time_ms, trip.end_time_ms, trip.completion_ms)
    use_level = trip.reports_battery_level or any(c.battery_level is not None for c in rows)
    records: list[dict[str, Any]] = []
    points: list[tuple[float, float]] = []
    batteries: list[float] = []
    max_speed = 0.0
    for crumb, values in filled(rows, use_level):
        if crumb.vehicle_speed is not None:
            max_speed = max(max_speed, crumb.vehicle_speed)
        level = crumb.battery_level if use_level else crumb.soc
        if level is not None:
            batteries.append(level)
        if crumb.lat is None or crumb.lng is None:
            continue
        filled_values = (values.vehicle_speed, values.heading, values.odometer, values.battery)
        records.append(_row(crumb.t_ms, crumb.lat, crumb.lng, filled_values))
        points.append((crumb.lat, crumb.lng))
    distance = sum(haversine_miles(a, b) for a, b in pairwise(points))
    duration = max(0, (trip.end_time_ms - trip.start_time_ms) // 1000)
    start, end = format_time(trip.start_time_ms), format_time(trip.end_time_ms)
    item = TripIndexItem(
        pseudoVin=trip.pseudo_vin,
        tripId=trip.trip_id,
        tripDate=start[:10],
        startTime=start,
        endTime=end,
        durationSeconds=duration,
        breadcrumbCount=len(records),
        distanceMiles=round(distance, 3),
        maxSpeedMph=round(max_speed, 1),
        avgSpeedMph=round(distance / (duration / 3600), 1) if duration else 0.0,
        startLocation=LocationItem(lat=points[0][0], lng=points[0][1]) if points else None,
        endLocation=LocationItem(lat=points[-1][0], lng=points[-1][1]) if points else None,
        startBattery=batteries[0] if batteries else None,
        endBattery=batteries[-1] if batteries else None,
        s3Key=(
            provisional_key(trip.pseudo_vin, trip.trip_id, trip.end_time_ms)
            if provisional
            else archive_key(trip.pseudo_vin, trip.trip_id)
        ),
        endReason=trip.end_reason.value,
        # From the trip's end, not from R: the index item is a function of the trip's records, whatever
        # order they arrived in (a late archive expires as early as an on-time one would).
        expiresAt=trip.end_time_ms // 1000 + INDEX_TTL_SECONDS,
        provisional=True if provisional else None,
    )
    return gzip_json(records), item
