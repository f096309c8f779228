"""The trip state machine: pure, deterministic, driven by event time.

States per vehicle: IDLE -> ACTIVE -> ENDING -> (ACTIVE | IDLE).

- IDLE -> ACTIVE: a record with ``vehicleSpeed`` above the start threshold. The trip id comes from that
  record's UTC time and the pseudoVin, so a replay produces the same id.
- ACTIVE -> ENDING: speed at or below the end threshold; the gap timer starts at that record ("the stop").
- ENDING -> ACTIVE: speed above the start threshold before the gap expires.
- ENDING -> IDLE (completed, ``gap``): a record at or after stop + gap; that record is then applied from
  IDLE (it may start the next trip).

**What an archived trip contains.** A trip ends where the vehicle stopped: ``endTime`` is the stop (the
record that began ENDING). The machine only decides the span and the completion point R; the archive is
the trail's crumbs with ``start <= t <= end`` that arrived by R (``processors.trail.trip_rows``), its
aggregates computed there (``processors.archive``). Crumbs recorded while waiting out the gap show on the
live map; if the vehicle moves on they fall in the continuing trip's span, if the gap expires they are not
part of the archive. A trip completed by the orphan sweep ends at its stop if it was ENDING, else at its
last record, with R = the sweep's clock.

**Exactly-once under replay.** Each vehicle keeps a high-water mark: the ``(event time, key)`` of the
newest record that changed its trip state, ``key`` being 8 bytes of the record's SHA-256 (``Step``). The
machine consumes a vehicle's records in ``(t, key)`` order (``processors.settle``), so a record at or below
the mark was consumed already (a redelivery) or arrived displaced beyond the allowed lateness
(late-for-machine): it changes nothing. Two records of one instant (a gateway that splits a sample, a resend
with another field set) have different keys: both are consumed, once each. Consumption being monotone, the
mark alone is exact; no stream position is kept. So the state is a function of the stream, not of how it
was batched or how often it was redelivered, as long as the persisted state is the whole machine state: it
is (``VehicleTrips``). Late records still update ``vehicle-state``, which merges per signal.

**The machine reads a ``Step``**, the few fields of a record it decides on (``step_of``): small enough to
hold the unsettled records of a shard in memory and to hand them to the child shards in ``trip-state`` at
a split (``processors.trip_planner``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from schemas.records import VehicleReading

KEY_BYTES = 8
NO_KEY = b"\xff" * KEY_BYTES
"""The key of a mark stored before keys were kept: every record of that instant counts as consumed."""


@dataclass(frozen=True, slots=True)
class Step:
    """One record as the trip machine sees it. Ordered by ``(t_ms, key)``: the same order on every stream."""

    t_ms: int
    key: bytes
    """The first ``KEY_BYTES`` of the record's SHA-256: tells apart, and orders, records of one instant."""
    arrival_ms: int
    speed: float | None
    located: bool
    battery_level: bool
    """The record carries a numeric ``batteryLevel``."""

    @property
    def order(self) -> tuple[int, bytes]:
        return (self.t_ms, self.key)


def record_key(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:KEY_BYTES]


def step_of(reading: VehicleReading, data: bytes) -> Step:
    """The machine's view of ``reading``; ``data`` is the record's bytes (its key)."""
    return Step(
        t_ms=reading.event_time_ms,
        key=record_key(data),
        arrival_ms=reading.position.arrival_ms,
        speed=reading.speed,
        located=reading.location is not None,
        battery_level=_number(reading.signals.get("batteryLevel")) is not None,
    )


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


@dataclass(slots=True)
class Trip:
    """An open trip: its span and live count only. Aggregates are computed at archive time from the
    trail (``processors.archive``), so the machine carries no running figures."""

    trip_id: str
    status: TripStatus
    start_time_ms: int
    last_time_ms: int
    """Event time of the last record the trip consumed (its end, unless it is ENDING)."""
    breadcrumb_count: int = 0
    """Located records of the trip's span so far (live; the archive counts its own rows): not those
    recorded while waiting out the gap, which join the trip only if it resumes."""
    waiting_breadcrumbs: int = 0
    """Located records after the stop, while ENDING: added to the count if the trip resumes, dropped if
    the gap expires (the archive ends at the stop)."""
    gap_start_ms: int | None = None
    """The stop: event time of the record that began ENDING (the trip's end if the gap expires)."""
    segments: int = 0
    """Sealed segments (staged in S3); the trail after them is the live tail."""
    sealed_through_ms: int | None = None
    sealed_at_ms: int | None = None
    """R of the last seal: a record of a sealed span arriving after it missed its segment (counted)."""
    tail_breadcrumbs: int = 0

    @property
    def end_time_ms(self) -> int:
        return self.gap_start_ms if self.gap_start_ms is not None else self.last_time_ms


@dataclass(frozen=True, slots=True)
class CompletedTrip:
    """Everything the archive needs (no aggregates: ``processors.archive`` computes them from the trail).
    Stored in the trip-state outbox until the archive is written."""

    pseudo_vin: str
    trip_id: str
    start_time_ms: int
    end_time_ms: int
    end_reason: EndReason
    completion_ms: int
    """R: the archive holds the crumbs that arrived by R (and were unexpired at R). A gap completion: the
    stream clock when the machine consumed the record that completed it (``completion_point``); an orphan
    completion: the sweep's clock."""
    reports_battery_level: bool
    segments: int
    sealed_through_ms: int | None


@dataclass(frozen=True, slots=True)
class SegmentSeal:
    """Stage the trail ``[from_ms, to_ms]`` of a trip as segment ``index``: its raw crumbs that arrived by
    ``completion_ms`` (the stream clock when the machine consumed the record that sealed it)."""

    pseudo_vin: str
    trip_id: str
    index: int
    from_ms: int
    to_ms: int
    completion_ms: int


@dataclass(slots=True)
class VehicleTrips:
    """The whole per-vehicle machine state: what ``trip-state`` persists."""

    pseudo_vin: str
    high_water_ms: int | None = None
    high_water_key: bytes = NO_KEY
    """With ``high_water_ms``, the mark: the ``Step.order`` of the newest record that changed the state."""
    trip: Trip | None = None
    reports_battery_level: bool = False
    """The vehicle has sent ``batteryLevel`` in a trip: its trips' battery figures come from that signal
    only. Until then they come from ``soc`` (Tesla vehicles that send only the BMS state of charge)."""
    recent: list[tuple[int, int, int, int]] = field(default_factory=list)
    """The last ``RECENT_TRIPS`` completed trips' ``(start, end, completion)`` ms and the epoch second their
    id names (``trip_second``), oldest first: late-record accounting (``LateAfterArchive`` names the trip),
    kept in the idle vehicle's mark in ``vin-mapping``."""
    last_trip_second: int | None = None
    """Epoch second in the id of the vehicle's newest trip: a trip starting in that same second gets the
    next one (``trip_id``), so ids stay unique per vehicle."""


@dataclass(slots=True)
class TripEffects:
    """What applying records produced: to be written before the state that records them."""

    seals: list[SegmentSeal] = field(default_factory=list)
    completed: list[CompletedTrip] = field(default_factory=list)
    changed: bool = False
    """The persisted state must be rewritten (a trip moved). IDLE high-water marks need no write:
    re-applying an idle record changes nothing."""


RECENT_TRIPS = 4


def trip_second(start_ms: int, previous_second: int | None = None) -> int:
    """The epoch second a trip's id names: its start second, bumped past the previous trip's id second
    when it starts within it (two trips of one vehicle never share an id)."""
    second = start_ms // 1000
    if previous_second is not None and second <= previous_second:
        return previous_second + 1
    return second


def trip_id(pseudo_vin: str, start_ms: int, previous_second: int | None = None) -> str:
    """``trip_{YYYYMMDD_HHMMSS}_{pseudoVin}``: deterministic, unique (the whole pseudoVin, and the second
    bumped by ``trip_second``), and it names the vehicle and day, so a lookup needs no index query."""
    moment = datetime.fromtimestamp(trip_second(start_ms, previous_second), UTC)
    return f"trip_{moment:%Y%m%d_%H%M%S}_{pseudo_vin}"


def remember_completed(state: VehicleTrips, trip: CompletedTrip) -> None:
    """Keep ``trip`` among the vehicle's ``recent`` completed trips (the last ``RECENT_TRIPS``)."""
    recent = (
        trip.start_time_ms,
        trip.end_time_ms,
        trip.completion_ms,
        trip_id_second(trip.trip_id, trip.start_time_ms),
    )
    state.recent = [*state.recent, recent][-RECENT_TRIPS:]


def trip_id_second(trip_id_text: str, start_ms: int) -> int:
    """The epoch second a trip id (``trip_{YYYYMMDD_HHMMSS}_{pseudoVin}``) names, bump included; the start
    second for an id of another shape (none is written; tests make some up)."""
    try:
        moment = datetime.strptime(trip_id_text[5:20], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return start_ms // 1000
    return int(moment.timestamp())


def recent_trip(pseudo_vin: str, recent: tuple[int, int, int, int]) -> str:
    """The id of a ``recent`` completed trip."""
    return trip_id(pseudo_vin, recent[3] * 1000)


def completion_point(step: Step, clock_ms: int | None) -> int:
    """R of a completion or seal made on consuming ``step``: the stream clock then (every record of the span
    displaced within the allowed lateness has arrived by it), never before the step's own arrival or event
    time (a crumb's arrival is never before its event time: a vehicle clock ahead of the stream's)."""
    return max(step.arrival_ms, step.t_ms, clock_ms or 0)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def consumed(state: VehicleTrips, step: Step) -> bool:
    """``step`` is at or below the vehicle's mark: consumed already, or late."""
    mark = state.high_water_ms
    return mark is not None and step.order <= (mark, state.high_water_key)


def complete(
    vehicle: str, state: VehicleTrips, trip: Trip, reason: EndReason, completion_ms: int
) -> CompletedTrip:
    """Close ``trip``: at its stop if it was ending, else at its last record."""
    return CompletedTrip(
        pseudo_vin=vehicle,
        trip_id=trip.trip_id,
        start_time_ms=trip.start_time_ms,
        end_time_ms=trip.end_time_ms,
        end_reason=reason,
        completion_ms=completion_ms,
        reports_battery_level=state.reports_battery_level,
        segments=trip.segments,
        sealed_through_ms=trip.sealed_through_ms,
    )


class TripStateMachine:
    """The trip rules of the module docstring, applied one reading at a time to a vehicle's
    ``VehicleTrips`` (IDLE -> ACTIVE -> ENDING -> IDLE), emitting segment seals and completed trips into
    ``TripEffects``. The trail is not its business: every accepted record is a crumb whatever the machine
    does with it (``processors.trail``).

    Guarantees: pure and event-time driven; the resulting state is a function of the stream, not of how it
    was batched or how often it was redelivered, provided each vehicle's records are consumed in event-time
    order (``processors.settle``): the high-water mark skips what was already consumed. It holds no state
    of its own: the caller owns every ``VehicleTrips``.
    """

    def __init__(self, thresholds: TripThresholds | None = None) -> None:
        self.thresholds = thresholds or TripThresholds()

    def apply(
        self, state: VehicleTrips, step: Step, effects: TripEffects, clock_ms: int | None = None
    ) -> None:
        """Apply one record in place, appending what it produced to ``effects``. ``clock_ms`` is the stream
        clock at consumption: the completion point of what it completes or seals (``completion_point``)."""
        if consumed(state, step):
            return
        t = step.t_ms
        limits = self.thresholds
        trip = state.trip
        speed = step.speed

        if trip is not None and trip.status is TripStatus.ENDING:
            assert trip.gap_start_ms is not None
            if t >= trip.gap_start_ms + limits.gap_ms:
                completion = completion_point(step, clock_ms)
                effects.completed.append(complete(state.pseudo_vin, state, trip, EndReason.GAP, completion))
                remember_completed(state, effects.completed[-1])
                state.trip = trip = None
                state.high_water_ms, state.high_water_key = step.order
                effects.changed = True

        if trip is None and (speed is None or speed <= limits.start_speed_mph):
            # An idle record changes nothing, so it does not move the mark either: the mark
            # is then the same whether or not the state was persisted since (replay-exact).
            return
        if not state.reports_battery_level and step.battery_level:
            # Learned only from a record that moves the machine, so it is persisted with that move:
            # learned from an idle record, a restart would forget it and the same stream would give
            # other figures (and a vehicle that never drove would need a trip-state item).
            state.reports_battery_level = True
        if trip is None:
            state.last_trip_second = trip_second(t, state.last_trip_second)
            trip = state.trip = Trip(
                trip_id=trip_id(state.pseudo_vin, state.last_trip_second * 1000),
                status=TripStatus.ACTIVE,
                start_time_ms=t,
                last_time_ms=t,
            )

        state.high_water_ms, state.high_water_key = step.order
        effects.changed = True
        self._include(state.pseudo_vin, trip, step, effects, clock_ms)

        if trip.status is TripStatus.ACTIVE and speed is not None and speed <= limits.end_speed_mph:
            trip.status = TripStatus.ENDING
            trip.gap_start_ms = t
        elif trip.status is TripStatus.ENDING and speed is not None and speed > limits.start_speed_mph:
            trip.status = TripStatus.ACTIVE
            trip.gap_start_ms = None
            trip.breadcrumb_count += trip.waiting_breadcrumbs
            trip.waiting_breadcrumbs = 0

    def _include(
        self, vehicle: str, trip: Trip, step: Step, effects: TripEffects, clock_ms: int | None
    ) -> None:
        t = step.t_ms
        trip.last_time_ms = t
        if not step.located:
            return
        if trip.gap_start_ms is not None and t > trip.gap_start_ms:
            trip.waiting_breadcrumbs += 1
        else:
            trip.breadcrumb_count += 1
        trip.tail_breadcrumbs += 1
        since = trip.start_time_ms if trip.sealed_through_ms is None else trip.sealed_through_ms + 1
        if (
            trip.tail_breadcrumbs >= self.thresholds.segment_breadcrumbs
            or t - since >= self.thresholds.segment_max_ms
        ):
            sealed_at = completion_point(step, clock_ms)
            effects.seals.append(SegmentSeal(vehicle, trip.trip_id, trip.segments, since, t, sealed_at))
            trip.segments += 1
            trip.sealed_through_ms = t
            trip.sealed_at_ms = sealed_at
            trip.tail_breadcrumbs = 0


@dataclass(slots=True)
class VehicleTripPlan:
    """One vehicle's trip writes, in the order they must happen."""

    pseudo_vin: str
    seals: list[SegmentSeal]
    outbox: list[CompletedTrip]
    """Completed trips to archive: left over in the stored outbox, then those completed since."""
    new_completions: int
    fields: dict[str, Any]
    """The ``trip-state`` item's fields: the live view and the exact machine (``trip_items.item_fields``),
    all but the version, the outbox and the sweep index's keys."""
    open: bool
    """The item stays: a trip is open (live or exact) or records are held for the machine; else the vehicle
    closes to its mark."""
    expected_last_update: str | None
    """Version of the stored item this plan builds on (None: there is none)."""
    on_time: list[CompletedTrip] = field(default_factory=list)
    """Trips the live view completed whose exact completion is still to come: their on-time (provisional)
    archives, written before the item that stops showing them."""
