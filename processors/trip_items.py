"""Conversions between the trip machine's dataclasses and the stored ``trip-state`` item shapes. Pure: the
store itself is a port (``processors.ports.TripStore``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from processors.signals import format_time, parse_time
from processors.trips import NO_KEY, CompletedTrip, EndReason, Step, Trip, TripStatus, VehicleTrips
from schemas.items import CompletedTripItem, MachineItem, TripMarkItem, TripStateItem


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


def held_rows(steps: Iterable[Step]) -> list[list[Any]]:
    """Records held for the machine as ``MachineItem.held`` stores them."""
    return [[s.t_ms, s.key.hex(), s.arrival_ms, s.speed, s.located, s.battery_level] for s in steps]


def held_steps(rows: Iterable[list[Any]]) -> list[Step]:
    return [
        Step(int(t), bytes.fromhex(key), int(a), None if speed is None else float(speed), bool(loc), bool(bl))
        for t, key, a, speed, loc, bl in rows
    ]


def machine_item(state: VehicleTrips, held: Iterable[Step] = ()) -> MachineItem:
    trip = state.trip
    fields: dict[str, Any] = {
        "h": state.high_water_ms,
        "k": state.high_water_key.hex() if state.high_water_ms is not None else None,
        "b": state.reports_battery_level,
        "r": [list(r) for r in state.recent],
        "ts": state.last_trip_second,
        "held": held_rows(held),
    }
    if trip is not None:
        fields.update(
            s=trip.status.value,
            i=trip.trip_id,
            st=trip.start_time_ms,
            lt=trip.last_time_ms,
            n=trip.breadcrumb_count,
            w=trip.waiting_breadcrumbs,
            g=trip.gap_start_ms,
            sg=trip.segments,
            sl=trip.sealed_through_ms,
            sa=trip.sealed_at_ms,
            tb=trip.tail_breadcrumbs,
        )
    return MachineItem(**fields)


def live_fields(live: VehicleTrips) -> dict[str, Any]:
    """What a reader of ``trip-state`` sees: the live view's trip."""
    trip = live.trip
    if trip is None:
        return {"status": TripStatus.IDLE.value}
    return {
        "status": trip.status.value,
        "tripId": trip.trip_id,
        "startTime": format_time(trip.start_time_ms),
        # The trip's last event: while it waits out the gap, the stop (what an archive would end at).
        "lastEventTime": format_time(trip.end_time_ms),
        "breadcrumbCount": trip.breadcrumb_count,
        "gapStartTime": _time(trip.gap_start_ms),
    }


def item_fields(
    pseudo_vin: str,
    exact: VehicleTrips,
    live: VehicleTrips | None = None,
    held: Iterable[Step] = (),
    heard_ms: int | None = None,
) -> dict[str, Any]:
    """A ``TripStateItem``'s fields (all but ``lastUpdate``, ``closing`` and the sweep index's keys): the live
    view at the top (the exact machine's own when there is none), the exact machine in ``machine``."""
    fields = live_fields(live if live is not None else exact)
    fields.update(pseudoVin=pseudo_vin, machine=machine_item(exact, held), heardAt=heard_ms)
    return fields


def state_from_item(item: TripStateItem) -> tuple[VehicleTrips, list[Step]]:
    """The exact machine stored in ``item``, and the records held for it."""
    machine = item.machine if item.machine is not None else _machine_of_old(item)
    state = VehicleTrips(
        item.pseudoVin,
        machine.h,
        bytes.fromhex(machine.k) if machine.k else NO_KEY,
        reports_battery_level=machine.b,
        # An entry written before the id second was kept: the start second (right unless it was bumped).
        recent=[(r[0], r[1], r[2], r[3] if len(r) > 3 else r[0] // 1000) for r in machine.r],
        last_trip_second=machine.ts,
    )
    if machine.s != TripStatus.IDLE and machine.i is not None and machine.st is not None:
        state.trip = Trip(
            trip_id=machine.i,
            status=TripStatus(machine.s),
            start_time_ms=machine.st,
            last_time_ms=machine.lt if machine.lt is not None else machine.st,
            breadcrumb_count=machine.n,
            waiting_breadcrumbs=machine.w,
            gap_start_ms=machine.g,
            segments=machine.sg,
            sealed_through_ms=machine.sl,
            sealed_at_ms=machine.sa,
            tail_breadcrumbs=machine.tb,
        )
    return state, held_steps(machine.held)


def _machine_of_old(item: TripStateItem) -> MachineItem:
    """An item written before ``machine``: its top-level fields are the machine's."""
    return MachineItem(
        h=_ms(item.lastEventTime),
        s=item.status,
        i=item.tripId,
        st=_ms(item.startTime),
        lt=_ms(item.lastRecordTime or item.startTime),
        n=item.breadcrumbCount,
        g=_ms(item.gapStartTime),
        sg=item.segments or 0,
        sl=_ms(item.sealedThrough),
        tb=item.tailBreadcrumbs or 0,
        b=bool(item.reportsBatteryLevel),
        r=item.recent or [],
        ts=item.lastTripSecond,
    )


MARK_VERSION = ""
"""``lastUpdate`` of an item read from a mark: there is no trip-state item (the next write creates one)."""

SWEEP_SHARDS = 16
SWEEP_QUANTUM_SECONDS = 300


def mark_of(fields: dict[str, Any]) -> TripMarkItem | None:
    """The mark of an idle vehicle's exact machine (``item_fields``); None without a high-water mark."""
    machine: MachineItem = fields["machine"]
    if machine.h is None:
        return None
    return TripMarkItem(hwm=machine.h, hwk=machine.k, rbl=machine.b, recent=machine.r, ts=machine.ts)


def item_from_mark(pseudo_vin: str, mark: TripMarkItem) -> TripStateItem:
    """An idle vehicle's state as a ``TripStateItem`` whose version says no item is stored."""
    return TripStateItem(
        pseudoVin=pseudo_vin,
        status="IDLE",
        machine=MachineItem(h=mark.hwm, k=mark.hwk, b=mark.rbl, r=mark.recent, ts=mark.ts),
        lastUpdate=MARK_VERSION,
    )


def earliest_start(item: TripStateItem) -> int:
    """The earliest event time a new item speaks for (its trips, live and exact, and the records it holds):
    creating it is refused unless the vehicle's mark is older (a writer whose view predates an archival
    must not bring the archived trip back)."""
    starts = [parse_time(t.startTime) for t in item.outbox]
    if item.startTime is not None:
        starts.append(parse_time(item.startTime))
    if item.machine is not None:
        starts += [item.machine.st] if item.machine.st is not None else []
        starts += [int(row[0]) for row in item.machine.held]
    return min(starts, default=0)


def sweep_shard(pseudo_vin: str) -> int:
    return int(pseudo_vin[-2:], 16) % SWEEP_SHARDS


def idle_after(heard_ms: int) -> int:
    """The sweep index's sort key: epoch seconds of ``heard_ms``, rounded up to 300 s (a vehicle silent
    for ``idle`` since ``heard_ms`` has ``idleAfter <= heard + 300 s``: ``silent_until``)."""
    seconds = -(-heard_ms // 1000)
    return -(-seconds // SWEEP_QUANTUM_SECONDS) * SWEEP_QUANTUM_SECONDS


def silent_until(now_ms: int, idle_ms: int) -> int:
    """The greatest ``idleAfter`` an item silent for ``idle_ms`` at ``now_ms`` can have."""
    return (now_ms - idle_ms) // 1000 + SWEEP_QUANTUM_SECONDS


def next_last_update(previous: str | None, now_ms: int | None = None) -> str:
    """Wall clock, but strictly after ``previous``: it doubles as the item's version."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if previous is not None:
        now = max(now, parse_time(previous) + 1)
    return format_time(now)
