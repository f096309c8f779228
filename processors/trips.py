"""The trip state machine: pure, deterministic, driven by event time.

States per vehicle: IDLE -> ACTIVE -> ENDING -> (ACTIVE | IDLE).

- IDLE -> ACTIVE: a record with ``vehicleSpeed`` above the start threshold. The trip id comes from that
  record's UTC time and the pseudoVin, so a replay produces the same id.
- ACTIVE -> ENDING: speed at or below the end threshold; the gap timer starts at that record ("the stop").
- ENDING -> ACTIVE: speed above the start threshold before the gap expires.
- ENDING -> IDLE (completed, ``gap``): a record at or after stop + gap; that record is then applied from
  IDLE (it may start the next trip).

**What an archived trip contains.** A trip ends where the vehicle stopped: ``endTime`` is the stop (the
record that began ENDING), and the trip keeps the breadcrumbs up to and including the stop. Breadcrumbs
recorded while waiting out the gap show on the live map; if the vehicle moves on they belong to the
continuing trip, if the gap expires they are not part of the archive. A trip completed by the orphan
sweep ends at its stop if it was ENDING, else at its last record.

**Exactly-once under replay.** Each vehicle keeps a high-water mark: the event time of the newest record
that changed its trip state. The machine consumes a vehicle's records in event-time order
(``processors.settle``), so a record at or below the mark was consumed already (a redelivery) or arrived
displaced beyond the settle window (late-for-machine): it changes nothing. Consumption being monotone in
event time, the mark alone is exact; no stream position is kept. So the state is a function of the
stream, not of how it was batched or how often it was redelivered, as long as the persisted state is the
whole machine state: it is (``VehicleTrips``). Late records still update ``vehicle-state``, which merges
per signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from schemas.records import Location, VehicleReading

EARTH_RADIUS_MILES = 3958.7613


class TripStatus(StrEnum):
    ACTIVE = "ACTIVE"
    ENDING = "ENDING"
    IDLE = "IDLE"


class EndReason(StrEnum):
    GAP = "gap"
    ORPHAN = "orphan"


@dataclass(frozen=True, slots=True)
class TripThresholds:
    start_speed_mph: float = 5.0
    end_speed_mph: float = 1.0
    gap_ms: int = 300_000
    segment_breadcrumbs: int = 3600
    """Long trips are staged in segments of this many breadcrumbs (the live table keeps only 24 h)..."""
    segment_max_ms: int = 12 * 3600_000
    """...or of this much event time, whichever comes first: a vehicle reporting its position rarely
    must not keep unstaged breadcrumbs past the live table's TTL (12 h leaves 12 h of consumer lag)."""


@dataclass(frozen=True, slots=True)
class Breadcrumb:
    pseudo_vin: str
    trip_id: str
    time_ms: int
    lat: float
    lng: float
    vehicle_speed: float | None
    heading: float | None
    odometer: float | None
    battery_level: float | None


@dataclass(slots=True)
class LastKnown:
    """Latest values seen *within the trip*, to complete breadcrumbs from delta records."""

    vehicle_speed: float | None = None
    heading: float | None = None
    odometer: float | None = None
    battery_level: float | None = None


@dataclass(slots=True)
class TripStats:
    """Running aggregates of a trip, through its last included record."""

    breadcrumbs: int = 0
    distance_miles: float = 0.0
    max_speed_mph: float = 0.0
    end_time_ms: int = 0
    end_location: Location | None = None
    end_battery: float | None = None


@dataclass(slots=True)
class Trip:
    trip_id: str
    status: TripStatus
    start_time_ms: int
    start_location: Location | None
    start_battery: float | None
    stats: TripStats
    known: LastKnown
    stop: TripStats | None = None
    """Aggregates frozen at the stop; what the archive gets if the gap then expires."""
    gap_start_ms: int | None = None
    segments: int = 0
    """Sealed segments (staged in S3); breadcrumbs after them are the live tail."""
    sealed_through_ms: int | None = None
    tail_breadcrumbs: int = 0


@dataclass(frozen=True, slots=True)
class CompletedTrip:
    """Everything the archive needs. Stored in the trip-state outbox until the archive is written."""

    pseudo_vin: str
    trip_id: str
    start_time_ms: int
    end_time_ms: int
    end_reason: EndReason
    breadcrumbs: int
    distance_miles: float
    max_speed_mph: float
    start_location: Location | None
    end_location: Location | None
    start_battery: float | None
    end_battery: float | None
    segments: int
    sealed_through_ms: int | None


@dataclass(frozen=True, slots=True)
class SegmentSeal:
    """Stage breadcrumbs ``[from_ms, to_ms]`` of a trip as segment ``index``."""

    pseudo_vin: str
    trip_id: str
    index: int
    from_ms: int
    to_ms: int


@dataclass(slots=True)
class VehicleTrips:
    """The whole per-vehicle machine state: what ``trip-state`` persists."""

    pseudo_vin: str
    high_water_ms: int | None = None
    trip: Trip | None = None
    reports_battery_level: bool = False
    """The vehicle has sent ``batteryLevel`` in a trip: its trips' battery figures come from that signal
    only. Until then they come from ``soc`` (Tesla vehicles that send only the BMS state of charge)."""


@dataclass(slots=True)
class TripEffects:
    """What applying records produced: to be written before the state that records them."""

    breadcrumbs: list[Breadcrumb] = field(default_factory=list)
    seals: list[SegmentSeal] = field(default_factory=list)
    completed: list[CompletedTrip] = field(default_factory=list)
    changed: bool = False
    """The persisted state must be rewritten (a trip moved). IDLE high-water marks need no write:
    re-applying an idle record changes nothing."""


def trip_id(pseudo_vin: str, start_ms: int) -> str:
    moment = datetime.fromtimestamp(start_ms // 1000, UTC)
    return f"trip_{moment:%Y%m%d_%H%M%S}_{pseudo_vin[:6]}"


def haversine_miles(a: Location, b: Location) -> float:
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat, dlng = lat2 - lat1, math.radians(b.lng - a.lng)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
    return 2 * EARTH_RADIUS_MILES * math.asin(min(1.0, math.sqrt(h)))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _battery(state: VehicleTrips, reading: VehicleReading) -> float | None:
    """The record's battery figure: ``batteryLevel``, or ``soc`` for a vehicle never seen to report
    ``batteryLevel``. Never one or the other by record: they differ, and the figures would flap."""
    name = "batteryLevel" if state.reports_battery_level else "soc"
    return _number(reading.signals.get(name))


def _reports_battery_level(state: VehicleTrips) -> None:
    """The vehicle turns out to report ``batteryLevel``: a running trip's figures taken from ``soc``
    are forgotten, to be taken again from ``batteryLevel`` (breadcrumbs already written keep theirs)."""
    state.reports_battery_level = True
    trip = state.trip
    if trip is None:
        return
    trip.start_battery = trip.known.battery_level = trip.stats.end_battery = None
    if trip.stop is not None:
        trip.stop.end_battery = None


def complete(vehicle: str, trip: Trip, reason: EndReason) -> CompletedTrip:
    """Close ``trip``: at its stop if it was ending, else at its last record."""
    final = trip.stop if trip.stop is not None else trip.stats
    return CompletedTrip(
        pseudo_vin=vehicle,
        trip_id=trip.trip_id,
        start_time_ms=trip.start_time_ms,
        end_time_ms=final.end_time_ms,
        end_reason=reason,
        breadcrumbs=final.breadcrumbs,
        distance_miles=final.distance_miles,
        max_speed_mph=final.max_speed_mph,
        start_location=trip.start_location,
        end_location=final.end_location,
        start_battery=trip.start_battery,
        end_battery=final.end_battery,
        segments=trip.segments,
        sealed_through_ms=trip.sealed_through_ms,
    )


class TripStateMachine:
    """The trip rules of the module docstring, applied one reading at a time to a vehicle's
    ``VehicleTrips`` (IDLE -> ACTIVE -> ENDING -> IDLE), emitting breadcrumbs, segment seals and completed
    trips into ``TripEffects``.

    Guarantees: pure and event-time driven; the resulting state is a function of the stream, not of how it
    was batched or how often it was redelivered, provided each vehicle's records are consumed in event-time
    order (``processors.settle``): the high-water mark skips what was already consumed. It holds no state
    of its own: the caller owns every ``VehicleTrips``.
    """

    def __init__(self, thresholds: TripThresholds | None = None) -> None:
        self.thresholds = thresholds or TripThresholds()

    def apply(self, state: VehicleTrips, reading: VehicleReading, effects: TripEffects) -> None:
        """Apply one record in place, appending what it produced to ``effects``."""
        t = reading.event_time_ms
        if state.high_water_ms is not None and t <= state.high_water_ms:
            return
        limits = self.thresholds
        trip = state.trip
        speed = reading.speed

        if trip is not None and trip.status is TripStatus.ENDING:
            assert trip.gap_start_ms is not None
            if t >= trip.gap_start_ms + limits.gap_ms:
                effects.completed.append(complete(state.pseudo_vin, trip, EndReason.GAP))
                state.trip = trip = None
                state.high_water_ms = t
                effects.changed = True

        if trip is None and (speed is None or speed <= limits.start_speed_mph):
            # An idle record changes nothing, so it does not move the mark either: the mark
            # is then the same whether or not the state was persisted since (replay-exact).
            return
        if not state.reports_battery_level and _number(reading.signals.get("batteryLevel")) is not None:
            # Learned only from a record that moves the machine, so it is persisted with that move:
            # learned from an idle record, a restart would forget it and the same stream would give
            # other figures (and a vehicle that never drove would need a trip-state item).
            _reports_battery_level(state)
        if trip is None:
            trip = state.trip = Trip(
                trip_id=trip_id(state.pseudo_vin, t),
                status=TripStatus.ACTIVE,
                start_time_ms=t,
                start_location=reading.location,
                start_battery=_battery(state, reading),
                stats=TripStats(end_time_ms=t),
                known=LastKnown(),
            )

        state.high_water_ms = t
        effects.changed = True
        self._include(state.pseudo_vin, trip, reading, _battery(state, reading), effects)

        if trip.status is TripStatus.ACTIVE and speed is not None and speed <= limits.end_speed_mph:
            trip.status = TripStatus.ENDING
            trip.gap_start_ms = t
            trip.stop = replace(trip.stats)
        elif trip.status is TripStatus.ENDING and speed is not None and speed > limits.start_speed_mph:
            trip.status = TripStatus.ACTIVE
            trip.gap_start_ms = None
            trip.stop = None

    def _include(
        self, vehicle: str, trip: Trip, reading: VehicleReading, battery: float | None, effects: TripEffects
    ) -> None:
        signals = reading.signals
        known, stats = trip.known, trip.stats
        speed = reading.speed
        if speed is not None:
            known.vehicle_speed = speed
            stats.max_speed_mph = max(stats.max_speed_mph, speed)
        heading, odometer = _number(signals.get("heading")), _number(signals.get("odometer"))
        if heading is not None:
            known.heading = heading
        if odometer is not None:
            known.odometer = odometer
        if battery is not None:
            known.battery_level = battery
            stats.end_battery = battery
            if trip.start_battery is None:
                trip.start_battery = battery
        stats.end_time_ms = reading.event_time_ms

        location = reading.location
        if location is None:
            return
        if trip.start_location is None:
            trip.start_location = location
        if stats.end_location is not None:
            stats.distance_miles += haversine_miles(stats.end_location, location)
        stats.end_location = location
        stats.breadcrumbs += 1
        trip.tail_breadcrumbs += 1
        effects.breadcrumbs.append(
            Breadcrumb(
                vehicle,
                trip.trip_id,
                reading.event_time_ms,
                location.lat,
                location.lng,
                known.vehicle_speed,
                known.heading,
                known.odometer,
                known.battery_level,
            )
        )
        since = trip.start_time_ms if trip.sealed_through_ms is None else trip.sealed_through_ms + 1
        if (
            trip.tail_breadcrumbs >= self.thresholds.segment_breadcrumbs
            or reading.event_time_ms - since >= self.thresholds.segment_max_ms
        ):
            effects.seals.append(
                SegmentSeal(vehicle, trip.trip_id, trip.segments, since, reading.event_time_ms)
            )
            trip.segments += 1
            trip.sealed_through_ms = reading.event_time_ms
            trip.tail_breadcrumbs = 0


@dataclass(slots=True)
class VehicleTripPlan:
    """One vehicle's trip writes for a batch, in the order they must happen."""

    pseudo_vin: str
    seals: list[SegmentSeal]
    outbox: list[CompletedTrip]
    """Completed trips to archive: left over in the stored outbox, then those completed in this batch."""
    new_completions: int
    state: dict[str, Any]
    """The machine state to persist, as ``TripStateItem`` fields."""
    expected_last_update: str | None
    """Version of the stored item this plan builds on (None: there is none)."""
    write: bool
