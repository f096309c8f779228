"""Settled, event-ordered input for the trip machine (issue 17; design: docs/proposals/write-path.md §3.2).

The trip machine decides boundaries by the order it sees a vehicle's records in. Fed in arrival order its
output depends on how the stream interleaved; fed in event-time order it is a function of the record set.
So a record does not reach the machine when it arrives: it waits in a ``SettleBuffer`` until no earlier
record of its vehicle can still arrive, then the machine consumes it in ``(t, record bytes)`` order.

**The settle rule.** With ``D = settle_ms`` (``FLEET_TRIP_SETTLE_SECONDS``), a buffered input ``x`` of
vehicle ``V`` is settled when

- ``x.t + D < max t received for V`` (event-time rule: V already sent something D later), or
- ``x.a + D < clock`` (arrival rule: the shard's stream clock, the max arrival received, is D past it).

When some input of V settles, every buffered input of V with ``t <= `` the greatest settled ``t`` is handed
over with it, so consumption is monotone in ``t`` and inputs of equal ``t`` are consumed together. Under the
displacement bound "a record of V arrives at most D after its event time, and before any record of V more
than D later in event time", every record earlier than a settled one has arrived by then: the machine sees
V's records in exact event order.

**The high-water mark is then exact** (``applied_through`` is gone): consumption is monotone in ``t``, so
an input with ``t <= hwm`` on arrival was consumed already (a redelivery) or was displaced beyond the bound
(late-for-machine). The caller checks that *before* ``add`` and never buffers such an input.

**Watermark.** ``oldest()`` is the stream position of the oldest input still buffered: a checkpoint must
stay before it, so a restart redelivers everything the machine has not consumed yet.

Pure: no clock of its own, no I/O. Clock updates and the settle check run per record in stream order
(``add`` then ``advance``), never once per batch, so what is late is a function of the stream.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.records import StreamPosition

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class MachineInput(Generic[V]):
    """One record as the settle buffer sees it: event time, arrival, the tie-break bytes, its position
    (for the checkpoint watermark) and what the machine consumes (``value``)."""

    t_ms: int
    a_ms: int
    key: bytes
    """The record's bytes: orders inputs of equal event time the same on every stream order."""
    position: StreamPosition
    value: V
    previous: StreamPosition | None = None
    """The position received just before this one: where a checkpoint may go while this is unsettled."""


@dataclass(slots=True)
class _Entry(Generic[V]):
    input: MachineInput[V]
    serial: int
    consumed: bool = False

    def order(self) -> tuple[int, bytes, int]:
        return (self.input.t_ms, self.input.key, self.serial)


@dataclass(slots=True)
class _Vehicle(Generic[V]):
    by_t: list[tuple[tuple[int, bytes, int], _Entry[V]]] = field(default_factory=list)
    max_t: int | None = None


def position_key(position: StreamPosition) -> tuple[int, str, int]:
    """Stream order within a shard: sequence numbers are decimal strings without leading zeros."""
    return (len(position.sequence_number), position.sequence_number, position.sub_sequence_number)


class SettleBuffer(Generic[V]):
    """One shard's unsettled machine inputs, per vehicle (see the module docstring)."""

    def __init__(self, settle_ms: int) -> None:
        self.settle_ms = settle_ms
        self.clock_ms: int | None = None
        """The shard's stream clock: max arrival received (or ``now - 1 s`` on a caught-up empty poll)."""
        self._vehicles: dict[str, _Vehicle[V]] = {}
        self._by_arrival: list[tuple[int, int, str, _Entry[V]]] = []
        self._in_order: deque[_Entry[V]] = deque()
        self._serial = itertools.count()
        self._size = 0
        self._ready: dict[str, list[_Entry[V]]] = {}
        """Settled by the event-time rule when added, handed out by the next ``advance``."""

    def __len__(self) -> int:
        return self._size

    def add(self, pseudo_vin: str, item: MachineInput[V]) -> None:
        """Buffer ``item`` (the caller has checked it is above the vehicle's high-water mark) and move the
        stream clock to its arrival. Inputs are added in stream order."""
        entry = _Entry(item, next(self._serial))
        vehicle = self._vehicles.setdefault(pseudo_vin, _Vehicle())
        heapq.heappush(vehicle.by_t, (entry.order(), entry))
        vehicle.max_t = item.t_ms if vehicle.max_t is None else max(vehicle.max_t, item.t_ms)
        heapq.heappush(self._by_arrival, (item.a_ms, entry.serial, pseudo_vin, entry))
        self._in_order.append(entry)
        self._size += 1
        self.observe(item.a_ms)
        # Event-time rule: only this vehicle's newest t moved, so only its inputs can settle by it.
        limit = vehicle.max_t - self.settle_ms
        if vehicle.by_t[0][0][0] < limit:
            self._ready.setdefault(pseudo_vin, []).extend(self._take(pseudo_vin, limit - 1))

    def observe(self, clock_ms: int) -> None:
        """Move the stream clock forward (never back)."""
        self.clock_ms = clock_ms if self.clock_ms is None else max(self.clock_ms, clock_ms)

    def advance(self, clock_ms: int | None = None) -> dict[str, list[MachineInput[V]]]:
        """Settled inputs per vehicle, each list in ``(t, record bytes)`` order, removed from the buffer.
        ``clock_ms`` moves the stream clock first (an empty, caught-up poll: ``now - 1 s``)."""
        if clock_ms is not None:
            self.observe(clock_ms)
        through: dict[str, int] = {}
        if self.clock_ms is not None:
            arrivals = self._by_arrival
            while arrivals and arrivals[0][0] + self.settle_ms < self.clock_ms:
                _, _, pseudo_vin, entry = heapq.heappop(arrivals)
                if not entry.consumed:
                    through[pseudo_vin] = max(through.get(pseudo_vin, entry.input.t_ms), entry.input.t_ms)
        settled, self._ready = self._ready, {}
        for pseudo_vin, t_ms in through.items():
            settled.setdefault(pseudo_vin, []).extend(self._take(pseudo_vin, t_ms))
        handed = {pv: self._hand_out(entries) for pv, entries in settled.items() if entries}
        self._trim()
        return handed

    def drain(self, pseudo_vin: str) -> list[MachineInput[V]]:
        """Every buffered input of the vehicle, in order (SHARD_END, the orphan rule)."""
        drained = self._hand_out(self._ready.pop(pseudo_vin, []) + self._take(pseudo_vin, None))
        self._trim()
        return drained

    def drain_all(self) -> dict[str, list[MachineInput[V]]]:
        return {pv: inputs for pv in list(self._vehicles) if (inputs := self.drain(pv))}

    def oldest(self) -> MachineInput[V] | None:
        """The input still buffered that was received first (None: nothing is)."""
        self._trim()
        return self._in_order[0].input if self._in_order else None

    def vehicles(self) -> Iterable[str]:
        return [pv for pv, vehicle in self._vehicles.items() if vehicle.by_t]

    def _take(self, pseudo_vin: str, through_t: int | None) -> list[_Entry[V]]:
        """Remove and return the vehicle's entries with ``t <= through_t`` (None: all), in order."""
        vehicle = self._vehicles.get(pseudo_vin)
        if vehicle is None:
            return []
        taken: list[_Entry[V]] = []
        heap = vehicle.by_t
        while heap and (through_t is None or heap[0][1].input.t_ms <= through_t):
            taken.append(heapq.heappop(heap)[1])
        return taken

    def _hand_out(self, entries: list[_Entry[V]]) -> list[MachineInput[V]]:
        """Entries leaving the buffer for the machine, in ``(t, bytes)`` order. Only from here on do they
        stop holding the watermark back."""
        for entry in entries:
            entry.consumed = True
        self._size -= len(entries)
        return [e.input for e in sorted(entries, key=_Entry.order)]

    def _trim(self) -> None:
        while self._in_order and self._in_order[0].consumed:
            self._in_order.popleft()
        arrivals = self._by_arrival
        while arrivals and arrivals[0][3].consumed:
            heapq.heappop(arrivals)
