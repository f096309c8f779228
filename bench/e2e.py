"""End to end through the real KCL MultiLangDaemon: sustained records/s and PutRecords -> visibility lag.

Method. A fresh 1-shard stream; ``python -m worker run`` starts the daemon, which runs the peer's record
processor (``FLEET_KCL_EXECUTABLE``). Once the processor holds the lease, a live 1 Hz fleet is put into
the stream as it happens (every record once its event time has passed, PutRecords about 5 times a
second): ``warmup`` seconds, then ``seconds`` measured. Meanwhile a sampler reads the newest record time
(``ts``; the naive peer's ``timestamp``) of up to 50 of the vehicles from ``vehicle-state`` (strongly
consistent BatchGetItem) twice a second.

- A record is visible at the end of the first read showing its vehicle's newest record time at or past the
  record's; its lag is that time minus the time its PutRecords was sent. Lag percentiles cover the
  measured records of the sampled vehicles; one never seen counts as infinitely late ("not seen").
- Records/s: the share of the sampled vehicles' records made visible (a shard is applied in order, so
  the sample's share is everyone's) times all records put, over the time from the first record becoming
  visible to the last one (or to the end of sampling, for a peer left behind). For a peer that keeps up
  it is the offered rate.
- Sampling stops once the sampled vehicles' last records are visible, or ``grace`` seconds after the
  last put.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil

from bench.stage import BENCH_ENV, Stage, cpu_seconds, fresh_stage, peak_rss
from bench.workload import SEED
from devtools.local_aws import LocalAws
from devtools.simulate import simulate
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time, parse_time
from worker.leases import lease_owners

if TYPE_CHECKING:
    from mypy_boto3_kinesis.type_defs import PutRecordsRequestEntryTypeDef

REPO = Path(__file__).resolve().parent.parent
EXECUTABLES = {"ours": "", "naive": f"{sys.executable} -m bench.naive_processor"}
SAMPLE_EVERY = 0.5
WARMUP_SECONDS = 15.0
"""Put but not measured: the first sighting of a vehicle costs both peers extra (vault, trip-state)."""
GRACE_SECONDS = 20.0
SAMPLED_VEHICLES = 50
PUT_EVERY = 0.2


@dataclass
class E2eResult:
    peer: str
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

    def summary(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Put:
    pseudo_vin: str
    timestamp: str
    sent_at: float


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None when it falls on a record never seen (infinitely late)."""
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
    return None if math.isinf(value) else value


class Sampler(threading.Thread):
    """Reads the sampled vehicles' newest record time until stopped: (time the read returned, pseudoVin ->
    it, ISO-8601). Ours stores it as ``ts`` (epoch ms), the naive peer as ``timestamp`` (ISO-8601).

    One strongly consistent BatchGetItem of at most 100 vehicles: a Scan of the whole table costs the
    local AWS ~0.1 s and would slow down what it measures.
    """

    def __init__(self, stage: Stage, pseudo_vins: list[str]) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self._stage = stage
        self._keys: list[Any] = [{"pseudoVin": {"S": pv}} for pv in pseudo_vins[:SAMPLED_VEHICLES]]
        self.scans: list[tuple[float, dict[str, str]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        table = self._stage.settings.table_names["vehicle-state"]
        request: dict[str, Any] = {
            table: {
                "Keys": self._keys,
                "ConsistentRead": True,
                "ProjectionExpression": "pseudoVin, #ts, #timestamp",
                "ExpressionAttributeNames": {"#ts": "ts", "#timestamp": "timestamp"},
            }
        }
        while not self.stop.is_set():
            items = self._stage.clients.dynamodb.batch_get_item(RequestItems=request)["Responses"][table]
            state = {i["pseudoVin"]["S"]: newest for i in items if (newest := _newest(i)) is not None}
            self.scans.append((time.monotonic(), state))
            self.stop.wait(SAMPLE_EVERY)


def _newest(item: dict[str, Any]) -> str | None:
    if "ts" in item:
        return format_time(int(item["ts"]["N"]))
    return item["timestamp"]["S"] if "timestamp" in item else None


def visibility(puts: list[Put], scans: list[tuple[float, dict[str, str]]]) -> list[float]:
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
                cursor[pseudo_vin] < len(indices) and puts[indices[cursor[pseudo_vin]]].timestamp <= timestamp
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


def _replay_live(stage: Stage, records: list[dict[str, Any]], pseudo: Pseudonymizer) -> list[Put]:
    """Put each record once its event time has passed, about 5 PutRecords a second."""
    due = [parse_time(r["timestamp"]) for r in records]
    kinesis, stream = stage.clients.kinesis, stage.settings.stream_name
    puts: list[Put] = []
    while len(puts) < len(records):
        ready = bisect.bisect_right(due, int(time.time() * 1000), lo=len(puts))
        for start in range(len(puts), ready, 500):
            chunk = records[start : min(ready, start + 500)]
            entries: list[PutRecordsRequestEntryTypeDef] = [
                {"Data": orjson.dumps(r), "PartitionKey": r["vin"]} for r in chunk
            ]
            sent_at = time.monotonic()
            if kinesis.put_records(StreamName=stream, Records=entries).get("FailedRecordCount"):
                raise RuntimeError("PutRecords failed for some records")
            puts += [Put(pseudo.pseudo_vin(r["vin"]), r["timestamp"], sent_at) for r in chunk]
        time.sleep(PUT_EVERY)
    return puts


def run(
    aws: LocalAws,
    peer: str,
    vehicles: int,
    seconds: float,
    say: Callable[[str], None],
    poll_seconds: float,
    warmup: float = WARMUP_SECONDS,
    grace: float = GRACE_SECONDS,
) -> E2eResult:
    stage = fresh_stage(
        aws,
        shards=1,
        FLEET_KCL_EXECUTABLE=EXECUTABLES[peer],
        PYTHONPATH=str(REPO),
        FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS=str(int(poll_seconds * 1000)),
        FLEET_LOG_LEVEL="INFO",
    )
    pseudo = Pseudonymizer(BENCH_ENV["FLEET_PSEUDONYM_KEY"].encode())
    logs = REPO / "bench" / "results"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"e2e-{peer}.log").open("wb")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--timeout", str(seconds + grace + 300)],
        env=stage.environ,
        stdout=log,
        stderr=log,
        cwd=REPO,
    )
    children: list[psutil.Process] = []
    try:
        startup = _wait_for_processor(stage, launcher, timeout=120)
        children = psutil.Process(launcher.pid).children(recursive=True)
        (processor,) = _processors(launcher)
        say(f"  {peer}: processor up after {startup:.0f}s; replaying {vehicles} vehicles for {seconds:.0f}s")
        cpu_before = cpu_seconds(processor.pid)
        start_ms = int(time.time() * 1000) + 2000
        records = list(simulate(vehicles, (warmup + seconds) / 60, SEED + 1, start_ms))
        fleet = list(dict.fromkeys(pseudo.pseudo_vin(r["vin"]) for r in records[:vehicles]))
        sampled = set(fleet[:: max(1, len(fleet) // SAMPLED_VEHICLES)][:SAMPLED_VEHICLES])
        sampler = Sampler(stage, sorted(sampled))
        sampler.start()
        puts = _replay_live(stage, records, pseudo)
        measured_from = start_ms + int(warmup * 1000)
        measured = [put for put in puts if parse_time(put.timestamp) >= measured_from]
        watched = [put for put in measured if put.pseudo_vin in sampled]
        last = {put.pseudo_vin: put for put in watched}
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if sampler.scans and not any(
                map(math.isinf, visibility(list(last.values()), sampler.scans[-1:]))
            ):
                break
            time.sleep(0.5)
        sampler.stop.set()
        sampler.join()
        cpu = cpu_seconds(processor.pid) - cpu_before
        rss = peak_rss(processor.pid)
    finally:
        launcher.terminate()
        try:
            launcher.wait(30)
        except subprocess.TimeoutExpired:
            launcher.kill()
        for child in children:  # a processor mid-batch outlives its daemon: end it, by its pid
            with contextlib.suppress(psutil.Error):
                child.kill()
        log.close()
    # Throughput over everything put (warm-up included): the records made visible, estimated from the
    # sample (a shard is applied in order, so the sample's share is everyone's), over the time between
    # the first record becoming visible and the last (or the end of sampling, for a peer left behind).
    every = visibility([put for put in puts if put.pseudo_vin in sampled], sampler.scans)
    done = [at for at in every if not math.isinf(at)]
    end = max(done) if len(done) == len(every) else sampler.scans[-1][0]
    rate = len(done) / len(every) * len(puts) / (end - min(done)) if len(done) > 1 else 0.0
    seen = visibility(watched, sampler.scans)
    lags = [at - put.sent_at for at, put in zip(seen, watched, strict=True)]
    return E2eResult(
        peer=peer,
        offered_per_second=float(vehicles),
        records=len(measured),
        sampled_vehicles=len(sampled),
        visible_share=sum(not math.isinf(at) for at in seen) / len(seen),
        records_per_second=rate,
        lag_p50_s=percentile(lags, 0.50),
        lag_p99_s=percentile(lags, 0.99),
        lag_max_s=percentile(lags, 1.0),
        startup_s=startup,
        processor_cpu_seconds=cpu,
        processor_cpu_ms_per_record=cpu * 1000 / max(1.0, len(done) / len(every) * len(puts)),
        processor_peak_rss_bytes=rss,
    )
