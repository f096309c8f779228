"""Persistence of the trip machine: ``trip-state`` items and ``live-breadcrumbs``.

Pure part: conversions between the machine's dataclasses and the stored item shapes.
I/O edge: ``TripStore``. Every ``trip-state`` write is conditional on the item's ``lastUpdate`` being
what this writer last saw, so a zombie processor or the orphan sweeper can never overwrite a newer
state unnoticed: the loser gets the current item back (``StaleTripState``) and re-plans from it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from processors.errors import FleetIngestError, RetryableWriteError, aws_error_code
from processors.signals import format_time, parse_time
from processors.trips import (
    Breadcrumb,
    CompletedTrip,
    EndReason,
    LastKnown,
    Trip,
    TripStats,
    TripStatus,
    VehicleTrips,
)
from schemas.dynamo import Item, from_item, to_item
from schemas.items import (
    BreadcrumbItem,
    CompletedTripItem,
    LastKnownItem,
    LocationItem,
    PositionItem,
    StopSnapshot,
    TripStateItem,
)
from schemas.records import Location, StreamPosition

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BREADCRUMB_TTL_SECONDS = 24 * 3600
BATCH_WRITE_LIMIT = 25
BATCH_GET_LIMIT = 100


class StaleTripState(FleetIngestError):
    """The stored item changed since we read it; ``current`` is what is stored now (None: no item)."""

    def __init__(self, pseudo_vin: str, current: TripStateItem | None) -> None:
        super().__init__(f"trip-state of {pseudo_vin} changed under us")
        self.pseudo_vin = pseudo_vin
        self.current = current


# --- conversions (pure) -------------------------------------------------------------------------------


def _location(value: Location | None) -> LocationItem | None:
    return LocationItem(lat=value.lat, lng=value.lng) if value is not None else None


def _from_location(value: LocationItem | None) -> Location | None:
    return Location(value.lat, value.lng) if value is not None else None


def _time(ms: int | None) -> str | None:
    return format_time(ms) if ms is not None else None


def _position(position: StreamPosition | None) -> PositionItem | None:
    if position is None:
        return None
    return PositionItem(
        shardId=position.shard_id,
        sequenceNumber=position.sequence_number,
        subSequenceNumber=position.sub_sequence_number,
    )


def _ms(text: str | None) -> int | None:
    return parse_time(text) if text is not None else None


def completed_item(trip: CompletedTrip) -> CompletedTripItem:
    return CompletedTripItem(
        tripId=trip.trip_id,
        startTime=format_time(trip.start_time_ms),
        endTime=format_time(trip.end_time_ms),
        endReason=trip.end_reason.value,
        breadcrumbCount=trip.breadcrumbs,
        distanceMiles=trip.distance_miles,
        maxSpeedMph=trip.max_speed_mph,
        startLocation=_location(trip.start_location),
        endLocation=_location(trip.end_location),
        startBattery=trip.start_battery,
        endBattery=trip.end_battery,
        segments=trip.segments,
        sealedThrough=_time(trip.sealed_through_ms),
    )


def completed_trip(pseudo_vin: str, item: CompletedTripItem) -> CompletedTrip:
    return CompletedTrip(
        pseudo_vin=pseudo_vin,
        trip_id=item.tripId,
        start_time_ms=parse_time(item.startTime),
        end_time_ms=parse_time(item.endTime),
        end_reason=EndReason(item.endReason),
        breadcrumbs=item.breadcrumbCount,
        distance_miles=item.distanceMiles,
        max_speed_mph=item.maxSpeedMph,
        start_location=_from_location(item.startLocation),
        end_location=_from_location(item.endLocation),
        start_battery=item.startBattery,
        end_battery=item.endBattery,
        segments=item.segments,
        sealed_through_ms=_ms(item.sealedThrough),
    )


def state_fields(state: VehicleTrips) -> dict[str, Any]:
    """The machine state as ``TripStateItem`` fields (all but ``lastUpdate`` and ``closing``)."""
    fields: dict[str, Any] = {
        "pseudoVin": state.pseudo_vin,
        "lastEventTime": _time(state.high_water_ms),
        "appliedThrough": _position(state.applied_through),
        "status": TripStatus.IDLE.value,
        "reportsBatteryLevel": state.reports_battery_level,
    }
    trip = state.trip
    if trip is None:
        return fields
    stats, known = trip.stats, trip.known
    fields.update(
        status=trip.status.value,
        tripId=trip.trip_id,
        startTime=format_time(trip.start_time_ms),
        startLocation=_location(trip.start_location),
        startBattery=trip.start_battery,
        breadcrumbCount=stats.breadcrumbs,
        distanceMiles=stats.distance_miles,
        maxSpeedMph=stats.max_speed_mph,
        lastRecordTime=format_time(stats.end_time_ms),
        lastLocation=_location(stats.end_location),
        lastBattery=stats.end_battery,
        gapStartTime=_time(trip.gap_start_ms),
        lastKnown=LastKnownItem(
            vehicleSpeed=known.vehicle_speed,
            heading=known.heading,
            odometer=known.odometer,
            batteryLevel=known.battery_level,
        ),
        segments=trip.segments,
        sealedThrough=_time(trip.sealed_through_ms),
        tailBreadcrumbs=trip.tail_breadcrumbs,
    )
    if trip.stop is not None:
        fields["stop"] = StopSnapshot(
            breadcrumbCount=trip.stop.breadcrumbs,
            distanceMiles=trip.stop.distance_miles,
            maxSpeedMph=trip.stop.max_speed_mph,
            endTime=format_time(trip.stop.end_time_ms),
            endLocation=_location(trip.stop.end_location),
            endBattery=trip.stop.end_battery,
        )
    return fields


def state_from_item(item: TripStateItem) -> VehicleTrips:
    state = VehicleTrips(
        item.pseudoVin, _ms(item.lastEventTime), reports_battery_level=item.reportsBatteryLevel
    )
    if (through := item.appliedThrough) is not None:
        state.applied_through = StreamPosition(
            through.shardId, through.sequenceNumber, through.subSequenceNumber, 0
        )
    if item.status == TripStatus.IDLE or item.tripId is None or item.startTime is None:
        return state
    known = item.lastKnown or LastKnownItem()
    stop = item.stop
    state.trip = Trip(
        trip_id=item.tripId,
        status=TripStatus(item.status),
        start_time_ms=parse_time(item.startTime),
        start_location=_from_location(item.startLocation),
        start_battery=item.startBattery,
        stats=TripStats(
            breadcrumbs=item.breadcrumbCount,
            distance_miles=item.distanceMiles,
            max_speed_mph=item.maxSpeedMph,
            end_time_ms=parse_time(item.lastRecordTime or item.startTime),
            end_location=_from_location(item.lastLocation),
            end_battery=item.lastBattery,
        ),
        known=LastKnown(known.vehicleSpeed, known.heading, known.odometer, known.batteryLevel),
        stop=None
        if stop is None
        else TripStats(
            breadcrumbs=stop.breadcrumbCount,
            distance_miles=stop.distanceMiles,
            max_speed_mph=stop.maxSpeedMph,
            end_time_ms=parse_time(stop.endTime),
            end_location=_from_location(stop.endLocation),
            end_battery=stop.endBattery,
        ),
        gap_start_ms=_ms(item.gapStartTime),
        segments=item.segments,
        sealed_through_ms=_ms(item.sealedThrough),
        tail_breadcrumbs=item.tailBreadcrumbs,
    )
    return state


def breadcrumb_item(crumb: Breadcrumb) -> Item:
    """The ``live-breadcrumbs`` item (shape: ``BreadcrumbItem``), one per moving record.

    Built straight from the dataclass: validating our own values through the pydantic model and
    dumping them again cost twice as much as the item itself (9 -> 4 us a breadcrumb).
    """
    return to_item(
        {
            "pseudoVin": crumb.pseudo_vin,
            "timestamp": format_time(crumb.time_ms),
            "tripId": crumb.trip_id,
            "lat": crumb.lat,
            "lng": crumb.lng,
            "vehicleSpeed": crumb.vehicle_speed,
            "heading": crumb.heading,
            "odometer": crumb.odometer,
            "batteryLevel": crumb.battery_level,
            "expiresAt": crumb.time_ms // 1000 + BREADCRUMB_TTL_SECONDS,
        }
    )


def next_last_update(previous: str | None, now_ms: int | None = None) -> str:
    """Wall clock, but strictly after ``previous``: it doubles as the item's version."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if previous is not None:
        now = max(now, parse_time(previous) + 1)
    return format_time(now)


# --- I/O edge -----------------------------------------------------------------------------------------


def _back_off(attempt: int) -> None:
    """Before re-sending unprocessed items: exponential, with full jitter so that the shards of a
    worker (and the workers of a service) do not retry in step against the same partition."""
    time.sleep(random.uniform(0, min(1.0, 0.05 * 2**attempt)))


class TripStore:
    def __init__(self, dynamodb: DynamoDBClient, trip_table: str, breadcrumb_table: str) -> None:
        self._dynamodb = dynamodb
        self.trip_table = trip_table
        self.breadcrumb_table = breadcrumb_table

    def load(self, pseudo_vins: Sequence[str]) -> dict[str, TripStateItem]:
        """Current items of these vehicles (strongly consistent); absent vehicles have no item."""
        found: dict[str, TripStateItem] = {}
        for start in range(0, len(pseudo_vins), BATCH_GET_LIMIT):
            keys: list[Any] = [
                {"pseudoVin": {"S": pv}} for pv in pseudo_vins[start : start + BATCH_GET_LIMIT]
            ]
            request: dict[str, Any] = {self.trip_table: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(10):
                response = self._dynamodb.batch_get_item(RequestItems=request)
                for raw in response["Responses"].get(self.trip_table, []):
                    item = TripStateItem.model_validate(from_item(raw))
                    found[item.pseudoVin] = item
                request = dict(response.get("UnprocessedKeys") or {})
                if not request:
                    break
                _back_off(attempt)
            else:
                raise RetryableWriteError("trip_state_load_throttled")
        return found

    def write(self, item: TripStateItem, expected_last_update: str | None) -> None:
        """Put ``item`` if the stored one is still the version we expect (None: no item yet)."""
        condition = (
            {"ConditionExpression": "attribute_not_exists(pseudoVin)"}
            if expected_last_update is None
            else {
                "ConditionExpression": "lastUpdate = :expected",
                "ExpressionAttributeValues": {":expected": {"S": expected_last_update}},
            }
        )
        try:
            self._dynamodb.put_item(
                TableName=self.trip_table,
                Item=to_item(
                    item.model_dump(exclude_none=True, exclude={"closing"} if not item.closing else None)
                ),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **condition,
            )
        except ClientError as failed:
            if aws_error_code(failed) != "ConditionalCheckFailedException":
                raise
            raw = cast(dict[str, Any] | None, failed.response.get("Item"))
            current = TripStateItem.model_validate(from_item(raw)) if raw else None
            raise StaleTripState(item.pseudoVin, current) from None

    def put_breadcrumbs(self, crumbs: Iterable[Breadcrumb]) -> int:
        """BatchWriteItem in 25s, retrying UnprocessedItems with backoff. Returns requests made."""
        requests = 0
        pending = [{"PutRequest": {"Item": breadcrumb_item(c)}} for c in crumbs]
        for start in range(0, len(pending), BATCH_WRITE_LIMIT):
            chunk: list[Any] = pending[start : start + BATCH_WRITE_LIMIT]
            for attempt in range(10):
                response = self._dynamodb.batch_write_item(RequestItems={self.breadcrumb_table: chunk})
                requests += 1
                chunk = list((response.get("UnprocessedItems") or {}).get(self.breadcrumb_table, []))
                if not chunk:
                    break
                _back_off(attempt)
            else:
                raise RetryableWriteError("breadcrumbs_unprocessed", f"{len(chunk)} items")
        return requests

    def breadcrumbs(self, pseudo_vin: str, trip_id: str, from_ms: int, to_ms: int) -> list[BreadcrumbItem]:
        """A trip's breadcrumbs with ``from_ms <= time <= to_ms``, in time order (strongly consistent)."""
        if to_ms < from_ms:
            return []
        query: dict[str, Any] = {
            "TableName": self.breadcrumb_table,
            "ConsistentRead": True,
            "KeyConditionExpression": "pseudoVin = :pv AND #ts BETWEEN :from AND :to",
            "FilterExpression": "tripId = :trip",
            "ExpressionAttributeNames": {"#ts": "timestamp"},
            "ExpressionAttributeValues": {
                ":pv": {"S": pseudo_vin},
                ":from": {"S": format_time(from_ms)},
                ":to": {"S": format_time(to_ms)},
                ":trip": {"S": trip_id},
            },
        }
        crumbs: list[BreadcrumbItem] = []
        while True:
            page = self._dynamodb.query(**query)
            crumbs += [BreadcrumbItem.model_validate(from_item(raw)) for raw in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return crumbs
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def scan(self) -> Iterator[TripStateItem]:
        """Every trip-state item (the orphan sweep's input)."""
        request: dict[str, Any] = {"TableName": self.trip_table}
        while True:
            page = self._dynamodb.scan(**request)
            for raw in page["Items"]:
                yield TripStateItem.model_validate(from_item(raw))
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
