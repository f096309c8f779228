"""Conversions between the trip machine's dataclasses and the stored ``trip-state`` and ``live-breadcrumbs``
item shapes. Pure: the store itself is a port (``processors.ports.TripStore``).
"""

from __future__ import annotations

import time
from typing import Any

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
from schemas.dynamo import Item, to_item
from schemas.items import (
    CompletedTripItem,
    LastKnownItem,
    LocationItem,
    StopSnapshot,
    TripStateItem,
)
from schemas.records import Location

BREADCRUMB_TTL_SECONDS = 24 * 3600


def _location(value: Location | None) -> LocationItem | None:
    return LocationItem(lat=value.lat, lng=value.lng) if value is not None else None


def _from_location(value: LocationItem | None) -> Location | None:
    return Location(value.lat, value.lng) if value is not None else None


def _time(ms: int | None) -> str | None:
    return format_time(ms) if ms is not None else None


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
