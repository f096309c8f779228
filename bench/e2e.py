"""The *live* scenario, end to end through the real KCL MultiLangDaemon at the shipped defaults.

Method. A fresh 1-shard stream; ``python -m worker run`` starts the daemon with ``Settings``' defaults (no
poll, buffer or checkpoint setting overridden; only the lease timings of ``bench.stage.BENCH_ENV`` are
shortened so that a lease is taken in seconds), and the daemon runs the peer's record processor
(``FLEET_KCL_EXECUTABLE``). Once the processor holds the lease, a live 1 Hz fleet of the chosen workload is
put into the stream as it happens (every record once it is due, PutRecords about 5 times a second):
``warmup`` seconds (first sightings: vault, trip-state loads), then ``seconds`` measured. Meanwhile a
sampler reads the event time of up to 100 vehicles from ``vehicle-state`` (one strongly consistent
BatchGetItem) ten times a second.

- A record is visible at the end of the first read showing its vehicle's event time at or past the
  record's; its lag is that time minus the time its PutRecords was sent (resolution: the 0.1 s sampling).
  Lag percentiles cover the measured records of the sampled vehicles; one never seen counts as infinitely
  late ("not seen").
- Cost: the local AWS's counts are zeroed when the first measured record is put and read once the sampled
  vehicles' last records are visible (or ``grace`` seconds after the last put): write units by table
  (billed on whole items), requests by service (the sampler's own reads taken out), per record put in that
  window. Writes still buffered at either edge shift between windows; over 45 s at 1 Hz that is a few
  per cent at most.
- CPU: utime + stime from ``/proc/<pid>/stat`` of the processor and of the daemon's JVM over the same
  window, per record; peak RSS of both (VmHWM).
- The trail: a ``TrailSampler`` reads five of the sampled vehicles' trails from ``live-breadcrumbs`` as the
  live map does (``DynamoTrail.read``) every 0.5 s; a record that is a crumb (it has a trail field, as the
  processor decodes it) is visible on the trail at the end of the first read that shows its crumb. Its
  reads are taken out of the request counts; the wait for the last crumbs comes after the cost window.
- Records/s: the share of the sampled vehicles' records made visible (a shard is applied in order, so
  the sample's share is everyone's) times all records put, over the time from the first record becoming
  visible to the last one (or to the end of sampling, for a peer left behind).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bench import measure
from bench.stage import BENCH_ENV, Stage, fresh_stage, peak_rss
from bench.workload import SEED, Fleet, Produced
from devtools.local_aws import LocalAws
from processors.decode import Decoder
from processors.pseudonymize import Pseudonymizer
from processors.signals import parse_time
from processors.trail import crumb_of
from schemas.records import StreamPosition
from worker.leases import lease_owners
from worker.stores.dynamo_trail import DynamoTrail

if TYPE_CHECKING:
    from mypy_boto3_kinesis.type_defs import PutRecordsRequestEntryTypeDef

REPO = Path(__file__).resolve().parent.parent
EXECUTABLES = {"ours": "", "naive": f"{sys.executable} -m bench.naive_processor"}
SAMPLE_EVERY = 0.1
"""Seconds from one sampler read's start to the next: a figure measured against a 2 s target can be late by
up to this much (a 0.25 s period put 12 % of the budget into the measurement)."""
WARMUP_SECONDS = 15.0
"""Put but not measured: the first sighting of a vehicle costs both peers extra (vault, trip-state)."""
GRACE_SECONDS = 20.0
IDLE_SECONDS = 5.0
"""After the last record: the processes' CPU on an empty shard, their fixed cost per shard."""
SAMPLED_VEHICLES = 100
PUT_EVERY = 0.2
TRAIL_SAMPLED_VEHICLES = 5
TRAIL_SAMPLE_EVERY = 0.5
"""The trail is read as the live map reads it: one strongly consistent Query per vehicle
(``DynamoTrail.read``), 5 vehicles every 0.5 s, which the local AWS serves without slowing what it
measures. Against a 15 s budget the 0.5 s resolution is 3 %."""


@dataclass
class E2eResult:
    peer: str
    workload: str
    offered_per_second: float
    records: int
    sampled_vehicles: int
    visible_share: float
    """Share of the sampled vehicles' records visible by the end of the run."""
    records_per_second: float
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None
    startup_s: float
    processor_cpu_seconds: float
    processor_cpu_ms_per_record: float
    """Over the whole run (warm-up included), per record it applied."""
    processor_peak_rss_bytes: int
    daemon_cpu_seconds: float = 0.0
    daemon_cpu_ms_per_record: float = 0.0
    """The daemon's JVM (all its threads) over the measured window, per record put in it."""
    daemon_peak_rss_bytes: int = 0
    daemon_idle_cpu_per_second: float = 0.0
    """CPU seconds per second of the JVM on an empty shard after the last record (fixed, per shard)."""
    daemon_cpu_ms_per_record_above_idle: float = 0.0
    """The JVM's CPU in the window less its idle rate over the window, per record (the per-record part)."""
    log_bytes_per_record: float = 0.0
    """What the task writes to its log stream (CloudWatch Logs ingestion: log lines and the EMF metric
    documents), daemon and processor, over the measured window, per record."""
    log_bytes_per_second: float = 0.0
    """The same per second of the window: one batch line and one EMF document per batch, whatever its size,
    so at a fixed poll interval this is a cost per shard, not per record."""
    log_bytes_per_second_idle: float = 0.0
    processor_idle_cpu_per_second: float = 0.0
    """CPU seconds per second of the processor on an empty shard (empty batches every poll)."""
    processor_cpu_ms_per_record_above_idle: float = 0.0
    measured_records: int = 0
    """Records put in the cost window (the denominator of the per-record figures below)."""
    measured_seconds: float = 0.0
    written: dict[str, dict[str, int]] | None = None
    requests: dict[str, int] | None = None
    per_record: dict[str, Any] | None = None
    vehicle_state_items: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    """The settings the daemon and processor ran with (the shipped defaults unless overridden)."""
    phase: str = "mixed"
    """The fleet's: ``mixed`` (the simulator's), every vehicle ``parked`` or every one ``driving``."""
    changing_share: float = 1.0
    """Share of the sampled measured records that change a value (the rest repeat: liveness only); the lag
    figures are over those."""
    trail_lag_p50_s: float | None = None
    """PutRecords -> the record's crumb on ``live-breadcrumbs`` (``TrailSampler``), over the measured records
    of ``trail_sampled_vehicles`` that are crumbs."""
    trail_lag_p99_s: float | None = None
    trail_lag_max_s: float | None = None
    trail_visible_share: float = 1.0
    trail_sampled_vehicles: int = 0

    def summary(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Put:
    pseudo_vin: str
    event_ms: int
    sent_at: float
    changes: bool = True
    """It changes a value of its vehicle's previous record: what B promises to show (a repeat moves only
    ``ts``, written at the liveness interval)."""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None when it falls on a record never seen (infinitely late)."""
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
    return None if math.isinf(value) else value


class Sampler(threading.Thread):
    """Reads the sampled vehicles' ``timestamp`` until stopped: (time the read returned, pseudoVin -> it).

    One strongly consistent BatchGetItem of at most 100 vehicles: a Scan of the whole table costs the
    local AWS ~0.1 s and would slow down what it measures.
    """

    def __init__(self, stage: Stage, pseudo_vins: list[str]) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self._stage = stage
        self._keys: list[Any] = [{"pseudoVin": {"S": pv}} for pv in pseudo_vins[:SAMPLED_VEHICLES]]
        self.scans: list[tuple[float, dict[str, int]]] = []
        self.reads = 0
        self.stop = threading.Event()

    def run(self) -> None:
        table = self._stage.settings.table_names["vehicle-state"]
        request: dict[str, Any] = {
            table: {
                "Keys": self._keys,
                "ConsistentRead": True,
                # The ISO ``timestamp`` of today's item, or the compact item's epoch-ms ``ts``.
                "ProjectionExpression": "pseudoVin, #iso, #ms",
                "ExpressionAttributeNames": {"#iso": "timestamp", "#ms": "ts"},
            }
        }
        while not self.stop.is_set():
            began = time.monotonic()
            items = self._stage.clients.dynamodb.batch_get_item(RequestItems=request)["Responses"][table]
            self.reads += 1
            state = {i["pseudoVin"]["S"]: t for i in items if (t := _event_ms(i)) is not None}
            self.scans.append((time.monotonic(), state))
            self.stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - began)))


class TrailSampler(threading.Thread):
    """Reads these vehicles' trails from ``live-breadcrumbs`` until stopped: when each crumb (vehicle,
    event time) was first seen, as the time the read that showed it returned."""

    def __init__(self, stage: Stage, pseudo_vins: list[str], from_ms: int) -> None:
        super().__init__(name="bench-trail-sampler", daemon=True)
        self._trail = DynamoTrail(stage.clients.dynamodb, stage.settings.table_names["live-breadcrumbs"])
        self._vehicles = pseudo_vins
        self._from_ms = from_ms
        self.first_seen: dict[tuple[str, int], float] = {}
        self.reads = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            for pseudo_vin in self._vehicles:
                crumbs = self._trail.read(pseudo_vin, self._from_ms, int(time.time() * 1000) + 60_000)
                self.reads += 1
                at = time.monotonic()
                for crumb in crumbs:
                    self.first_seen.setdefault((pseudo_vin, crumb.t_ms), at)
            self.stop.wait(max(0.0, TRAIL_SAMPLE_EVERY - (time.monotonic() - began)))


def crumb_lags(
    first_seen: dict[tuple[str, int], float], puts: Sequence[Put], crumbs: dict[tuple[str, int], int]
) -> list[float]:
    """Per put whose record is one of ``crumbs`` ((pseudoVin, event ms) -> the crumb's event time), the
    time from its PutRecords to the read that first showed the crumb (``first_seen``; inf: never)."""
    return [
        first_seen.get((put.pseudo_vin, crumbs[key]), math.inf) - put.sent_at
        for put in puts
        if (key := (put.pseudo_vin, put.event_ms)) in crumbs
    ]


def crumb_times(records: Sequence[Produced], pseudo: Pseudonymizer) -> dict[tuple[str, int], int]:
    """(pseudoVin, event ms) -> the event time of the record's crumb, for the records that are crumbs (a
    Tesla delta without a trail field is not): decoded as the processor decodes them."""
    decoder, position = Decoder(), StreamPosition("bench", "1", 0, 0)
    out: dict[tuple[str, int], int] = {}
    for record in records:
        reading = pseudo.reading(decoder.decode(record.data, record.due_ms), position)
        crumb = crumb_of(reading)
        if crumb is not None:
            out[(reading.pseudo_vin, record.event_ms)] = crumb.t_ms
    return out


def _event_ms(item: dict[str, Any]) -> int | None:
    if "ts" in item:
        return int(item["ts"]["N"])
    if "timestamp" in item:
        return parse_time(item["timestamp"]["S"])
    return None


def visibility(puts: list[Put], scans: list[tuple[float, dict[str, int]]]) -> list[float]:
    """Per put, the time it became visible (inf: never)."""
    by_vehicle: dict[str, list[int]] = defaultdict(list)
    for index, put in enumerate(puts):
        by_vehicle[put.pseudo_vin].append(index)
    seen = [math.inf] * len(puts)
    cursor: dict[str, int] = defaultdict(int)
    for at, state in scans:
        for pseudo_vin, timestamp in state.items():
            indices = by_vehicle.get(pseudo_vin, [])
            while (
                cursor[pseudo_vin] < len(indices) and puts[indices[cursor[pseudo_vin]]].event_ms <= timestamp
            ):
                seen[indices[cursor[pseudo_vin]]] = at
                cursor[pseudo_vin] += 1
    return seen


def _wait_for_processor(stage: Stage, launcher: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until the daemon holds the lease and has started the processor."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if launcher.poll() is not None:
            raise RuntimeError(f"the launcher exited with {launcher.returncode}")
        owners = lease_owners(stage.settings, stage.clients)
        if owners and all(owners.values()) and _processors(launcher):
            time.sleep(1.0)  # the processor answers initialize
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"no processor after {timeout:.0f}s")


def _processors(launcher: subprocess.Popen[bytes]) -> list[psutil.Process]:
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(launcher.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(child.cmdline())
                if "worker process" in cmdline or "bench.naive_processor" in cmdline:
                    found.append(child)
    return found


def replay_live(
    stage: Stage,
    records: list[Produced],
    pseudo: Pseudonymizer,
    until: Callable[[], bool] | None = None,
) -> list[Put]:
    """Put each record once it is due, about 5 PutRecords a second; stop early once ``until()`` holds
    (what the rest of the records were for has been seen)."""
    due = [r.due_ms for r in records]
    kinesis, stream = stage.clients.kinesis, stage.settings.stream_name
    puts: list[Put] = []
    while len(puts) < len(records) and not (until is not None and until()):
        ready = bisect.bisect_right(due, int(time.time() * 1000), lo=len(puts))
        for start in range(len(puts), ready, 500):
            chunk = records[start : min(ready, start + 500)]
            entries: list[PutRecordsRequestEntryTypeDef] = [
                {"Data": r.data, "PartitionKey": r.vin} for r in chunk
            ]
            sent_at = time.monotonic()
            if kinesis.put_records(StreamName=stream, Records=entries).get("FailedRecordCount"):
                raise RuntimeError("PutRecords failed for some records")
            puts += [Put(pseudo.pseudo_vin(r.vin), r.event_ms, sent_at, r.changes) for r in chunk]
        if len(puts) < len(records):
            time.sleep(PUT_EVERY)
    return puts


def _jvm(launcher: subprocess.Popen[bytes]) -> psutil.Process | None:
    """The daemon's JVM (``worker run`` starts it as a child)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(launcher.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "java":
                    return child
    return None


@dataclass
class Daemon:
    """``python -m worker run`` with its daemon holding the lease and the processor started."""

    processor: psutil.Process
    jvm: psutil.Process | None
    startup_s: float
    """Seconds until the daemon held the lease and had started the processor."""
    log: Path
    """Its stdout and stderr: the task's log stream."""


@contextlib.contextmanager
def worker_run(stage: Stage, path: Path, timeout_s: float) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m worker run`` against ``stage`` (its environment: the settings) for the block, logging to
    ``path``; then the launcher and every process it started are ended, by pid (a processor mid-batch
    outlives its daemon)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--timeout", str(timeout_s)],
            env=stage.environ,
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
        try:
            yield launcher
        finally:
            children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(launcher.pid).children(recursive=True)
            launcher.terminate()
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                launcher.kill()
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()


@contextlib.contextmanager
def daemon(stage: Stage, name: str, timeout_s: float) -> Iterator[Daemon]:
    """``worker_run`` until its processor is up; logs to ``bench/results/e2e-<name>.log``."""
    path = REPO / "bench" / "results" / f"e2e-{name}.log"
    with worker_run(stage, path, timeout_s) as launcher:
        startup = _wait_for_processor(stage, launcher, timeout=120)
        (processor,) = _processors(launcher)
        yield Daemon(processor, _jvm(launcher), startup, path)


def run(  # noqa: PLR0915 - one scenario, read top to bottom
    aws: LocalAws,
    peer: str,
    workload: str,
    vehicles: int,
    seconds: float,
    say: Callable[[str], None],
    overrides: dict[str, str] | None = None,
    warmup: float = WARMUP_SECONDS,
    grace: float = GRACE_SECONDS,
    transform: Callable[[list[Produced]], list[Produced]] | None = None,
    phase: str = "mixed",
) -> E2eResult:
    """``overrides``: settings (environment names) to run with instead of the shipped defaults; ``phase``:
    the fleet's (``bench.workload.Fleet.phase``: ``parked`` or ``driving`` holds every vehicle so)."""
    stage = fresh_stage(
        aws,
        shards=1,
        FLEET_KCL_EXECUTABLE=EXECUTABLES[peer],
        PYTHONPATH=str(REPO),
        **(overrides or {}),
    )
    pseudo = Pseudonymizer(BENCH_ENV["FLEET_PSEUDONYM_KEY"].encode())
    name = f"{peer}-{workload}" + ("" if phase == "mixed" else f"-{phase}")
    with daemon(stage, name, warmup + seconds + grace + 300) as running:
        startup, processor, jvm, log = running.startup_s, running.processor, running.jvm, running.log
        say(
            f"  {peer}/{workload}: processor up after {startup:.0f}s; "
            f"{vehicles} vehicles for {warmup + seconds:.0f}s"
        )
        cpu_start = measure.proc_cpu_seconds(processor.pid)
        start_ms = int(time.time() * 1000) + 2000
        fleet = Fleet(vehicles, (warmup + seconds) / 60, seed=SEED + 1, workload=workload, phase=phase)
        records = fleet.produced(start_ms)
        if transform is not None:
            records = transform(records)
        every_vehicle = list(dict.fromkeys(pseudo.pseudo_vin(r.vin) for r in records))
        sampled = set(every_vehicle[:: max(1, len(every_vehicle) // SAMPLED_VEHICLES)][:SAMPLED_VEHICLES])
        sampler = Sampler(stage, sorted(sampled))
        sampler.start()
        trail_vehicles = sorted(sampled)[:TRAIL_SAMPLED_VEHICLES]
        trail_sampler = TrailSampler(stage, trail_vehicles, start_ms - 1000)
        trail_sampler.start()
        crumbs = crumb_times([r for r in records if pseudo.pseudo_vin(r.vin) in trail_vehicles], pseudo)
        measured_from = start_ms + int(warmup * 1000)
        split = bisect.bisect_left([r.due_ms for r in records], measured_from)
        puts = replay_live(stage, records[:split], pseudo)
        # The cost window opens with the first measured record.
        while int(time.time() * 1000) < records[split].due_ms:
            time.sleep(0.01)
        aws.app.reset_counts()
        reads_before, window_start = sampler.reads, time.monotonic()
        trail_reads_before = trail_sampler.reads
        cpu_before = measure.proc_cpu_seconds(processor.pid)
        log_before = log.stat().st_size
        jvm_before = measure.proc_cpu_seconds(jvm.pid) if jvm else 0.0
        measured = replay_live(stage, records[split:], pseudo)
        puts += measured
        # Lag is measured on the records that change a value: a repeat shows nothing new but its ts,
        # which waits for the liveness interval (FLEET_LIVENESS_SECONDS) by design.
        watched = [put for put in measured if put.pseudo_vin in sampled and put.changes]
        last = {put.pseudo_vin: put for put in watched}
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if sampler.scans and not any(
                map(math.isinf, visibility(list(last.values()), sampler.scans[-1:]))
            ):
                break
            time.sleep(0.25)
        sampler_reads = Counter(
            {
                "dynamodb:BatchGetItem": sampler.reads - reads_before,
                "dynamodb:Query": trail_sampler.reads - trail_reads_before,
            }
        )
        cpu = measure.proc_cpu_seconds(processor.pid) - cpu_before
        jvm_cpu = measure.proc_cpu_seconds(jvm.pid) - jvm_before if jvm else 0.0
        written = measure.written_by_table(stage)
        requests = measure.requests_by_operation(stage, minus=sampler_reads)
        log_bytes = log.stat().st_size - log_before
        window = time.monotonic() - window_start
        # The trail comes later than vehicle-state (15 s buckets): wait for its last crumbs, outside the
        # cost window (which closes as vehicle-state shows the last records, for both tables alike).
        trail_watched = [put for put in measured if (put.pseudo_vin, put.event_ms) in crumbs]
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            map(math.isinf, crumb_lags(trail_sampler.first_seen, trail_watched, crumbs))
        ):
            time.sleep(0.25)
        for running_sampler in (sampler, trail_sampler):
            running_sampler.stop.set()
            running_sampler.join()
        # The fixed cost (polling an empty shard, lease renewals, a batch line per poll): CPU and log bytes
        # per second once every record is applied and the processes are warm.
        time.sleep(2.0)
        jvm_idle = measure.proc_cpu_seconds(jvm.pid) if jvm else 0.0
        processor_idle = measure.proc_cpu_seconds(processor.pid)
        log_idle = float(log.stat().st_size)
        idle_from = time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle_elapsed = time.monotonic() - idle_from
        jvm_idle = (measure.proc_cpu_seconds(jvm.pid) - jvm_idle if jvm else 0.0) / idle_elapsed
        processor_idle = (measure.proc_cpu_seconds(processor.pid) - processor_idle) / idle_elapsed
        log_idle = (log.stat().st_size - log_idle) / idle_elapsed
        total_cpu = measure.proc_cpu_seconds(processor.pid) - cpu_start
        rss = peak_rss(processor.pid)
        jvm_rss = peak_rss(jvm.pid) if jvm else 0
        sizes = measure.item_sizes(stage)
    # Throughput over everything put (warm-up included): the records made visible, estimated from the
    # sample (a shard is applied in order, so the sample's share is everyone's), over the time between
    # the first record becoming visible and the last (or the end of sampling, for a peer left behind).
    every = visibility([put for put in puts if put.pseudo_vin in sampled and put.changes], sampler.scans)
    done = [at for at in every if not math.isinf(at)]
    end = max(done) if len(done) == len(every) else sampler.scans[-1][0]
    rate = len(done) / len(every) * len(puts) / (end - min(done)) if len(done) > 1 else 0.0
    seen = visibility(watched, sampler.scans)
    lags = [at - put.sent_at for at, put in zip(seen, watched, strict=True)]
    repeats = [put for put in measured if put.pseudo_vin in sampled and not put.changes]
    trail_lags = crumb_lags(trail_sampler.first_seen, trail_watched, crumbs)
    n = len(measured)
    return E2eResult(
        peer=peer,
        workload=workload,
        offered_per_second=float(vehicles),
        records=n,
        sampled_vehicles=len(sampled),
        visible_share=sum(not math.isinf(at) for at in seen) / len(seen) if seen else 1.0,
        records_per_second=rate,
        lag_p50_s=percentile(lags, 0.50),
        lag_p99_s=percentile(lags, 0.99),
        lag_max_s=percentile(lags, 1.0),
        startup_s=startup,
        processor_cpu_seconds=total_cpu,
        processor_cpu_ms_per_record=cpu * 1000 / n,
        processor_peak_rss_bytes=rss,
        daemon_cpu_seconds=jvm_cpu,
        daemon_cpu_ms_per_record=jvm_cpu * 1000 / n,
        daemon_peak_rss_bytes=jvm_rss,
        daemon_idle_cpu_per_second=jvm_idle,
        daemon_cpu_ms_per_record_above_idle=max(0.0, jvm_cpu - jvm_idle * window) * 1000 / n,
        log_bytes_per_record=log_bytes / n,
        log_bytes_per_second=log_bytes / window,
        log_bytes_per_second_idle=log_idle,
        processor_idle_cpu_per_second=processor_idle,
        processor_cpu_ms_per_record_above_idle=max(0.0, cpu - processor_idle * window) * 1000 / n,
        measured_records=n,
        measured_seconds=window,
        written=written,
        requests=requests,
        per_record=measure.per_record(written, requests, n),
        vehicle_state_items=sizes,
        settings=settings_of(stage),
        phase=phase,
        changing_share=1 - len(repeats) / max(1, len(repeats) + len(watched)),
        trail_lag_p50_s=percentile(trail_lags, 0.50),
        trail_lag_p99_s=percentile(trail_lags, 0.99),
        trail_lag_max_s=percentile(trail_lags, 1.0),
        trail_visible_share=sum(not math.isinf(x) for x in trail_lags) / len(trail_lags)
        if trail_lags
        else 1.0,
        trail_sampled_vehicles=len(trail_vehicles),
    )


PHASES = ("parked", "driving")
PHASE_SECONDS = 120.0
"""The parked and driving runs' measured window, at least: a parked vehicle is written once a liveness
interval (60 s), so a 45 s window would hold one write per vehicle or none, depending on the phase."""


def phases(
    aws: LocalAws, workloads: Sequence[str], vehicles: int, seconds: float, say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """The live scenario (ours, shipped defaults) with every vehicle parked, then every one driving: the
    write units of parked and of driving records apart. ``phase`` -> workload -> ``E2eResult.summary``."""
    out: dict[str, dict[str, Any]] = {}
    seconds = max(seconds, PHASE_SECONDS)
    for phase in PHASES:
        for workload in workloads:
            say(f"live, all {phase}: {workload}, {vehicles} vehicles at 1 Hz ...")
            result = run(aws, "ours", workload, vehicles, seconds, say, phase=phase)
            out.setdefault(phase, {})[workload] = result.summary()
    return out


def settings_of(stage: Stage) -> dict[str, Any]:
    """The settings that set the live cost and freshness, as the processor read them."""
    names = (
        "kcl_idle_time_between_reads_millis",
        "kcl_max_records",
        "state_max_delay_ms",
        "liveness_seconds",
        "trail_max_delay_ms",
        "checkpoint_every_seconds",
        "checkpoint_every_records",
        "trip_gap_seconds",
        "trip_lateness_seconds",
        "trip_progress_seconds",
    )
    return {name: getattr(stage.settings, name) for name in names if hasattr(stage.settings, name)}
