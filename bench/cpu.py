"""CPU path, no I/O: record bytes -> pseudonymized, planned -> the write requests' payloads, on one core.

Ours: ``decode_batch`` (decode, pseudonymize, coalesce) and trip planning per batch window, then the
payloads the executor would send (one vehicle-state update per vehicle, breadcrumb items, trip-state
items). The naive peer: per record, ``json.loads`` + pydantic model + HMAC + its items, with the
trip-state it would have read back from DynamoDB (kept in a dict, deserialized per record as a
``GetItem`` answer would be). Timed as process CPU time (other load on the machine does not count),
best of ``repeats``, with the input moved out of the garbage collector's way (``gc.freeze``) for both.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.naive import NaivePlanner
from bench.workload import Fleet, entries, kinesis_records, windows
from processors.batch import TripPlanner, decode_batch
from processors.decode import Decoder
from processors.pseudonymize import Pseudonymizer
from processors.trail import chunks, remainder_of
from processors.trail import update_request as trail_request
from processors.trip_items import next_last_update
from processors.trips import TripStateMachine
from processors.vehicle_state import update_request
from schemas.dynamo import Item, to_item
from schemas.items import TripStateItem
from schemas.records import KinesisRecord

KEY = b"bench-key"


@dataclass(frozen=True)
class CpuResult:
    records: int
    batch_seconds: float
    ours_us: dict[str, float]
    """Microseconds per record: decode (+pseudonymize, coalesce), trips, serialize, total."""
    naive_us: float

    @property
    def ours_per_second(self) -> float:
        return 1e6 / self.ours_us["total"]

    @property
    def naive_per_second(self) -> float:
        return 1e6 / self.naive_us


def ours(batches: Sequence[Sequence[KinesisRecord]]) -> dict[str, float]:
    """CPU seconds per stage over all batches."""
    decoder, pseudonymizer = Decoder(), Pseudonymizer(KEY)
    planner = TripPlanner(TripStateMachine())
    clock = time.process_time
    spent = {"decode": 0.0, "trips": 0.0, "serialize": 0.0}
    for batch in batches:
        started = clock()
        plan = decode_batch(batch, decoder, pseudonymizer)
        decoded = clock()
        groups = plan.by_vehicle()
        for pseudo_vin in planner.unknown(groups):
            planner.adopt(pseudo_vin, None)  # as if trip-state had no item yet
        for pseudo_vin, readings in groups.items():
            plan.trips.append(planner.plan(pseudo_vin, readings))
        planned = clock()
        requests: list[Any] = [update_request("vehicle-state", u, None) for u in plan.vehicle_states]
        for merge in plan.trail:
            requests += [
                trail_request("live-breadcrumbs", merge.pseudo_vin, merge.bucket, c)
                for c in chunks(remainder_of(merge))
            ]
        for trip in plan.trips:
            if trip.write:
                version = next_last_update(trip.expected_last_update)
                item = TripStateItem(**trip.state, lastUpdate=version, closing=[])
                requests.append(to_item(item.model_dump(exclude_none=True, exclude={"closing"})))
                planner.committed(trip.pseudo_vin, version)
        serialized = clock()
        spent["decode"] += decoded - started
        spent["trips"] += planned - decoded
        spent["serialize"] += serialized - planned
    return spent


def naive(records: Sequence[KinesisRecord]) -> float:
    """CPU seconds for the naive peer's per-record path."""
    planner = NaivePlanner(KEY, TripStateMachine())
    trip_items: dict[str, Item] = {}  # stands in for the GetItem answers
    started = time.process_time()
    for record in records:
        decoded, pseudo_vin = planner.decode(record.data)
        writes = planner.plan(decoded, pseudo_vin, trip_items.get(pseudo_vin), record.position)
        if writes.trip_state is not None:
            trip_items[pseudo_vin] = writes.trip_state
    return time.process_time() - started


def _best(repeats: int, run: Callable[[], Any], total: Callable[[Any], float]) -> Any:
    gc.collect()
    gc.freeze()  # the input is the daemon's, not garbage the path makes
    try:
        return min((run() for _ in range(repeats)), key=total)
    finally:
        gc.unfreeze()


def measure(fleet: Fleet, batch_seconds: float, repeats: int = 3) -> CpuResult:
    records = kinesis_records(entries(fleet.stream()))
    batches = list(windows(records, fleet.vehicles, batch_seconds))
    spent = _best(repeats, lambda: ours(batches), lambda s: sum(s.values()))
    naive_seconds = _best(repeats, lambda: naive(records), float)
    n = len(records)
    ours_us = {stage: seconds * 1e6 / n for stage, seconds in spent.items()}
    ours_us["total"] = sum(ours_us.values())
    return CpuResult(n, batch_seconds, ours_us, naive_seconds * 1e6 / n)
