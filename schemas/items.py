"""Stored shapes of ``trip-state`` and ``trips-index`` items (pydantic, at the edge). ``live-breadcrumbs``
items are packed buckets, coded by ``processors.trail``.

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


class CompletedTripItem(_Item):
    """A completed trip waiting in the outbox for its archive and index to be written."""

    tripId: str
    startTime: str
    endTime: str
    endReason: Literal["gap", "orphan"]
    completionMs: int | None = None
    """R (``CompletedTrip.completion_ms``, epoch ms). None only in an outbox written before R was stored: the
    item's ``lastUpdate`` stands in (written just after the completing record arrived)."""
    reportsBatteryLevel: bool = False
    segments: int = 0
    sealedThrough: str | None = None


class TripMarkItem(_Item):
    """``m`` in a vehicle's ``vin-mapping`` item: what exactly-once needs while no trip is open.

    Written after a vehicle's last open trip is archived, right before its ``trip-state`` item is deleted,
    as a monotone register (``hwm`` never moves back). Its ``hwm`` is what stops a replay from the middle
    of an archived trip, or a zombie, from starting that trip again (the creation transaction checks it).
    """

    hwm: int
    """High-water mark, event time ms."""
    rbl: bool = False
    """reports battery level."""
    recent: list[list[int]] = []
    """The last <= 4 completed trips' ``[startMs, endMs, completionMs, idSecond]``, oldest first: ``idSecond``
    is the epoch second the trip's id names (``processors.trips.trip_second``; older entries lack it)."""
    ts: int | None = None
    """Epoch second in the newest trip's id (``processors.trips.trip_second``)."""


class TripStateItem(_Item):
    """One item per vehicle with an open trip or an unarchived completed one: its trip machine state.

    Deleted once its last trip is archived; the vehicle's bookkeeping then lives in its mark
    (``TripMarkItem``, in ``vin-mapping``). Items with status IDLE and no outbox are left by older
    versions: they are read as marks, and deleted by the vehicle's next completion.
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
    breadcrumbCount: int = 0
    """Located records the machine consumed so far (live; the archive counts its own rows)."""
    lastRecordTime: str | None = None
    gapStartTime: str | None = None
    segments: int = 0
    sealedThrough: str | None = None
    tailBreadcrumbs: int = 0
    recent: list[list[int]] = []
    """The last <= 4 completed trips' ``[startMs, endMs, completionMs, idSecond]`` (moves to the mark when
    idle)."""
    lastTripSecond: int | None = None
    """Epoch second in the newest trip's id: the next trip's id is bumped past it."""
    sweepShard: int | None = None
    """Partition key of the sparse sweep index ``open-trips-by-idle``: ``int(pseudoVin[-2:], 16) % 16``."""
    idleAfter: int | None = None
    """Sort key of ``open-trips-by-idle``: epoch seconds after which the vehicle counts as silent,
    quantized up to 300 s so the index entry moves at most once per 5 minutes."""
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
