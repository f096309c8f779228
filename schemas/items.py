"""Stored shapes of ``trip-state`` and ``trips-index`` items, and of the marks and shard progress items in
``vin-mapping`` (pydantic, at the edge). ``live-breadcrumbs`` items are packed buckets, coded by
``processors.trail``.

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
    hwk: str | None = None
    """The mark's record key (hex, ``processors.trips.Step.key``); absent in marks written before keys."""
    rbl: bool = False
    """reports battery level."""
    recent: list[list[int]] = []
    """The last <= 4 completed trips' ``[startMs, endMs, completionMs, idSecond]``, oldest first: ``idSecond``
    is the epoch second the trip's id names (``processors.trips.trip_second``; older entries lack it)."""
    ts: int | None = None
    """Epoch second in the newest trip's id (``processors.trips.trip_second``)."""


class ShardProgressItem(_Item):
    """A ``vin-mapping`` item that is not a vehicle: ``_meta#progress#<shardId>``, what the shard's record
    processor reported at its last checkpoint (``processors.frontier.ShardProgress``; the orphan sweep reads
    it instead of the stream). Epoch ms; no VIN, no pseudoVin."""

    pseudoVin: str
    """``processors.frontier.progress_key(shardId)``: the table's key, never a pseudoVin."""
    writtenAt: int
    """Wall clock of the report."""
    lastArrival: int | None = None
    """Arrival (stream clock) of the newest record received."""
    caughtUpAt: int | None = None
    """The processor's clock at the last poll the daemon said was 0 behind."""
    millisBehindLatest: int | None = None
    """The last poll's ``millisBehindLatest``."""
    shardEnded: bool = False
    """Written at the end of the shard: every record of it is applied."""


class MachineItem(_Item):
    """``machine`` in a ``trip-state`` item: the exact trip machine (``processors.trips.VehicleTrips``) and
    the records held for it across a shard split. Short names: the item is billed whole on every write."""

    h: int | None = None
    """High-water mark: event time ms of the newest record that changed the machine."""
    k: str | None = None
    """The mark's record key (hex, ``processors.trips.Step.key``)."""
    s: Literal["ACTIVE", "ENDING", "IDLE"] = "IDLE"
    i: str | None = None
    """Trip id."""
    st: int | None = None
    """Start, event time ms."""
    lt: int | None = None
    """Last record the trip consumed, event time ms."""
    n: int = 0
    """Located records of the trip's span."""
    w: int = 0
    """Located records after the stop, while waiting out the gap."""
    g: int | None = None
    """The stop (ENDING since), event time ms."""
    sg: int = 0
    """Sealed segments."""
    sl: int | None = None
    """Sealed through, event time ms."""
    sa: int | None = None
    """R of the last seal (stream clock ms)."""
    tb: int = 0
    """Located records since the last seal."""
    b: bool = False
    """Reports ``batteryLevel``."""
    r: list[list[int]] = []
    """The last <= 4 completed trips' ``[startMs, endMs, completionMs, idSecond]``, oldest first."""
    ts: int | None = None
    """Epoch second in the newest trip's id: the next trip's id is bumped past it."""
    held: list[list[Any]] = []
    """Records handed over at a shard split, not consumed yet: ``[tMs, keyHex, arrivalMs, speed, located,
    batteryLevel]`` (``processors.trip_items.held_rows``)."""


class TripStateItem(_Item):
    """One item per vehicle with an open trip (as the live view or the exact machine sees it), an unarchived
    completed one, or records held for its machine.

    The top-level trip fields are the **live view** (``processors.trip_planner``): the machine run over
    everything received, shown within a poll of a transition. ``machine`` is the exact machine, which
    consumes records once no earlier one can still arrive within the allowed lateness; a restart rebuilds
    the live view from it and the records the KCL redelivers.

    Deleted once nothing is open; the vehicle's bookkeeping then lives in its mark (``TripMarkItem``, in
    ``vin-mapping``). Items without ``machine`` were written by older versions: their top-level fields are
    their machine.
    """

    pseudoVin: str
    status: Literal["ACTIVE", "ENDING", "IDLE"]
    tripId: str | None = None
    startTime: str | None = None
    lastEventTime: str | None = None
    """Event time of the newest record the live view consumed."""
    breadcrumbCount: int = 0
    """Located records of the live trip so far (the archive counts its own rows)."""
    gapStartTime: str | None = None
    """The stop: the trip is ENDING since this record."""
    heardAt: int | None = None
    """Arrival (epoch ms, the stream's clock) of the newest record received: the sweep's silence."""
    lastUpdate: str
    """Wall-clock time of the last write (volatile): optimistic concurrency."""
    machine: MachineItem | None = None
    sweepShard: int | None = None
    """Partition key of the sparse sweep index ``open-trips-by-idle``: ``int(pseudoVin[-2:], 16) % 16``."""
    idleAfter: int | None = None
    """Sort key of ``open-trips-by-idle``: ``heardAt`` in epoch seconds, rounded up to 300 s so the index
    entry moves at most once per 5 minutes."""
    outbox: list[CompletedTripItem] = Field(default=[], alias="closing")
    """Trips completed but not yet archived: whoever loads the item finishes them identically. Stored
    as ``closing`` and left out of the item while empty."""
    # Written by versions before ``machine`` (read only, never written now):
    reportsBatteryLevel: bool | None = None
    lastRecordTime: str | None = None
    segments: int | None = None
    sealedThrough: str | None = None
    tailBreadcrumbs: int | None = None
    recent: list[list[int]] | None = None
    lastTripSecond: int | None = None

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
    """The trip's end (event time) + 90 days, in epoch seconds: a function of the trip, not of arrival."""
    provisional: bool | None = None
    """True on the on-time item, written when the live view completes the trip (``s3Key`` under
    ``trips-provisional/``); the final item (no such attribute, ``s3Key`` under ``trips/``) replaces it once
    the allowed lateness has passed."""
