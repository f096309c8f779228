"""Stored shapes of ``trip-state``, ``trips-index`` and ``live-breadcrumbs`` items (pydantic, at the edge).

Times humans read are ISO-8601 UTC strings with milliseconds (fixed width, so they sort); TTLs are epoch
seconds, as DynamoDB requires.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class LocationItem(_Item):
    lat: float
    lng: float


class StopSnapshot(_Item):
    """Trip aggregates frozen when the vehicle stopped (ENDING)."""

    breadcrumbCount: int
    distanceMiles: float
    maxSpeedMph: float
    endTime: str
    endLocation: LocationItem | None = None
    endBattery: float | None = None


class LastKnownItem(_Item):
    vehicleSpeed: float | None = None
    heading: float | None = None
    odometer: float | None = None
    batteryLevel: float | None = None


class CompletedTripItem(_Item):
    """A completed trip waiting in the outbox for its archive and index to be written."""

    tripId: str
    startTime: str
    endTime: str
    endReason: Literal["gap", "orphan"]
    breadcrumbCount: int
    distanceMiles: float
    maxSpeedMph: float
    startLocation: LocationItem | None = None
    endLocation: LocationItem | None = None
    startBattery: float | None = None
    endBattery: float | None = None
    segments: int = 0
    sealedThrough: str | None = None


class TripStateItem(_Item):
    """One item per vehicle that ever drove: its trip machine state.

    ``status`` IDLE means no active trip; the item stays (a tombstone) because its ``lastEventTime``
    is what stops a replay from the middle of an archived trip from starting a phantom trip.
    """

    pseudoVin: str
    status: Literal["ACTIVE", "ENDING", "IDLE"]
    lastEventTime: str | None = None
    """High-water mark: the event time of the newest record that changed the trip machine."""
    reportsBatteryLevel: bool = False
    """The vehicle has sent ``batteryLevel``; until then its trips' battery figures come from ``soc``."""
    lastUpdate: str
    """Wall-clock time of the last write (volatile): orphan detection and optimistic concurrency."""
    tripId: str | None = None
    startTime: str | None = None
    startLocation: LocationItem | None = None
    startBattery: float | None = None
    breadcrumbCount: int = 0
    distanceMiles: float = 0.0
    maxSpeedMph: float = 0.0
    lastRecordTime: str | None = None
    lastLocation: LocationItem | None = None
    lastBattery: float | None = None
    gapStartTime: str | None = None
    stop: StopSnapshot | None = None
    lastKnown: LastKnownItem | None = None
    segments: int = 0
    sealedThrough: str | None = None
    tailBreadcrumbs: int = 0
    outbox: list[CompletedTripItem] = Field(default=[], alias="closing")
    """Trips completed but not yet archived: whoever loads the item finishes them identically. Stored
    as ``closing`` and left out of the item while empty (the stored format is unchanged)."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    @model_serializer(mode="wrap")
    def _without_empty_outbox(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if not self.outbox:
            dumped.pop("closing", None)
        return dumped


class TripIndexItem(_Item):
    pseudoVin: str
    tripId: str
    tripDate: str
    startTime: str
    endTime: str
    durationSeconds: int
    breadcrumbCount: int
    distanceMiles: float
    maxSpeedMph: float
    avgSpeedMph: float
    startLocation: LocationItem | None = None
    endLocation: LocationItem | None = None
    startBattery: float | None = None
    endBattery: float | None = None
    s3Key: str
    endReason: Literal["gap", "orphan"]
    expiresAt: int


class BreadcrumbItem(_Item):
    """``live-breadcrumbs``: PK pseudoVin, SK timestamp; a trip is a time range of its vehicle's items."""

    pseudoVin: str
    timestamp: str
    tripId: str
    lat: float
    lng: float
    vehicleSpeed: float | None = None
    heading: float | None = None
    odometer: float | None = None
    batteryLevel: float | None = None
    expiresAt: int
