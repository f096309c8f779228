"""Conversions between the trip machine's dataclasses and the stored ``trip-state`` item shapes. Pure: the
store itself is a port (``processors.ports.TripStore``).
"""

from __future__ import annotations

import time
from typing import Any

from processors.signals import format_time, parse_time
from processors.trips import CompletedTrip, EndReason, Trip, TripStatus, VehicleTrips
from schemas.items import CompletedTripItem, TripMarkItem, TripStateItem


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
        completionMs=trip.completion_ms,
        reportsBatteryLevel=trip.reports_battery_level,
        segments=trip.segments,
        sealedThrough=_time(trip.sealed_through_ms),
    )


def completed_trip(pseudo_vin: str, item: CompletedTripItem, written_ms: int) -> CompletedTrip:
    """The outbox entry as a ``CompletedTrip``; ``written_ms`` (the holding item's ``lastUpdate``) stands
    in for R in an entry written before R was stored."""
    return CompletedTrip(
        pseudo_vin=pseudo_vin,
        trip_id=item.tripId,
        start_time_ms=parse_time(item.startTime),
        end_time_ms=parse_time(item.endTime),
        end_reason=EndReason(item.endReason),
        completion_ms=item.completionMs if item.completionMs is not None else written_ms,
        reports_battery_level=item.reportsBatteryLevel,
        segments=item.segments,
        sealed_through_ms=_ms(item.sealedThrough),
    )


def outbox_of(item: TripStateItem) -> list[CompletedTrip]:
    if not item.outbox:
        return []
    written = parse_time(item.lastUpdate)
    return [completed_trip(item.pseudoVin, c, written) for c in item.outbox]


def state_fields(state: VehicleTrips) -> dict[str, Any]:
    """The machine state as ``TripStateItem`` fields (all but ``lastUpdate`` and ``closing``)."""
    fields: dict[str, Any] = {
        "pseudoVin": state.pseudo_vin,
        "lastEventTime": _time(state.high_water_ms),
        "status": TripStatus.IDLE.value,
        "reportsBatteryLevel": state.reports_battery_level,
        "recent": [list(r) for r in state.recent],
        "lastTripSecond": state.last_trip_second,
    }
    trip = state.trip
    if trip is None:
        return fields
    fields.update(
        status=trip.status.value,
        tripId=trip.trip_id,
        startTime=format_time(trip.start_time_ms),
        breadcrumbCount=trip.breadcrumb_count,
        lastRecordTime=format_time(trip.last_time_ms),
        gapStartTime=_time(trip.gap_start_ms),
        segments=trip.segments,
        sealedThrough=_time(trip.sealed_through_ms),
        tailBreadcrumbs=trip.tail_breadcrumbs,
    )
    return fields


def state_from_item(item: TripStateItem) -> VehicleTrips:
    state = VehicleTrips(
        item.pseudoVin,
        _ms(item.lastEventTime),
        reports_battery_level=item.reportsBatteryLevel,
        # An entry written before the id second was kept: the start second (right unless it was bumped).
        recent=[(r[0], r[1], r[2], r[3] if len(r) > 3 else r[0] // 1000) for r in item.recent],
        last_trip_second=item.lastTripSecond,
    )
    if item.status == TripStatus.IDLE or item.tripId is None or item.startTime is None:
        return state
    state.trip = Trip(
        trip_id=item.tripId,
        status=TripStatus(item.status),
        start_time_ms=parse_time(item.startTime),
        last_time_ms=parse_time(item.lastRecordTime or item.startTime),
        breadcrumb_count=item.breadcrumbCount,
        gap_start_ms=_ms(item.gapStartTime),
        segments=item.segments,
        sealed_through_ms=_ms(item.sealedThrough),
        tail_breadcrumbs=item.tailBreadcrumbs,
    )
    return state


MARK_VERSION = ""
"""``lastUpdate`` of an item read from a mark: there is no trip-state item (the next write creates one)."""

SWEEP_SHARDS = 16
SWEEP_QUANTUM_SECONDS = 300


def mark_of(fields: dict[str, Any]) -> TripMarkItem | None:
    """The mark of an idle vehicle's state (``state_fields``); None without a high-water mark."""
    if fields.get("lastEventTime") is None:
        return None
    return TripMarkItem(
        hwm=parse_time(fields["lastEventTime"]),
        rbl=bool(fields.get("reportsBatteryLevel")),
        recent=list(fields.get("recent") or []),
        ts=fields.get("lastTripSecond"),
    )


def item_from_mark(pseudo_vin: str, mark: TripMarkItem) -> TripStateItem:
    """An idle vehicle's state as a ``TripStateItem`` whose version says no item is stored."""
    return TripStateItem(
        pseudoVin=pseudo_vin,
        status="IDLE",
        lastEventTime=format_time(mark.hwm),
        reportsBatteryLevel=mark.rbl,
        recent=mark.recent,
        lastTripSecond=mark.ts,
        lastUpdate=MARK_VERSION,
    )


def sweep_shard(pseudo_vin: str) -> int:
    return int(pseudo_vin[-2:], 16) % SWEEP_SHARDS


def idle_after(last_ms: int, idle_ms: int) -> int:
    """Epoch seconds after which a vehicle last heard of at ``last_ms`` is silent, rounded up to 300 s."""
    seconds = -(-(last_ms + idle_ms) // 1000)
    return -(-seconds // SWEEP_QUANTUM_SECONDS) * SWEEP_QUANTUM_SECONDS


def next_last_update(previous: str | None, now_ms: int | None = None) -> str:
    """Wall clock, but strictly after ``previous``: it doubles as the item's version."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if previous is not None:
        now = max(now, parse_time(previous) + 1)
    return format_time(now)
