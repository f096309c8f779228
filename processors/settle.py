"""Settled, event-ordered input for the exact trip machine (issue 21; design: docs/proposals/live-trips.md).

The trip machine decides boundaries by the order it sees a vehicle's records in. Fed in arrival order its
output depends on how the stream interleaved; fed in event-time order it is a function of the record set.
So a record does not reach the exact machine when it arrives: it waits in a ``SettleBuffer`` until no
earlier record of its vehicle can still arrive within the allowed lateness, then the machine consumes it in
``Step.order`` (event time, then the record's key). "Settled" means exactly that, and nothing else.

**The settle rule.** With ``L = lateness_ms`` (``FLEET_TRIP_LATENESS_SECONDS``), a buffered step ``x`` of
vehicle ``V`` is settled when

- ``x.t + L < max t received for V`` (event-time rule: V already sent something L later), or
- ``x.a + L < clock`` (arrival rule: the shard's stream clock, the max arrival received, is L past it).

When some step of V settles, every buffered step of V ordered at or before it is handed over with it, so
consumption is monotone in ``Step.order``. Under the bound "a record of V arrives at most L after its event
time, and before any record of V more than L later in event time", every record earlier than a settled one
has arrived by then: the machine sees V's records in exact event order, and the stream clock at hand-over
(``received_ms``) is a completion point every record of the span arrived by.

**Watermark.** ``oldest()`` is the oldest step still buffered that holds a stream position: a checkpoint
must stay before it, so a restart redelivers everything the machine has not consumed yet. A step without a
position (held for the machine in ``trip-state`` across a shard split) is durable already and holds
nothing back.

Pure: no clock of its own, no I/O. Clock updates and the settle check run per record in stream order
(``add`` then ``advance``), never once per batch, so what settles when is a function of the stream.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from processors.trips import Step
from schemas.records import StreamPosition


@dataclass(frozen=True, slots=True)
class Pending:
    """One step in the buffer: where it is in the stream (None: held across a split, durable elsewhere)
    and the position received just before it (where a checkpoint may go while it is unsettled)."""

    step: Step
    position: StreamPosition | None = None
    previous: StreamPosition | None = None


@dataclass(slots=True)
class _Entry:
    pending: Pending
    serial: int
    consumed: bool = False

    def order(self) -> tuple[int, bytes, int]:
        step = self.pending.step
        return (step.t_ms, step.key, self.serial)


@dataclass(slots=True)
class _Vehicle:
    by_order: list[tuple[tuple[int, bytes, int], _Entry]] = field(default_factory=list)
    newest: tuple[int, bytes] | None = None
    """The greatest ``Step.order`` added: the vehicle's newest event time, for the settle rule and the
    trip planner's live view."""


def position_key(position: StreamPosition) -> tuple[int, str, int]:
    """Stream order within a shard: sequence numbers are decimal strings without leading zeros."""
    return (len(position.sequence_number), position.sequence_number, position.sub_sequence_number)


class SettleBuffer:
    """One shard's unsettled steps, per vehicle (see the module docstring)."""

    def __init__(self, lateness_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self.clock_ms: int | None = None
        """The shard's stream clock: max arrival received (or ``now - 1 s`` on a caught-up empty poll)."""
        self.received_ms: int | None = None
        """The greatest arrival received: every record that arrived by it has been received (a caught-up
        poll's ``now - 1 s`` says nothing arrived since, so it is not moved by that). The completion point
        of what settles now."""
        self._vehicles: dict[str, _Vehicle] = {}
        self._by_arrival: list[tuple[int, int, str, _Entry]] = []
        self._in_order: deque[_Entry] = deque()
        self._serial = itertools.count()
        self._size = 0
        self._ready: dict[str, list[_Entry]] = {}
        """Settled by the event-time rule when added, handed out by the next ``advance``."""

    def __len__(self) -> int:
        return self._size

    def add(self, pseudo_vin: str, pending: Pending) -> None:
        """Buffer a step (the caller has checked it is not late) and move the stream clock to its arrival.
        Steps are added in stream order."""
        entry = _Entry(pending, next(self._serial))
        step = pending.step
        vehicle = self._vehicles.get(pseudo_vin)
        if vehicle is None:
            vehicle = self._vehicles[pseudo_vin] = _Vehicle()
        order = step.order
        heapq.heappush(vehicle.by_order, (entry.order(), entry))
        if vehicle.newest is None or order > vehicle.newest:
            vehicle.newest = order
        heapq.heappush(self._by_arrival, (step.arrival_ms, entry.serial, pseudo_vin, entry))
        if pending.position is not None:
            self._in_order.append(entry)
            self.observe(step.arrival_ms)
            self.received_ms = max(self.received_ms or step.arrival_ms, step.arrival_ms)
        self._size += 1
        # Event-time rule: only this vehicle's newest t moved, so only its steps can settle by it.
        limit = vehicle.newest[0] - self.lateness_ms
        if vehicle.by_order[0][0][0] < limit:
            self._ready.setdefault(pseudo_vin, []).extend(self._take(pseudo_vin, limit - 1))

    def observe(self, clock_ms: int) -> None:
        """Move the stream clock forward (never back)."""
        self.clock_ms = clock_ms if self.clock_ms is None else max(self.clock_ms, clock_ms)

    def advance(self, clock_ms: int | None = None) -> dict[str, list[Step]]:
        """Settled steps per vehicle, each list in ``Step.order``, removed from the buffer. ``clock_ms``
        moves the stream clock first (an empty, caught-up poll: ``now - 1 s``)."""
        if clock_ms is not None:
            self.observe(clock_ms)
        arrivals = self._by_arrival
        if not self._ready and (
            self.clock_ms is None or not arrivals or arrivals[0][0] + self.lateness_ms >= self.clock_ms
        ):
            return {}  # the common case, once per record: nothing settles
        through: dict[str, int] = {}
        if self.clock_ms is not None:
            while arrivals and arrivals[0][0] + self.lateness_ms < self.clock_ms:
                _, _, pseudo_vin, entry = heapq.heappop(arrivals)
                if not entry.consumed:
                    t = entry.pending.step.t_ms
                    through[pseudo_vin] = max(through.get(pseudo_vin, t), t)
        settled, self._ready = self._ready, {}
        for pseudo_vin, t_ms in through.items():
            settled.setdefault(pseudo_vin, []).extend(self._take(pseudo_vin, t_ms))
        handed = {pv: self._hand_out(entries) for pv, entries in settled.items() if entries}
        self._trim()
        return handed

    def newest(self, pseudo_vin: str) -> tuple[int, bytes] | None:
        """The greatest ``Step.order`` ever added for the vehicle (None: none)."""
        vehicle = self._vehicles.get(pseudo_vin)
        return vehicle.newest if vehicle is not None else None

    def pending(self, pseudo_vin: str) -> list[Pending]:
        """The vehicle's unsettled steps, in ``Step.order``, left in the buffer."""
        ready = self._ready.get(pseudo_vin, [])
        vehicle = self._vehicles.get(pseudo_vin)
        buffered = [entry for _, entry in vehicle.by_order] if vehicle else []
        return [e.pending for e in sorted(ready + buffered, key=_Entry.order)]

    def take(self, pseudo_vin: str) -> list[Pending]:
        """Remove every unsettled step of the vehicle, in order (a shard split hands them over)."""
        taken = self._ready.pop(pseudo_vin, []) + self._take(pseudo_vin, None)
        for entry in taken:
            entry.consumed = True
        self._size -= len(taken)
        self._trim()
        return [e.pending for e in sorted(taken, key=_Entry.order)]

    def oldest(self) -> Pending | None:
        """The step still buffered that was received first (None: nothing holds a position)."""
        self._trim()
        return self._in_order[0].pending if self._in_order else None

    def vehicles(self) -> list[str]:
        """Vehicles with unsettled steps."""
        return [pv for pv, v in self._vehicles.items() if v.by_order] + [
            pv for pv, ready in self._ready.items() if ready and not self._vehicles[pv].by_order
        ]

    def _take(self, pseudo_vin: str, through_t: int | None) -> list[_Entry]:
        """Remove and return the vehicle's entries with ``t <= through_t`` (None: all), in order."""
        vehicle = self._vehicles.get(pseudo_vin)
        if vehicle is None:
            return []
        taken: list[_Entry] = []
        heap = vehicle.by_order
        while heap and (through_t is None or heap[0][1].pending.step.t_ms <= through_t):
            taken.append(heapq.heappop(heap)[1])
        return taken

    def _hand_out(self, entries: list[_Entry]) -> list[Step]:
        """Entries leaving the buffer for the machine, in order. Only from here on do they stop holding
        the watermark back."""
        for entry in entries:
            entry.consumed = True
        self._size -= len(entries)
        return [e.pending.step for e in sorted(entries, key=_Entry.order)]

    def _trim(self) -> None:
        while self._in_order and self._in_order[0].consumed:
            self._in_order.popleft()
        arrivals = self._by_arrival
        while arrivals and arrivals[0][3].consumed:
            heapq.heappop(arrivals)
