"""CPU path, no I/O: record bytes -> pseudonymized, planned -> the write requests' payloads, on one core.

Ours, as ``worker.pipeline.Pipeline`` does it today: ``decode_batch`` (decode, pseudonymize, bound,
coalesce, pack the trail), the settle buffer and the trip machines (``TripPlanner.receive``), the
freshness buffer (``VehicleStateBuffer``) and the trail buffer (``TrailBuffer``), then the payloads of
what a flush takes at each poll (``take_due``, shipped budgets and lead): the ``vehicle-state``
UpdateItems, the trail bucket UpdateItems, the trip-state items of due plans; everything left is taken
at the end (the checkpoint flush). The batches are ``batch_seconds`` of the fleet, received in real
time (the clock is the batch's last arrival + one poll). The naive peer: per record, ``json.loads`` +
pydantic model + HMAC + its items, with the trip-state it would have read back from DynamoDB (kept in
a dict, deserialized per record as a ``GetItem`` answer would be). Timed as process CPU time (other load
on the machine does not count), best of ``repeats``, with the input moved out of the garbage collector's
way (``gc.freeze``) for both.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.naive import NaivePlanner
from bench.workload import Fleet, entries, kinesis_records, windows
from processors.batch import decode_batch
from processors.decode import Decoder
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from processors.trail import TRAIL_BUCKET_SECONDS, BucketMerge, chunks, remainder_of
from processors.trip_items import next_last_update
from processors.trip_planner import TripPlanner
from processors.trips import TripStateMachine, VehicleTripPlan
from schemas.dynamo import Item, to_item
from schemas.items import TripStateItem
from schemas.records import KinesisRecord
from worker.config import Settings
from worker.freshness import PendingState, TrailBuffer, VehicleStateBuffer
from worker.stores.dynamo_trail import update_request as trail_request
from worker.stores.dynamo_vehicle_state import update_request

KEY = b"bench-key"


@dataclass(frozen=True)
class CpuResult:
    records: int
    batch_seconds: float
    ours_us: dict[str, float]
    """Microseconds per record: decode (+pseudonymize, coalesce, pack), trips (settle + machine),
    buffers (freshness + trail), serialize (request payloads), total."""
    naive_us: float

    @property
    def ours_per_second(self) -> float:
        return 1e6 / self.ours_us["total"]

    @property
    def naive_per_second(self) -> float:
        return 1e6 / self.naive_us


def _payloads(
    states: Sequence[PendingState], trail: Sequence[BucketMerge], trips: Sequence[VehicleTripPlan]
) -> list[Any]:
    requests: list[Any] = [update_request("vehicle-state", p.update, None) for p in states]
    for merge in trail:
        requests += [
            trail_request("live-breadcrumbs", merge.pseudo_vin, merge.bucket, c)
            for c in chunks(remainder_of(merge))
        ]
    for trip in trips:
        if trip.open:
            version = next_last_update(trip.expected_last_update)
            item = TripStateItem(**trip.fields, lastUpdate=version)
            requests.append(to_item(item.model_dump(exclude_none=True)))
    return requests


def ours(batches: Sequence[Sequence[KinesisRecord]]) -> dict[str, float]:
    """CPU seconds per stage over all batches, through today's buffers at the shipped settings."""
    settings = Settings()
    decoder, pseudonymizer = Decoder(), Pseudonymizer(KEY)
    planner = TripPlanner(TripStateMachine(), settings.trip_lateness_ms, settings.trip_progress_ms)
    poll, lead = settings.kcl_idle_time_between_reads_millis, settings.state_flush_lead_ms
    states = VehicleStateBuffer(settings.state_max_delay_ms, lead)
    trail = TrailBuffer(TRAIL_BUCKET_SECONDS, settings.trail_max_delay_ms, lead)
    clock = time.process_time
    spent = {"decode": 0.0, "trips": 0.0, "buffers": 0.0, "serialize": 0.0}

    def flush(now_ms: int, everything: bool) -> None:
        started = clock()
        due = planner.due(now_ms, everything=everything)
        for plan in due:
            # The version is a time (``lastUpdate``): the vehicle's next write builds on it. Live trips are
            # written within a poll now, so a vehicle is written more than once in the run.
            planner.committed(plan.pseudo_vin, format_time(now_ms), now_ms)
        taken = states.due(now_ms, everything=everything)
        merges = trail.due(now_ms, everything=everything)
        buffered = clock()
        _payloads(taken, merges, due)
        spent["buffers"] += buffered - started
        spent["serialize"] += clock() - buffered

    now_ms = 0
    for batch in batches:
        now_ms = batch[-1].position.arrival_ms + poll if batch else now_ms + poll
        started = clock()
        plan = decode_batch(batch, decoder, pseudonymizer)
        decoded = clock()
        for pseudo_vin in planner.unknown(plan.sightings):
            planner.adopt(pseudo_vin, None)  # as if trip-state had no item yet
        readings = {reading.position: reading for reading in plan.readings}
        for record in batch:
            reading = readings.get(record.position)
            if reading is not None:
                planner.add(reading, record, now_ms)
            else:
                planner.passed(record.position)
        planned = clock()
        for record in batch:
            reading = readings.get(record.position)
            if reading is not None:
                states.add(reading, record, now_ms)
                trail.add(reading, record, now_ms)
        spent["decode"] += decoded - started
        spent["trips"] += planned - decoded
        spent["buffers"] += clock() - planned
        flush(now_ms, everything=False)
    flush(now_ms, everything=True)
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
