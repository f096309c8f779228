"""The 1 Hz fleet replayed through a record processor against the local AWS: what a record costs.

The processor (ours: ``python -m worker process``; the naive peer: ``python -m bench.naive_processor``)
is driven through the MultiLangDaemon's JSON-line protocol by the test harness, in batches of
``batch_seconds`` of the fleet (what a shard has accumulated between two KCL polls). This is the
benchmark's *catch-up* scenario: a GetRecords of ``maxRecords=10000`` (the shipped default) on a backlogged
shard of 1,000 vehicles at 1 Hz returns 10 s of the fleet, which is what a 10 s window hands the
processor, so the replay stands in for draining a backlog through the daemon (the daemon itself adds no
writes; its own cost is measured in the live scenario). The processor is today's (``Pipeline``: freshness,
trail and settle buffers on its own wall clock, a checkpoint flush every 60 s); the replay ends with
``shutdown_requested`` so that everything still buffered is written and counted. The local AWS
counts every request and what the writes store; the processor's CPU time (after ``initialize``) and
peak RSS come from the OS.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import measure
from bench.stage import cpu_seconds, fresh_stage, peak_rss
from bench.workload import WORKLOADS, Fleet, Produced, entries, windows
from devtools.local_aws import LocalAws
from tests.support.harness import SEQUENCE_BASE, ProcessorHarness, ShardRecord

PROCESSORS = {
    "ours": (sys.executable, "-m", "worker", "process"),
    "naive": (sys.executable, "-m", "bench.naive_processor"),
}
DATA_SERVICES = ("dynamodb", "s3")


@dataclass
class ReplayResult:
    peer: str
    records: int
    batches: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    requests: dict[str, int]
    """``service:Operation`` -> count."""
    written: dict[str, dict[str, int]] = field(default_factory=dict)
    """``service:table-or-bucket`` -> requests, items, bytes, units (tables by their logical name)."""
    workload: str = "native"
    record_bytes: float = 0.0
    """Mean bytes of a record as put (what Kinesis PUT payload units and shard throughput count)."""
    vehicle_state_items: dict[str, Any] = field(default_factory=dict)
    """Item-size histogram of ``vehicle-state`` at the end of the replay."""
    vehicles: int = 0
    stored: dict[str, dict[str, int]] = field(default_factory=dict)
    """Logical table -> items and bytes left in it at the end of the replay."""

    def _sum(self, prefix: tuple[str, ...], key: str | None = None) -> int:
        if key is None:
            return sum(n for name, n in self.requests.items() if name.startswith(prefix))
        return sum(w[key] for name, w in self.written.items() if name.startswith(prefix))

    @property
    def data_requests(self) -> int:
        """DynamoDB + S3 requests: what the 0.35 per record target counts."""
        return self._sum(tuple(f"{s}:" for s in DATA_SERVICES))

    @property
    def kms_requests(self) -> int:
        return self._sum(("kms:",))

    @property
    def write_bytes(self) -> int:
        return self._sum(tuple(f"{s}:" for s in DATA_SERVICES), "bytes")

    @property
    def dynamodb_write_units(self) -> int:
        return self._sum(("dynamodb:",), "units")

    @property
    def s3_puts(self) -> int:
        return self._sum(("s3:",), "units")

    def per_record(self) -> dict[str, float]:
        n = self.records
        return {
            "requests": self.data_requests / n,
            "kms_requests": self.kms_requests / n,
            "write_bytes": self.write_bytes / n,
            "dynamodb_write_units": self.dynamodb_write_units / n,
            "s3_puts": self.s3_puts / n,
            "cpu_ms": self.cpu_seconds * 1000 / n,
        }

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "per_record": {
                **self.per_record(),
                **measure.per_record(self.written, self.requests, self.records),
            },
        }


CADENCES = (5, 30)
"""Slow reporters, seconds between a vehicle's records (many telematics units report every 5-30 s)."""


def slow_fleet(vehicles: int, minutes: float, period: int, workload: str) -> Fleet:
    """The catch-up fleet at one record per ``period`` s: as many records per vehicle as ``minutes`` at
    1 Hz (so per-trip and per-vehicle writes weigh as much per record), from minute 10 on."""
    return Fleet(vehicles, minutes * period, skip_minutes=10, workload=workload, period_seconds=period)


def slow_reporters(
    aws: LocalAws, vehicles: int, minutes: float, batch_seconds: float, say: Any = None
) -> dict[str, dict[str, Any]]:
    """The catch-up replay of ``slow_fleet`` per cadence and workload: ``"<period>s"`` -> workload ->
    summary (``ReplayResult.summary``, with ``fleet``: its description)."""
    out: dict[str, dict[str, Any]] = {}
    for period in CADENCES:
        for workload in WORKLOADS:
            fleet = slow_fleet(vehicles, minutes, period, workload)
            result = run(aws, "ours", fleet, batch_seconds, say).summary()
            out.setdefault(f"{period}s", {})[workload] = {**result, "fleet": fleet.describe()}
    return out


def backlog(produced: Sequence[Produced]) -> list[ShardRecord]:
    """The records as the shard holds them: sequence numbers in put order, each with its own arrival
    (``approximateArrivalTimestamp``: when it was put, ``due_ms``), so the stream clock and the settle
    buffer see the backlog's real times. The fleet's stream ends a few seconds ago."""
    return [ShardRecord(p.data, p.vin, str(SEQUENCE_BASE + 1 + i), p.due_ms) for i, p in enumerate(produced)]


def run(aws: LocalAws, peer: str, fleet: Fleet, batch_seconds: float, progress: Any = None) -> ReplayResult:
    stage = fresh_stage(aws)
    produced = fleet.produced()
    stream = entries(produced)
    harness = ProcessorHarness(stage.environ, command=PROCESSORS[peer], timeout=600)
    try:
        harness.initialize()
        aws.app.reset_counts()
        cpu_before, started = cpu_seconds(harness.proc.pid), time.monotonic()
        batches = list(windows(backlog(produced), fleet.vehicles, batch_seconds))
        for i, batch in enumerate(batches):
            # Behind the tip until the last batch, as a backlog is: the processor buffers (freshness,
            # trail, settle) on its own wall clock, exactly as under the daemon.
            harness.process(batch, millis_behind=(len(batches) - 1 - i) * int(batch_seconds * 1000))
            if progress and i % max(1, len(batches) // 5) == 0:
                progress(f"  {peer}/{fleet.workload}: batch {i + 1}/{len(batches)}")
        # Caught up: the daemon's next poll is empty with millisBehindLatest 0, which moves the stream
        # clock to now - 1 s (the settle buffer consumes what is older than D).
        harness.process([], millis_behind=0)
        # The end of the backlog: what the processor still buffers is written before the checkpoint
        # (``Pipeline.flush(everything=True)``), as at every checkpoint; counted with the rest.
        harness.shutdown_requested()
        seconds = time.monotonic() - started
        cpu = cpu_seconds(harness.proc.pid) - cpu_before
        rss = peak_rss(harness.proc.pid)
        requests = Counter(aws.app.requests)
        written = measure.written_by_table(stage)
        sizes = measure.item_sizes(stage)
        tables = measure.stored(stage)
    finally:
        harness.close()
    return ReplayResult(
        peer=peer,
        records=len(stream),
        batches=len(batches),
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss_bytes=rss,
        requests={f"{service}:{operation}": n for (service, operation), n in sorted(requests.items())},
        written=written,
        workload=fleet.workload,
        record_bytes=sum(len(p.data) for p in produced) / len(produced),
        vehicle_state_items=sizes,
        vehicles=fleet.vehicles,
        stored=tables,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.replay``: the write-unit figures of issue 23 alone, in a few minutes: the catch-up
    replay at 1 Hz and at the slow cadences (``--cadences``), and with ``--live`` the live parked and
    driving fleets (``bench.e2e.phases``); a table on stdout, the JSON with ``--output``."""
    import argparse

    import orjson

    from bench import e2e, report

    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=main.__doc__)
    parser.add_argument("--vehicles", type=int, default=12)
    parser.add_argument("--minutes", type=float, default=30, help="at 1 Hz; slow fleets as many records")
    parser.add_argument("--cadences", type=int, nargs="*", default=[1, *CADENCES])
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--live", action="store_true", help="also the live parked and driving fleets")
    parser.add_argument("--live-vehicles", type=int, default=20)
    parser.add_argument("--live-seconds", type=float, default=120, help="at least e2e.PHASE_SECONDS")
    parser.add_argument("--output", type=str, default=None, help="write the figures here (JSON)")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    results: dict[str, Any] = {"catch_up_cadence": {}, "live_phase": {}}
    with LocalAws() as aws:
        for period in args.cadences:
            for workload in args.workloads:
                fleet = slow_fleet(args.vehicles, args.minutes, period, workload)
                say(f"catch-up: {fleet.describe()} ...")
                summary = run(aws, "ours", fleet, 10.0, say).summary()
                results["catch_up_cadence"].setdefault(f"{period}s", {})[workload] = {
                    **summary,
                    "fleet": fleet.describe(),
                }
        if args.live:
            results["live_phase"] = e2e.phases(
                aws, args.workloads, args.live_vehicles, args.live_seconds, say
            )
    print("\n".join(report.cost_lines(results)))
    if args.output:
        with open(args.output, "wb") as out:
            out.write(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
