"""Archiving completed trips: ``trips/{pseudoVin}/{tripId}.json.gz`` in S3 and one ``trips-index`` item.

Pure core: object keys, the gzipped JSON bodies (``mtime=0`` so equal input gives equal bytes) and the
index item. I/O edge: ``TripArchiver``, which gathers a trip's breadcrumbs (sealed segments in S3, then
the live tail in ``live-breadcrumbs``), writes the archive, then the index item. Both writes are plain
overwrites of deterministic content: doing them twice, or by two writers, leaves the same result.

Long trips: ``live-breadcrumbs`` keeps 24 h, so every ``segment_breadcrumbs`` breadcrumbs of a trip are
sealed into ``trip-segments/{pseudoVin}/{tripId}/{n}.json.gz`` while the trip runs; the archive is the
segments plus the tail. A bucket lifecycle rule expires segments.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from processors.signals import format_time, parse_time
from processors.trip_store import TripStore, completed_item, next_last_update
from processors.trips import CompletedTrip, SegmentSeal, VehicleTripPlan
from schemas.dynamo import to_item
from schemas.items import BreadcrumbItem, TripIndexItem, TripStateItem

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

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


class TripArchiver:
    def __init__(
        self, s3: S3Client, bucket: str, store: TripStore, dynamodb: DynamoDBClient, index_table: str
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._store = store
        self._dynamodb = dynamodb
        self._index_table = index_table

    def seal(self, seal: SegmentSeal) -> None:
        crumbs = self._store.breadcrumbs(seal.pseudo_vin, seal.trip_id, seal.from_ms, seal.to_ms)
        self._put(
            segment_key(seal.pseudo_vin, seal.trip_id, seal.index), gzip_json(map(archive_record, crumbs))
        )

    def archive(self, trip: CompletedTrip) -> TripIndexItem:
        """Write the archive object, then its index item. Idempotent."""
        records = self._breadcrumbs(trip)
        if len(records) != trip.breadcrumbs:
            # Breadcrumbs expired (TTL) before they were staged: archived anyway, as they are, but loudly.
            log.error(
                "archive_incomplete",
                extra={
                    "fields": {
                        "pseudoVin": trip.pseudo_vin,
                        "tripId": trip.trip_id,
                        "breadcrumbs": trip.breadcrumbs,
                        "archived": len(records),
                    }
                },
            )
        key = archive_key(trip.pseudo_vin, trip.trip_id)
        self._put(key, gzip_json(records))
        item = index_item(trip, len(records))
        self._dynamodb.put_item(
            TableName=self._index_table,
            Item=to_item(item.model_dump(exclude_none=True)),
        )
        return item

    def _breadcrumbs(self, trip: CompletedTrip) -> list[dict[str, Any]]:
        end = format_time(trip.end_time_ms)
        records: list[dict[str, Any]] = []
        for index in range(trip.segments):
            body = self._s3.get_object(
                Bucket=self._bucket, Key=segment_key(trip.pseudo_vin, trip.trip_id, index)
            )
            records += read_gzip_json(body["Body"].read())
        tail_from = trip.start_time_ms if trip.sealed_through_ms is None else trip.sealed_through_ms + 1
        records += map(
            archive_record,
            self._store.breadcrumbs(trip.pseudo_vin, trip.trip_id, tail_from, trip.end_time_ms),
        )
        # Breadcrumbs after the stop (waiting out the gap) are not part of the trip.
        return [
            r for r in records if r["timestamp"] <= end and parse_time(r["timestamp"]) >= trip.start_time_ms
        ]

    def _put(self, key: str, body: bytes) -> None:
        self._s3.put_object(
            Bucket=self._bucket, Key=key, Body=body, ContentType="application/json", ContentEncoding="gzip"
        )


class TripCommitter:
    """Writes one vehicle's ``VehicleTripPlan``, in an order that makes a crash between any two steps
    harmless:

    1. seal segments (S3; deterministic content);
    2. if trips completed in this batch: the new state *with the completed trips in its outbox*
       (conditional on the version we built on). From here on, whoever loads the item (this processor
       after a restart, or the orphan sweep) finishes those trips identically;
    3. per outbox trip: archive object, then its index item (plain overwrites);
    4. the new state with an empty outbox (conditional on the version written in 2).

    Returns (version now stored, requests made). Raises ``StaleTripState`` if another writer got there
    first: nothing of ours that could diverge has been written (steps 1-3 only run on our own version).
    """

    def __init__(self, store: TripStore, archiver: TripArchiver) -> None:
        self._store = store
        self._archiver = archiver

    def commit(self, plan: VehicleTripPlan) -> tuple[str | None, int]:
        requests = 0
        for seal in plan.seals:
            self._archiver.seal(seal)
            requests += 2
        version = plan.expected_last_update
        if plan.new_completions:
            version = self._write(plan, plan.outbox, version)
            requests += 1
        if plan.outbox:
            for trip in plan.outbox:
                self._archiver.archive(trip)
                requests += 2 + trip.segments
            version = self._write(plan, [], version)
            requests += 1
        elif plan.write:
            version = self._write(plan, [], version)
            requests += 1
        return version, requests

    def _write(self, plan: VehicleTripPlan, outbox: list[CompletedTrip], expected: str | None) -> str:
        item = TripStateItem(
            **plan.state,
            lastUpdate=next_last_update(expected),
            closing=[completed_item(trip) for trip in outbox],
        )
        self._store.write(item, expected)
        return item.lastUpdate
