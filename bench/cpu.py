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

``python -m bench.cpu``: ours on both workloads (native and Tesla-shaped) in one run, per stage;
``--profile`` adds where the time went (pyinstrument, the ``bench`` extra): the functions with the most
self time, with their self and total share of the run (``docs/perf/cpu-path.md``). ``--against DIR``
measures another checkout's shipped code (``processors``, ``schemas``, ``worker``: a ``git worktree`` of
the commit to compare with) with this bench, in rounds alternating with this checkout's, each in a
fresh process, so a before/after ratio comes from one run on one machine state.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.naive import NaivePlanner
from bench.workload import WORKLOADS, Fleet, entries, kinesis_records, windows
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


def _records(fleet: Fleet) -> list[KinesisRecord]:
    return kinesis_records(entries(fleet.produced()))


def ours_us(fleet: Fleet, batch_seconds: float, repeats: int = 3) -> dict[str, float]:
    """Ours alone on ``fleet``'s workload: microseconds per record by stage, and ``total``."""
    return _ours_us(_records(fleet), fleet.vehicles, batch_seconds, repeats)


def _ours_us(
    records: Sequence[KinesisRecord], vehicles: int, batch_seconds: float, repeats: int
) -> dict[str, float]:
    batches = list(windows(records, vehicles, batch_seconds))
    spent = _best(repeats, lambda: ours(batches), lambda s: sum(s.values()))
    us = {stage: seconds * 1e6 / len(records) for stage, seconds in spent.items()}
    us["total"] = sum(us.values())
    return us


def measure(fleet: Fleet, batch_seconds: float, repeats: int = 3) -> CpuResult:
    """Ours against the naive peer, which reads the native format only."""
    if fleet.workload != "native":
        raise ValueError("the naive peer reads the native workload only")
    records = _records(fleet)
    naive_us = _best(repeats, lambda: naive(records), float) * 1e6 / len(records)
    stages = _ours_us(records, fleet.vehicles, batch_seconds, repeats)
    return CpuResult(len(records), batch_seconds, stages, naive_us)


@dataclass(frozen=True, slots=True)
class Hotspot:
    function: str
    """``name (file:line)``, the file relative to the checkout when it is ours."""
    self_share: float
    total_share: float
    """Of the profiled run; a function on the stack more than once (recursion) counts once."""


def profile(fleet: Fleet, batch_seconds: float, top: int = 15) -> list[Hotspot]:
    """Where ``ours`` spends its time on ``fleet``'s workload: the ``top`` functions by self time.

    pyinstrument samples the stack every 0.1 ms (wall clock: run it on a quiet core); the decode and
    planning stages are all in one Python thread, so the shares are of the CPU path.
    """
    from pyinstrument import Profiler
    from pyinstrument.frame import Frame

    batches = list(windows(_records(fleet), fleet.vehicles, batch_seconds))
    profiler = Profiler(interval=0.0001)
    gc.collect()
    gc.freeze()
    try:
        profiler.start()
        ours(batches)
        profiler.stop()
    finally:
        gc.unfreeze()
    root = profiler.last_session.root_frame() if profiler.last_session else None
    if root is None:
        return []
    here = str(Path(__file__).resolve().parent.parent) + "/"
    self_time: dict[str, float] = {}
    total_time: dict[str, float] = {}

    def name(frame: Frame) -> str:
        path = (frame.file_path or "?").removeprefix(here)
        if "site-packages/" in path:
            path = path.split("site-packages/", 1)[1]
        return f"{frame.function} ({path}:{frame.line_no})"

    stack: list[tuple[Frame, frozenset[str]]] = [(root, frozenset())]
    while stack:
        frame, above = stack.pop()
        key = name(frame)
        # pyinstrument keeps a frame's self time in a synthetic ``[self]`` child.
        calls = [child for child in frame.children if not child.is_synthetic]
        self_time[key] = self_time.get(key, 0.0) + frame.time - sum(c.time for c in calls)
        if key not in above:
            total_time[key] = total_time.get(key, 0.0) + frame.time
        stack.extend((child, above | {key}) for child in calls)
    whole = root.time or 1.0
    ranked = sorted(self_time, key=self_time.__getitem__, reverse=True)[:top]
    return [Hotspot(key, self_time[key] / whole, total_time[key] / whole) for key in ranked]


HERE = Path(__file__).resolve().parent.parent
_RUN_AGAINST = """
import importlib.util, json, sys
checkout, bench_root, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [checkout]  # the shipped packages (and devtools) of the checkout measured
spec = importlib.util.spec_from_file_location(
    "bench", f"{bench_root}/bench/__init__.py", submodule_search_locations=[f"{bench_root}/bench"]
)
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)
import bench.cpu
sys.exit(bench.cpu.main(argv))
"""


def _stages_in(checkout: Path, args: argparse.Namespace, workload: str) -> dict[str, float]:
    """One round of ``ours_us`` in a fresh process running ``checkout``'s shipped code with this bench."""
    argv = [
        *("--vehicles", str(args.vehicles), "--minutes", str(args.minutes)),
        *("--batch-seconds", str(args.batch_seconds), "--repeats", "1", "--json", workload),
    ]
    env = {**os.environ, "PYTHONPATH": ""}
    command = [sys.executable, "-c", _RUN_AGAINST, str(checkout), str(HERE), *argv]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=checkout)
    stages: dict[str, float] = json.loads(out.stdout)
    return stages


def against(args: argparse.Namespace, base: Path) -> None:
    """Best of ``args.repeats`` alternating rounds (by total): ``base`` then this checkout, per workload."""
    stages = ("decode", "trips", "buffers", "serialize", "total")
    print(
        f"\n{base} (before) against {HERE} (after), best of {args.repeats} alternating rounds, us per record"
    )
    print(f"{'workload':<10}{'':<8}" + "".join(f"{s:>11}" for s in stages) + f"{'records/s':>12}")
    for workload in WORKLOADS:
        best: dict[Path, dict[str, float]] = {}
        for _ in range(args.repeats):
            for checkout in (base, HERE):
                got = _stages_in(checkout, args, workload)
                if checkout not in best or got["total"] < best[checkout]["total"]:
                    best[checkout] = got
        for label, checkout in (("before", base), ("after", HERE)):
            us = best[checkout]
            print(
                f"{workload:<10}{label:<8}"
                + "".join(f"{us[s]:>11.1f}" for s in stages)
                + f"{1e6 / us['total']:>12,.0f}"
            )
        print(f"{workload:<10}{'speed-up':<8}{best[base]['total'] / best[HERE]['total']:>54.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--batch-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also where the time went (pyinstrument)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per profile")
    parser.add_argument("--against", type=Path, help="a checkout to compare with (see the docstring)")
    parser.add_argument("--json", choices=WORKLOADS, help="print one workload's stages as JSON, only")
    args = parser.parse_args(argv)
    if args.json:
        fleet = Fleet(args.vehicles, args.minutes, workload=args.json)
        print(json.dumps(ours_us(fleet, args.batch_seconds, args.repeats)))
        return 0
    stages = ("decode", "trips", "buffers", "serialize", "total")
    print(f"CPU path, one core, {args.batch_seconds:g} s batches, best of {args.repeats} (us per record)")
    print(f"{'workload':<10}{'records':>9}" + "".join(f"{s:>11}" for s in stages) + f"{'records/s':>12}")
    fleets = [Fleet(args.vehicles, args.minutes, workload=workload) for workload in WORKLOADS]
    for fleet in fleets:
        us = ours_us(fleet, args.batch_seconds, args.repeats)
        print(
            f"{fleet.workload:<10}{fleet.records:>9,}"
            + "".join(f"{us[s]:>11.1f}" for s in stages)
            + f"{1e6 / us['total']:>12,.0f}"
        )
    if args.against:
        against(args, args.against.resolve())
    if args.profile:
        for fleet in fleets:
            print(f"\n{fleet.workload}: top {args.top} by self time (% of the profiled run)")
            print(f"{'self %':>7} {'total %':>8}  function")
            for spot in profile(fleet, args.batch_seconds, args.top):
                print(f"{spot.self_share:>7.1%} {spot.total_share:>8.1%}  {spot.function}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
