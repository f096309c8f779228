"""``python -m bench.capacity``: docs/capacity.md, in dollars, from the latest benchmark results.

Prices a deployment for fleets of 10k, 100k and 1M vehicles reporting at 1 Hz from the per-record figures
``make bench`` measured (``bench/results/latest.json``: the live scenario at the shipped defaults for ours,
the catch-up replay for the naive peer, whose costs do not depend on batching) and the dated price table
below (us-east-1, on demand), kept as parameters: change a price here and regenerate. Every assumption
is stated in the document.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
DOC = ROOT / "docs" / "capacity.md"

FLEETS = (10_000, 100_000, 1_000_000)
SECONDS_PER_MONTH = 30 * 24 * 3600
HOURS_PER_MONTH = 730

# -- prices: us-east-1, on demand ---------------------------------------------------------------------
PRICES_AS_OF = "2024-11-01"
"""The date of the newest price change below (DynamoDB on-demand throughput halved, effective 1 Nov 2024,
announced 14 Nov 2024). The others were read in December 2026 from the pages cited in ``PRICE_SOURCES``
and had not changed since at least 2024; re-check them when regenerating."""
WRU_USD_PER_MILLION = 0.625
RRU_USD_PER_MILLION = 0.125
STORAGE_USD_PER_GB_MONTH = 0.25
"""DynamoDB Standard table class (the first 25 GB a month are free: not counted)."""
KINESIS_SHARD_HOUR_USD = 0.015
KINESIS_PUT_UNIT_USD_PER_MILLION = 0.014
"""Provisioned mode; a PUT payload unit is 25 KB of a record (every record here is one unit)."""
FARGATE_VCPU_HOUR_USD = 0.04048
FARGATE_GB_HOUR_USD = 0.004445
"""Linux/x86."""
S3_STANDARD_GB_MONTH_USD = 0.023
S3_PUT_USD_PER_THOUSAND = 0.005
KMS_KEY_MONTH_USD = 1.0
KMS_USD_PER_10K_REQUESTS = 0.03
CLOUDWATCH_LOGS_INGEST_USD_PER_GB = 0.50
CLOUDWATCH_LOGS_STORAGE_USD_PER_GB_MONTH = 0.03
CLOUDWATCH_METRIC_MONTH_USD = 0.30
"""First 10,000 metrics; cheaper tiers beyond are not applied (an upper bound)."""
PRICE_SOURCES = {
    "DynamoDB": "https://aws.amazon.com/dynamodb/pricing/on-demand/ (on-demand throughput -50 % from"
    " 2024-11-01; e.g. https://airbyte.com/data-engineering-resources/dynamodb-pricing, 2025-07-21)",
    "Kinesis Data Streams": "https://aws.amazon.com/kinesis/data-streams/pricing/ (provisioned tab; PUT"
    " payload unit = 25 KB: http://aws.amazon.com/kinesis/pricing/)",
    "Fargate": "https://aws.amazon.com/fargate/pricing/ (us-east-1 Linux/x86 as quoted by"
    " https://www.wring.co/blog/aws-fargate-pricing-guide, 2026-03-10, and https://www.vantage.sh/blog/fargate-pricing)",
    "S3": "https://aws.amazon.com/s3/pricing/ (Standard $0.023/GB-month as quoted by"
    " https://cloudburn.io/blog/amazon-s3-pricing, 2026-03-13)",
    "KMS": "https://aws.amazon.com/kms/pricing/ ($1/key-month, $0.03 per 10,000 requests; also"
    " https://www.wring.co/blog/aws-kms-pricing-guide)",
    "CloudWatch": "https://aws.amazon.com/cloudwatch/pricing/ (logs ingestion $0.50/GB as quoted by"
    " https://www.factualminds.com/blog/amazon-cloudwatch-pricing-metrics-logs-alarms-dashboards/)",
}

# -- deployment (deploy/fleet-ingest.yaml defaults) ------------------------------------------------------
SHARD_RECORDS_PER_SECOND = 1_000
SHARD_UTILIZATION = 0.8
TASK_VCPU, TASK_MEMORY_GB = 1.0, 2.0
TASK_CPU_TARGET = 0.6
MEMORY_TARGET = 0.8
KMS_KEYS = 2
"""The data key (S3, dead letters) and the VIN vault key."""
TRAIL_RETENTION_DAYS = 2
"""``live-breadcrumbs`` items expire after 24 h; DynamoDB's TTL deletes within about two days."""
INDEX_RETENTION_DAYS = 90
ARCHIVE_EXPIRATION_DAYS = 455
"""Archives stay in S3 Standard until they expire: the template has no storage-class transition, since
S3 lifecycle does not transition objects under 128 KB and an archive is about 5 KB."""
LOG_RETENTION_DAYS = 30
METRIC_NAMES = 8
"""``worker/metrics.py`` UNITS: per shard and per application."""
DYNAMODB_ITEM_OVERHEAD = 100
STATE_WRITE_LEAD_MS = 450
"""Freshness model: poll (250 ms) + GetRecords and hand-off (~100 ms) + write lead (~100 ms)."""
BUDGETS_MS = (1000, 1800, 2800)
PER_VEHICLE_TABLES = ("vehicle-state", "vin-mapping", "trip-state")


@dataclass(frozen=True)
class PerRecord:
    """What one record costs, as measured."""

    source: str
    write_units: float
    write_units_by_table: dict[str, float]
    read_requests: float
    s3_puts: float
    s3_bytes: float
    kms: float
    processor_cpu_ms: float
    """Per record; live: above the processor's idle rate."""
    processor_idle_vcpu: float
    """The processor on an empty shard (vCPU per shard)."""
    daemon_cpu_ms: float
    """The JVM's CPU per record above its idle rate (the per-record part)."""
    daemon_idle_vcpu: float
    """The JVM's CPU on an empty shard (vCPU, per task: one daemon per task)."""
    processor_rss_mb: float
    daemon_rss_mb: float
    record_bytes: float
    log_bytes: float
    """Per record (the naive peer) or per shard-second (ours: a line and an EMF document per batch)."""
    state_item_bytes: float
    stored: dict[str, float]
    """Logical table -> bytes stored per record (trail, index) or per vehicle (the per-vehicle tables)."""


READS = ("GetItem", "BatchGetItem", "Query", "Scan")
TRANSITION_TABLES = ("trips-index", "vin-mapping")
"""Written when a trip is archived (index item, the vehicle's mark) or a vehicle is first seen: priced from
the catch-up replay, whose 30 minutes complete trips; the live window (45 s) completes almost none."""
LIVE_TRIP_TABLE = "trip-state"
"""The live view writes it while a trip is open (a transition at once, progress every 10 s: issue 21), on the
processor's wall clock, which the catch-up replay compresses: priced from the live window when it wrote
some, else from the replay."""


def _trail_lag(run: dict[str, Any]) -> str:
    """The trail's PutRecords -> crumb visible, for a run that measured it."""
    if not run.get("trail_sampled_vehicles"):
        return ""
    p50, p99, vehicles = run["trail_lag_p50_s"], run["trail_lag_p99_s"], run["trail_sampled_vehicles"]
    lags = f"p50 {_seconds(p50)}, p99 {_seconds(p99)}"
    return f" (its crumb on `live-breadcrumbs`: {lags}; {vehicles} vehicles read)"


def _stored(replay: dict[str, Any]) -> dict[str, float]:
    out = {}
    for table, tally in replay.get("stored", {}).items():
        overhead = tally["bytes"] + DYNAMODB_ITEM_OVERHEAD * tally["items"]
        per = replay["vehicles"] if table in PER_VEHICLE_TABLES else replay["records"]
        out[table] = overhead / max(1, per)
    return out


def per_record(results: dict[str, Any], peer: str, workload: str) -> PerRecord:
    """Ours: the live scenario (shipped defaults); storage and S3 from the catch-up replay of the same
    workload.
    The naive peer: its catch-up replay (it neither batches nor buffers: the same per record live)."""
    replay = results["catch_up"][workload].get(peer)
    live = results["live"].get(workload, {}).get(peer)
    source = live if peer == "ours" and live is not None else replay
    assert source is not None, f"no measurement for {peer}/{workload}"
    per = source["per_record"]
    n = source.get("measured_records") or source["records"]
    requests = source["requests"]
    reads = sum(c for op, c in requests.items() if op.split(":", 1)[1] in READS and op.startswith("dynamodb"))
    ours_live = live if live is not None else {}
    by_table = dict(per["write_units_by_table"])
    if source is live and replay is not None:
        # Archiving writes the index and the vehicle's mark once per trip, gap + L after its stop: the live
        # window is too short to see it, the catch-up replay (30 minutes) is not. trip-state stays live
        # (its progress writes follow the wall clock) unless the live window wrote none.
        tables = TRANSITION_TABLES if LIVE_TRIP_TABLE in by_table else (*TRANSITION_TABLES, LIVE_TRIP_TABLE)
        for table in tables:
            by_table.pop(table, None)
            if table in replay["per_record"]["write_units_by_table"]:
                by_table[table] = replay["per_record"]["write_units_by_table"][table]
    return PerRecord(
        source="live" if source is live else "catch-up",
        write_units=sum(by_table.values()),
        write_units_by_table=dict(sorted(by_table.items())),
        read_requests=reads / n,
        # Trips complete every few minutes: the live window is too short to see them, the replay is not.
        s3_puts=(replay or source)["per_record"]["s3_puts"],
        s3_bytes=(replay or source)["per_record"].get("s3_bytes", 0.0),
        kms=per["requests_by_service"].get("kms", 0.0),
        processor_cpu_ms=(
            source["processor_cpu_ms_per_record_above_idle"] if source is live else per["cpu_ms"]
        ),
        processor_idle_vcpu=source.get("processor_idle_cpu_per_second", 0.0),
        daemon_cpu_ms=ours_live.get("daemon_cpu_ms_per_record_above_idle", 0.0),
        daemon_idle_vcpu=ours_live.get("daemon_idle_cpu_per_second", 0.0),
        processor_rss_mb=(source.get("processor_peak_rss_bytes") or source.get("peak_rss_bytes", 0)) / 2**20,
        daemon_rss_mb=ours_live.get("daemon_peak_rss_bytes", 0) / 2**20,
        record_bytes=(replay or {}).get("record_bytes", 0.0),
        log_bytes=ours_live.get("log_bytes_per_second", 0.0) if source is live else 0.0,
        state_item_bytes=(source.get("vehicle_state_items") or {}).get("mean_bytes") or 0.0,
        stored=_stored(replay or {}),
    )


@dataclass(frozen=True)
class Bill:
    vehicles: int
    shards: int
    tasks: int
    lines: dict[str, float]
    """Service line -> USD per month."""

    @property
    def total(self) -> float:
        return sum(self.lines.values())


def bill(vehicles: int, cost: PerRecord) -> Bill:
    records = vehicles * SECONDS_PER_MONTH
    gb = 1e9
    shards = math.ceil(vehicles / (SHARD_RECORDS_PER_SECOND * SHARD_UTILIZATION))
    vcpu = vehicles * (cost.processor_cpu_ms + cost.daemon_cpu_ms) / 1000 + shards * cost.processor_idle_vcpu
    by_cpu = math.ceil(vcpu / (TASK_VCPU * TASK_CPU_TARGET - cost.daemon_idle_vcpu))
    # Memory: one JVM per task, one processor per shard lease.
    shards_per_task = max(
        1,
        math.floor(
            (TASK_MEMORY_GB * 1024 * MEMORY_TARGET - cost.daemon_rss_mb) / max(1.0, cost.processor_rss_mb)
        ),
    )
    tasks = max(1, by_cpu, math.ceil(shards / shards_per_task))
    trail_bytes = cost.stored.get("live-breadcrumbs", 0.0) * vehicles * 86_400 * TRAIL_RETENTION_DAYS
    index_bytes = cost.stored.get("trips-index", 0.0) * vehicles * 86_400 * INDEX_RETENTION_DAYS * 2
    vehicle_bytes = sum(cost.stored.get(t, 0.0) for t in PER_VEHICLE_TABLES) * vehicles
    s3_month = cost.s3_bytes * records
    standard_gb = s3_month * ARCHIVE_EXPIRATION_DAYS / 30 / gb
    log_gb = cost.log_bytes * shards * SECONDS_PER_MONTH / gb
    lines = {
        "DynamoDB writes": cost.write_units * records * WRU_USD_PER_MILLION / 1e6,
        "DynamoDB reads": cost.read_requests * records * RRU_USD_PER_MILLION / 1e6,
        "DynamoDB storage": (trail_bytes + index_bytes + vehicle_bytes) / gb * STORAGE_USD_PER_GB_MONTH,
        "Kinesis shard hours": shards * HOURS_PER_MONTH * KINESIS_SHARD_HOUR_USD,
        "Kinesis PUT payload units": records
        * max(1, math.ceil(cost.record_bytes / 25_600))
        * KINESIS_PUT_UNIT_USD_PER_MILLION
        / 1e6,
        "ECS Fargate vCPU": tasks * TASK_VCPU * HOURS_PER_MONTH * FARGATE_VCPU_HOUR_USD,
        "ECS Fargate memory": tasks * TASK_MEMORY_GB * HOURS_PER_MONTH * FARGATE_GB_HOUR_USD,
        "S3 PUTs": cost.s3_puts * records * S3_PUT_USD_PER_THOUSAND / 1000,
        f"S3 storage, Standard ({ARCHIVE_EXPIRATION_DAYS} d)": standard_gb * S3_STANDARD_GB_MONTH_USD,
        "KMS": KMS_KEYS * KMS_KEY_MONTH_USD + cost.kms * records * KMS_USD_PER_10K_REQUESTS / 1e4,
        "CloudWatch Logs": log_gb * CLOUDWATCH_LOGS_INGEST_USD_PER_GB
        + log_gb * LOG_RETENTION_DAYS / 30 * CLOUDWATCH_LOGS_STORAGE_USD_PER_GB_MONTH,
        "CloudWatch metrics": METRIC_NAMES * (shards + 1) * CLOUDWATCH_METRIC_MONTH_USD,
    }
    return Bill(vehicles, shards, tasks, lines)


def records_per_write(budget_ms: int, lead_ms: int = STATE_WRITE_LEAD_MS) -> int:
    """At 1 Hz, records a vehicle-state write covers under the freshness budget (proposal §5): the first
    record of a window opens it at arrival ``a``; each later one (a + k s) joins while it is received
    before the deadline ``a + B`` less the lead."""
    return 1 + max(0, (budget_ms - lead_ms) // 1000)


def usd(value: float) -> str:
    if value >= 1e6:
        return f"${value / 1e6:,.2f} M"
    if value >= 1e4:
        return f"${value / 1e3:,.1f} k"
    return f"${value:,.0f}"


def _bill_table(title: str, costs: dict[str, PerRecord]) -> list[str]:
    lines = [f"### {title}", ""]
    columns = [(name, vehicles) for name in costs for vehicles in FLEETS]
    bills = {(name, v): bill(v, costs[name]) for name, v in columns}
    lines.append("| USD / month | " + " | ".join(f"{n} {v:,}" for n, v in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    first = next(iter(bills.values()))
    for line in first.lines:
        lines.append(f"| {line} | " + " | ".join(usd(bills[c].lines[line]) for c in columns) + " |")
    lines.append("| **total** | " + " | ".join(f"**{usd(bills[c].total)}**" for c in columns) + " |")
    lines.append(
        "| shards / tasks | "
        + " | ".join(f"{bills[c].shards:,} / {bills[c].tasks:,}" for c in columns)
        + " |"
    )
    return [*lines, ""]


ISSUE_14 = {
    "catch_up_write_units_native": "catch-up write units / record, native",
    "catch_up_write_units_tesla": "catch-up write units / record, Tesla",
    "live_write_units_native": "live write units / record, native",
    "live_write_units_tesla": "live write units / record, Tesla",
    "live_p99_s_native": "live p99 PutRecords -> vehicle-state (s), native",
    "live_p99_s_tesla": "live p99 PutRecords -> vehicle-state (s), Tesla",
}
TRAIL = {
    "live_trail_p99_s_native": "live p99 PutRecords -> crumb on `live-breadcrumbs` (s), native",
    "live_trail_p99_s_tesla": "live p99 PutRecords -> crumb on `live-breadcrumbs` (s), Tesla",
}
"""The trail's freshness (its 15 s ``FLEET_TRAIL_MAX_DELAY_MS`` + 1 s), read on the same live runs."""
EARLIER = {
    "requests_per_record": "catch-up DynamoDB + S3 requests / record",
    "cpu_records_per_second": "CPU path, records/s on one core",
    "cpu_ratio": "CPU path, ours / naive",
}


def _verdict_rows(results: dict[str, Any], names: dict[str, str]) -> list[str]:
    rows = []
    for name, label in names.items():
        t = results["targets"][name]
        got = t["reached"]
        if got is None:
            rows.append(f"| {label} | {t['sense']} {t['goal']:g} | not measured | **missed** |")
            continue
        if t["met"]:
            verdict = "met"
        else:
            off = got - t["goal"] if t["sense"] == "<=" else t["goal"] - got
            amount = f"{off:,.0f}" if abs(off) >= 100 else f"{off:.3g}"
            verdict = f"**missed** by {amount} ({off / t['goal']:.0%})"
        rows.append(f"| {label} | {t['sense']} {t['goal']:g} | {got:,.3f} | {verdict} |")
    return rows


def _targets(results: dict[str, Any]) -> list[str]:
    """Each issue-14 target, met or missed (by how much), and the figures that say why."""
    env, live = results["environment"], results["live"]
    lines = [
        "## Targets",
        "",
        f"Issue 14's targets and the trail's, from this one run (load average {env['load_average'][0]:.1f} on"
        f" {env['cpus']} CPUs):",
        "",
        "| target | goal | reached | verdict |",
        "|---|---|---|---|",
        *_verdict_rows(results, ISSUE_14),
        *_verdict_rows(results, TRAIL),
        "",
    ]
    for workload in ("native", "tesla"):
        run = _get(live, workload, "ours")
        if run is None:
            continue
        settings = run.get("settings") or {}
        budget = settings.get("state_max_delay_ms")
        poll = settings.get("kcl_idle_time_between_reads_millis")
        by_table = run["per_record"]["write_units_by_table"]
        top = max(by_table, key=by_table.get) if by_table else None
        share = by_table[top] / run["per_record"]["write_units"] if top else 0.0
        lines.append(
            f"- Live, {workload}: p50 {run['lag_p50_s'] or 0:.1f} s, p99 "
            + (f"{run['lag_p99_s']:.1f} s" if run["lag_p99_s"] is not None else "not seen")
            + _trail_lag(run)
            + f", {run['per_record']['write_units']:.3f} units per record"
            + (f", {share:.0%} of them `{top}` ({by_table[top]:.3f})" if top else "")
            + f" (budget {budget} ms, poll {poll} ms); with the replay's archive tables, as priced"
            f" below: {per_record(results, 'ours', workload).write_units:.3f}."
        )
    lines += [
        "",
        "Where the latency goes: a record's `vehicle-state` write is due its arrival + the freshness budget B"
        " and taken one poll + 100 ms before that, so by design a record waits up to B (1.8 s) in the buffer;"
        " the 2 s target leaves ~0.2 s for PutRecords to GetRecords, the write and the sampler's 0.1 s read"
        " interval (until 2026-12-05 it read every 0.25 s, which alone put p99 just over 2 s). Any scheduling"
        " delay of the daemon, the processor or the in-process local AWS on a loaded machine goes straight"
        " into the p99; a smaller B would buy slack with more `vehicle-state` writes (see the sensitivity"
        " table).",
        "",
        "The trail is written a bucket at a time: when the vehicle's newest record passes the bucket's end,"
        " or `FLEET_TRAIL_MAX_DELAY_MS` (15 s) after the receipt of the bucket's first crumb, whichever comes"
        " first. At 1 Hz a bucket spans 15 s, so its first crumb waits about 15 s and its last about 1 s: the"
        " p50 is about half the span, the p99 the span plus a poll, the write and the trail sampler's 0.5 s"
        " between reads.",
        "",
        "Earlier targets, measured in the same run:",
        "",
        "| target | goal | reached | verdict |",
        "|---|---|---|---|",
        *_verdict_rows(results, EARLIER),
    ]
    cpu = results.get("cpu", {}).get("ours_us")
    if cpu:
        stages = [k for k in ("decode", "trips", "buffers", "serialize") if k in cpu]
        replayed = _get(results, "catch_up", "native")
        lines += [
            "",
            "CPU path, microseconds per record (ours, no I/O): "
            + ", ".join(f"{stage} {cpu[stage]:.1f}" for stage in stages)
            + f"; total {cpu['total']:.1f}. Decoding (format sniffing, JSON or protobuf, pseudonymizing,"
            " time and signal bounds) is most of it, and it is heavier than the naive peer's `json.loads`"
            " + pydantic, so without I/O ours is not faster per record. What ours saves is I/O: in the"
            " catch-up replay the processor spent "
            + (
                f"{replayed['ours']['per_record']['cpu_ms']:.2f} ms per record (boto3 included) against the"
                f" naive peer's {replayed['naive']['per_record']['cpu_ms']:.2f} ms"
                if replayed and "naive" in replayed
                else "far less CPU per record than the naive peer"
            )
            + ". The 100k records/s and 10x targets (an earlier issue's) are missed.",
        ]
    return lines


TRIPS = {
    "trip_start_p99_s": "p99 PutRecords of the first moving record -> `trip-state` ACTIVE (s)",
    "trip_stop_p99_s": "p99 PutRecords of the stop -> `trip-state` ENDING (s)",
    "trip_behind_seconds_max": "driving: `lastEventTime` behind the newest record put, max (s)",
    "trip_behind_records_max": "driving: records put not yet in `breadcrumbCount`, max",
    "trip_short_shown": "a trip shorter than the gap shown while it happens (1 = yes)",
    "trip_ids_equal_share": "live `tripId` = archived `tripId`, share of trips",
    "trip_archive_p99_s": "p99 last moving record's PutRecords -> on-time index item + S3 archive (s)",
}


def _seconds(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.1f} s"


def _trips(results: dict[str, Any]) -> list[str]:
    """Issue 21's targets, read on the trips scenario, and what it wrote per record."""
    trips = results.get("trips")
    if trips is None:
        return []
    settings = trips["settings"]
    gap, lateness = settings.get("trip_gap_seconds"), settings.get("trip_lateness_seconds")
    by_table = trips["per_record"]["write_units_by_table"]
    lines = [
        "## Trips: the live view and the archive (issue 21)",
        "",
        f"The trips scenario of the same run ({results['config'].get('trips', '')}; method in"
        " [benchmark.md](benchmark.md#trips-what-a-reader-sees)): what a reader of `trip-state`,"
        " `trips-index` and the S3 archive sees, from the PutRecords of the record that makes it so."
        f" {trips['vehicles']} trips, so a p99 is the slowest one; reads every 0.25 s.",
        "",
        "| target | goal | reached | verdict |",
        "|---|---|---|---|",
        *_verdict_rows(results, TRIPS),
        "",
        f"- Start: p50 {_seconds(trips['start_p50_s'])}, p99 {_seconds(trips['start_p99_s'])}; stop: p50"
        f" {_seconds(trips['stop_p50_s'])}, p99 {_seconds(trips['stop_p99_s'])} (a poll, the write, and"
        " the 0.25 s between reads).",
        f"- Driving, over {trips['progress_reads']:,} reads: `lastEventTime` p99"
        f" {_seconds(trips['behind_seconds_p99'])} behind the newest record put, max"
        f" {_seconds(trips['behind_seconds_max'])}; `breadcrumbCount` p99 {trips['behind_records_p99']:.0f},"
        f" max {trips['behind_records_max']:.0f} records short. Progress is written every"
        f" {settings.get('trip_progress_seconds'):g} s, so it trails by up to that plus a poll.",
        f"- The {trips['short_trip_seconds']:g} s trip (the gap is {gap} s) was"
        f" {'shown' if trips['short_trip_shown'] else '**not** shown'} while it happened;"
        f" {trips['trips_shown_while_driving']} of {trips['vehicles']} trips were. The ids shown live were"
        f" the archived ones for {trips['ids_equal']} of {trips['vehicles']}.",
        f"- On-time archive and index item (the live view's completion): p50"
        f" {_seconds(trips['archive_p50_s'])}, p99 {_seconds(trips['archive_p99_s'])} after the last moving"
        f" record's PutRecords; the design expects gap + 1.5 s = {trips['archive_expected_s']:g} s (the stop"
        " comes a record, 1 s, after the last moving one, then a poll and the writes). The final archive and"
        f" index item (the exact machine's): p50 {_seconds(trips.get('final_p50_s'))}, p99"
        f" {_seconds(trips.get('final_p99_s'))}; the design expects gap + L + 1.5 s ="
        f" {trips.get('final_expected_s', 0):g} s: the exact machine needs the record at stop + gap, which it"
        f" may consume only L = {lateness} s later"
        " ([live-trips.md](proposals/live-trips.md#departures-filled-in-as-built)).",
        *_after_the_stop(trips),
        "",
        f"What the scenario wrote ({trips['records']:,} records; each vehicle drives 1-2 minutes and parks"
        " 6, so trips are open, as ACTIVE or ENDING, for most of its records):",
        "",
        "| per record | write units |",
        "|---|---|",
        *(f"| `{table}` | {units:.3f} |" for table, units in sorted(by_table.items())),
        f"| **total** (whole items) | **{trips['per_record']['write_units']:.3f}** |",
    ]
    return lines


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def _after_the_stop(trips: dict[str, Any]) -> list[str]:
    """What the per-trip records of the run say a reader sees after the stop, and what trip-state cost."""
    per_trip = trips["trips"]
    ended = _median([t["ended_s"] for t in per_trip if t["ended_s"] is not None])
    gone = _median([t["gone_s"] for t in per_trip if t["gone_s"] is not None])
    longest = max(per_trip, key=lambda t: t["drive_seconds"])
    writes = trips["written"].get("dynamodb:trip-state", {}).get("requests", 0)
    progress = trips["settings"].get("trip_progress_seconds") or 0
    gap = trips["settings"].get("trip_gap_seconds") or 0
    lines = []
    if ended is not None and gone is not None:
        lines.append(
            "- After the stop (p50 over the trips): the item showed the trip over (`IDLE`, no `tripId`)"
            f" {ended:.1f} s after the stop's PutRecords and was deleted {gone:.1f} s after it, as the"
            f" archive appeared: for {gone - ended:.0f} s (about L) neither `trip-state` nor `trips-index`"
            " shows the trip."
        )
    if longest["live_count_last"] is not None:
        lines.append(
            "- While `ENDING`, `breadcrumbCount` (and `lastEventTime`) go on with the parked records: the"
            f" {longest['drive_seconds']:g} s trip last showed {longest['live_count_last']} crumbs, its"
            f" archive holds {longest['archived_count']} (start to stop)."
        )
    if writes and progress:
        lines.append(
            f"- `trip-state`: {writes / trips['vehicles']:.0f} writes per trip; progress every"
            f" {progress:g} s through the {gap} s gap accounts for about {gap / progress:.0f} of them"
            " (modelled, not counted)."
        )
    return lines


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


@dataclass(frozen=True)
class ShardCompute:
    """What one shard at its write limit costs in compute, from the full-shard run (``bench.fullshard``)."""

    workload: str
    shards: int
    records_per_second: float
    """Consumed per shard in the run (offered: ``rate_per_shard``)."""
    processor_cpu_ms: float
    """Per record, the processors' CPU over the window over the records they consumed (all shards)."""
    jvm_cpu_ms: float
    """Per record, the one JVM's CPU over all records consumed."""
    processor_rss_mb: float
    jvm_rss_mb: float

    @property
    def vcpu_per_shard(self) -> float:
        """At the planned load (``SHARD_UTILIZATION`` of a shard's 1,000 records/s)."""
        planned = SHARD_RECORDS_PER_SECOND * SHARD_UTILIZATION
        return planned * (self.processor_cpu_ms + self.jvm_cpu_ms) / 1000

    @property
    def shards_per_task(self) -> float:
        """Shards one task serves at ``TASK_CPU_TARGET`` of its vCPU (below 1: a shard needs more)."""
        return TASK_VCPU * TASK_CPU_TARGET / self.vcpu_per_shard if self.vcpu_per_shard else math.inf

    @property
    def memory_mb_per_shard(self) -> float:
        """A processor per shard, and a JVM per task shared by the shards one task holds."""
        whole = math.floor(self.shards_per_task + 1e-9)  # 0.6 / 0.12 is 4.999... in floating point
        return self.processor_rss_mb + self.jvm_rss_mb / max(1, whole)


def full_shard(results: dict[str, Any]) -> dict[str, ShardCompute]:
    """Workload -> the full-shard run's compute figures (``results["fullshard"]``, merged into
    ``latest.json`` by ``python -m bench fullshard``); {} when it was not run."""
    out = {}
    for workload, run in (_get(results, "fullshard", "runs") or {}).items():
        shards = run["per_shard"]
        consumed = sum(s["records_consumed"] for s in shards)
        if not consumed:
            continue
        out[workload] = ShardCompute(
            workload=workload,
            shards=len(shards),
            records_per_second=consumed / run["window_s"] / len(shards),
            processor_cpu_ms=sum(s["processor_cpu_seconds"] for s in shards) * 1000 / consumed,
            jvm_cpu_ms=run["jvm_cpu_seconds"] * 1000 / consumed,
            processor_rss_mb=max(s["processor_peak_rss_bytes"] for s in shards) / 2**20,
            jvm_rss_mb=run["jvm_peak_rss_bytes"] / 2**20,
        )
    return out


def with_full_shard(cost: PerRecord, compute: ShardCompute | None) -> PerRecord:
    """``cost`` with its compute measured at a full shard: per record all in (no idle rate apart: at the
    shard's limit the per-poll overhead is spread over 250 records a poll)."""
    if compute is None:
        return cost
    return replace(
        cost,
        processor_cpu_ms=compute.processor_cpu_ms,
        processor_idle_vcpu=0.0,
        daemon_cpu_ms=compute.jvm_cpu_ms,
        daemon_idle_vcpu=0.0,
        processor_rss_mb=compute.processor_rss_mb,
        daemon_rss_mb=compute.jvm_rss_mb,
        source=f"{cost.source}; compute: full shard",
    )


def _full_shard_section(results: dict[str, Any]) -> list[str]:
    """The full-shard run's figures per shard, against issue 23's targets, and what they make of a task."""
    computes = full_shard(results)
    if not computes:
        return []
    config = results["fullshard"].get("config", {})
    env = results["fullshard"].get("environment", {})
    lines = [
        "## Full shard (issue 23)",
        "",
        f"{config.get('describe', '')}; `python -m bench fullshard` (load average"
        f" {(env.get('load_average') or [0.0])[0]:.1f} on {env.get('cpus', '?')} CPUs). The bills below take"
        " their compute from here: CPU per record at a full shard, all in.",
        "",
        "| per shard | workload | records/s consumed | MillisBehindLatest max (ms) | p50 / p99 (s) |"
        " processor + JVM CPU ms / record | processor peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, run in results["fullshard"]["runs"].items():
        for shard in run["per_shard"]:
            p50, p99 = shard["lag_p50_s"], shard["lag_p99_s"]
            lines.append(
                f"| {shard['shard']} | {workload} | {shard['records_per_second']:,.0f} |"
                f" {shard['millis_behind_max'] if shard['millis_behind_max'] is not None else '-'}"
                f" ({'bounded' if shard['lag_bounded'] else '**growing**'}) |"
                f" {_seconds(p50)} / {_seconds(p99)} |"
                f" {shard['processor_cpu_ms_per_record']:.3f} + {run['jvm_cpu_ms_per_record']:.3f} ="
                f" {shard['cpu_ms_per_record']:.3f} | {shard['processor_peak_rss_bytes'] / 2**20:.0f} |"
            )
    lines += [
        "",
        f"| per shard at {SHARD_UTILIZATION:.0%} of its limit | " + " | ".join(computes) + " |",
        "|---|" + "---|" * len(computes),
        "| vCPU | " + " | ".join(f"{c.vcpu_per_shard:.3f}" for c in computes.values()) + " |",
        f"| shards per {TASK_VCPU:g}-vCPU task at {TASK_CPU_TARGET:.0%} CPU | "
        + " | ".join(f"{c.shards_per_task:.2f}" for c in computes.values())
        + " |",
        "| tasks per shard | " + " | ".join(f"{1 / c.shards_per_task:.2f}" for c in computes.values()) + " |",
        "| memory, MB (a processor, a share of the task's JVM) | "
        + " | ".join(f"{c.memory_mb_per_shard:.0f}" for c in computes.values())
        + " |",
        "| $ of compute a month, 1M vehicles (Fargate vCPU + memory) | "
        + " | ".join(
            usd(sum(v for k, v in bill(1_000_000, ours).lines.items() if k.startswith("ECS")))
            for ours in (with_full_shard(per_record(results, "ours", w), c) for w, c in computes.items())
        )
        + " |",
        "",
        "- Write units per record, all shards: "
        + ", ".join(
            f"{workload} {run['write_units_per_record']:.3f}"
            f" (<= {run.get('targets', {}).get('write_units_per_record', {}).get('goal', 0.0):.3f})"
            for workload, run in results["fullshard"]["runs"].items()
        )
        + ". The goal is issue 23's \"no higher than today\", the live figure before it; not today's live"
        " figure, whose 20 vehicles drive less than these (see `TODAY_WRITE_UNITS` in `bench/fullshard.py`).",
    ]
    for workload, run in results["fullshard"]["runs"].items():
        missed = [
            f"{name} {_missed(t)}" for name, t in sorted(run.get("targets", {}).items()) if not t["met"]
        ]
        lines.append(
            f"- {workload}: every issue-23 target met."
            if not missed
            else f"- {workload}, missed: " + "; ".join(missed) + "."
        )
    lines += [
        "",
        "Where the processor's CPU goes (about half of it in the AWS SDK, ~0.8 ms per DynamoDB request), and"
        " why the lag here is a saturated host's: [perf/full-shard.md](perf/full-shard.md).",
    ]
    return lines


def _missed(target: dict[str, Any]) -> str:
    reached, goal = target["reached"], target["goal"]
    if reached is None or goal is None:
        return "(not seen)" if reached is None else "(growing)"
    off = reached - goal if target["sense"] == "<=" else goal - reached
    return f"by {off:.3g} ({off / goal:.0%})"


def peers(results: dict[str, Any]) -> tuple[dict[str, PerRecord], PerRecord]:
    """What the document prices: ours per workload, and the naive peer (native). Ours' compute comes from
    the full-shard run when there is one."""
    workloads = [w for w in ("native", "tesla") if "ours" in results["catch_up"].get(w, {})]
    computes = full_shard(results)
    ours = {w: with_full_shard(per_record(results, "ours", w), computes.get(w)) for w in workloads}
    naive = per_record(results, "naive", "native")
    if not naive.daemon_rss_mb and "native" in ours:  # not run live: the same daemon as ours, as measured
        jvm = ours["native"]
        naive = replace(
            naive,
            daemon_cpu_ms=jvm.daemon_cpu_ms,
            daemon_idle_vcpu=jvm.daemon_idle_vcpu,
            daemon_rss_mb=jvm.daemon_rss_mb,
        )
    return ours, naive


def render(results: dict[str, Any]) -> str:
    env, config = results["environment"], results["config"]
    ours, naive = peers(results)
    workloads = list(ours)
    label = f" — **{env['label']}**" if env.get("label") else ""
    lines = [
        "# Capacity model",
        "",
        "<!-- Generated by `python -m bench.capacity` from `bench/results/latest.json`;"
        " do not edit by hand. -->",
        "",
        f"From the benchmark run of {env['generated_at']} (commit `{env['commit']}`){label}: the per-record",
        "figures measured by `make bench`, priced for fleets reporting once a second. Regenerate with",
        "`make bench && python -m bench.capacity`; prices are parameters in `bench/capacity.py`.",
        "",
        "## Measured per record",
        "",
        f"Ours: the live scenario ({config.get('live', 'live')}) for `vehicle-state`, `live-breadcrumbs`,"
        " `trip-state` (the live view: a transition at once, progress every 10 s while a trip is open),"
        " reads, CPU and logs; the catch-up replay of the same workload for what archiving a trip writes"
        " (`trips-index`, the vehicle's mark in `vin-mapping`: gap + L after a stop, which the 45 s live"
        " window hardly sees), S3 and storage. An open trip's checkpoint write (every 60 s) falls in the"
        " live window or not: at most 1/60 unit per record of an open trip. The naive peer: its"
        " catch-up replay (it writes per record whatever the batch; native format only). The trips"
        " scenario's own figures are [below](#trips-the-live-view-and-the-archive-issue-21).",
        "",
        "| per record | " + " | ".join(f"ours {w}" for w in workloads) + " | naive native |",
        "|---|" + "---|" * (len(workloads) + 1),
    ]
    columns = [*(ours[w] for w in workloads), naive]
    tables = sorted({t for p in columns for t in p.write_units_by_table})
    for table in tables:
        lines.append(
            f"| DynamoDB write units: `{table}` | "
            + " | ".join(f"{p.write_units_by_table.get(table, 0):.3f}" for p in columns)
            + " |"
        )
    rows: list[tuple[str, Callable[[PerRecord], str]]] = [
        ("**DynamoDB write units, total** (whole items)", lambda p: f"**{p.write_units:.3f}**"),
        ("DynamoDB read requests", lambda p: f"{p.read_requests:.4f}"),
        ("vehicle-state item, mean bytes", lambda p: f"{p.state_item_bytes:.0f}"),
        ("S3 PUTs / 1,000 records", lambda p: f"{p.s3_puts * 1000:.2f}"),
        ("KMS requests", lambda p: f"{p.kms:.4f}"),
        (
            "processor CPU, ms (all threads, /proc; live: above its idle rate)",
            lambda p: f"{p.processor_cpu_ms:.3f}",
        ),
        (
            "processor idle, vCPU per shard (/proc)",
            lambda p: f"{p.processor_idle_vcpu:.3f}" if p.processor_idle_vcpu else "-",
        ),
        (
            "daemon JVM CPU, ms above its idle rate (/proc)",
            lambda p: f"{p.daemon_cpu_ms:.3f}" if p.daemon_cpu_ms else "-",
        ),
        (
            "daemon JVM idle, vCPU per task (/proc)",
            lambda p: f"{p.daemon_idle_vcpu:.3f}" if p.daemon_idle_vcpu else "-",
        ),
        ("record bytes as put", lambda p: f"{p.record_bytes:.0f}"),
        (
            "log bytes per shard-second (CloudWatch Logs)",
            lambda p: f"{p.log_bytes:.0f}" if p.log_bytes else "-",
        ),
        ("peak RSS: processor / JVM, MB", lambda p: f"{p.processor_rss_mb:.0f} / {p.daemon_rss_mb:.0f}"),
        ("measured in", lambda p: p.source),
    ]
    for name, get in rows:
        lines.append(f"| {name} | " + " | ".join(get(p) for p in columns) + " |")
    lines += ["", *_targets(results)]
    shard_lines = _full_shard_section(results)
    lines += ["", *shard_lines] if shard_lines else []
    trips = _trips(results)
    lines += ["", *trips] if trips else []
    lines += ["", "## Dollars per month (us-east-1, on demand)", ""]
    for workload in workloads:
        lines += _bill_table(f"Ours, {workload} workload", {"ours": ours[workload]})
    lines += _bill_table("The naive peer, native workload", {"naive": naive})
    lines += [
        "The naive peer runs under the same daemon: unless it was run live (`--naive-live`), its JVM",
        "figures are ours' measured JVM. Its KMS line is one Encrypt per record.",
        "",
        "## Freshness budget sensitivity",
        "",
        "`FLEET_STATE_MAX_DELAY_MS` (B) sets how many of a vehicle's 1 Hz records one `vehicle-state` write",
        f"covers: 1 + ⌊(B - {STATE_WRITE_LEAD_MS} ms) / 1 s⌋ (poll, GetRecords and hand-off, write lead;",
        "proposal §5). Modelled, not measured: the rest of the live figure is taken as measured.",
        "",
        "| B (ms) | records / write | "
        + " | ".join(
            f"`vehicle-state` WU/record {w} | total WU/record {w} | USD/month at 1M {w}" for w in workloads
        )
        + " |",
        "|---|---|" + "---|---|---|" * len(workloads),
    ]
    for budget in BUDGETS_MS:
        per_write = records_per_write(budget)
        cells = []
        for w in workloads:
            p = ours[w]
            units_per_write = max(1, math.ceil(p.state_item_bytes / 1024)) if p.state_item_bytes else 1
            state = units_per_write / per_write
            total = p.write_units - p.write_units_by_table.get("vehicle-state", 0.0) + state
            dollars = total * 1_000_000 * SECONDS_PER_MONTH * WRU_USD_PER_MILLION / 1e6
            cells += [f"{state:.3f}", f"{total:.3f}", usd(dollars)]
        lines.append(f"| {budget:,} | {per_write} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Prices (parameters of `bench/capacity.py`)",
        "",
        f"us-east-1, on demand, as of {PRICES_AS_OF} (the newest change; see the sources).",
        "",
        "| item | price |",
        "|---|---|",
        f"| DynamoDB write request unit | ${WRU_USD_PER_MILLION} per million |",
        f"| DynamoDB read request unit | ${RRU_USD_PER_MILLION} per million |",
        f"| DynamoDB storage | ${STORAGE_USD_PER_GB_MONTH} per GB-month |",
        f"| Kinesis shard hour (provisioned) | ${KINESIS_SHARD_HOUR_USD} |",
        f"| Kinesis PUT payload unit (25 KB) | ${KINESIS_PUT_UNIT_USD_PER_MILLION} per million |",
        f"| Fargate vCPU hour / GB hour (Linux/x86) | ${FARGATE_VCPU_HOUR_USD} / ${FARGATE_GB_HOUR_USD} |",
        f"| S3 Standard | ${S3_STANDARD_GB_MONTH_USD} per GB-month |",
        f"| S3 PUT | ${S3_PUT_USD_PER_THOUSAND} per 1,000 |",
        f"| KMS key / requests | ${KMS_KEY_MONTH_USD:g} per month / ${KMS_USD_PER_10K_REQUESTS} per 10,000 |",
        f"| CloudWatch Logs ingestion / storage | ${CLOUDWATCH_LOGS_INGEST_USD_PER_GB} per GB /"
        f" ${CLOUDWATCH_LOGS_STORAGE_USD_PER_GB_MONTH} per GB-month |",
        f"| CloudWatch custom metric | ${CLOUDWATCH_METRIC_MONTH_USD} per metric-month |",
        "",
        "Sources:",
        "",
        *(f"- {service}: {source}" for service, source in PRICE_SOURCES.items()),
        "",
        "## Assumptions",
        "",
        f"- Every vehicle sends one record a second; a month is 30 days ({SECONDS_PER_MONTH:,} s),"
        f" {HOURS_PER_MONTH} hours.",
        f"- Shards: {SHARD_RECORDS_PER_SECOND:,} records/s each, planned at {SHARD_UTILIZATION:.0%}.",
        f"- Tasks: {TASK_VCPU:g} vCPU / {TASK_MEMORY_GB:g} GB (the template's default), enough for the"
        f" measured processor + JVM CPU at {TASK_CPU_TARGET:.0%} (the JVM's idle rate once per task, its"
        " per-record part per record) and one JVM plus one processor per shard"
        f" in {MEMORY_TARGET:.0%} of memory. CPU is measured against the local AWS over plain HTTP;"
        " TLS to AWS comes on top.",
        "- DynamoDB writes: write units per record as the local AWS bills them (whole item, the larger of"
        " before and after, per started KB, failed conditions included). Reads: one read unit per read"
        " request (items < 4 KB; a BatchGetItem counted once: a lower bound). The KCL's own lease and"
        " coordinator tables are not in the totals (a few units per shard per lease renewal).",
        "- DynamoDB storage: items as stored at the end of the catch-up replay plus"
        f" {DYNAMODB_ITEM_OVERHEAD} B per item; the trail kept {TRAIL_RETENTION_DAYS} days (24 h TTL plus"
        " TTL's deletion delay),"
        f" `trips-index` {INDEX_RETENTION_DAYS} days, twice (table and `tripDate-index`); the per-vehicle"
        " tables once per vehicle. The simulator drives far more than a real fleet (its duty cycle is the"
        " bench's), so the index and S3 lines are upper bounds.",
        f"- S3: archive bytes per record from the replay, in Standard until they expire on day"
        f" {ARCHIVE_EXPIRATION_DAYS} (the template's lifecycle; steady state). No transition to Glacier"
        " Instant Retrieval: S3 lifecycle does not transition objects under 128 KB, and an archive is"
        " about 5 KB; forced (an ObjectSizeGreaterThan filter), its $0.02 per 1,000 objects would cost"
        " over 15 times the storage it saves.",
        f"- KMS: {KMS_KEYS} keys plus the measured requests per record.",
        "- CloudWatch: log bytes per second of a shard measured on the task's stderr (log lines and EMF"
        " metric documents: one of each per batch, so per poll, not per record; the naive peer logs"
        f" nothing), kept {LOG_RETENTION_DAYS} days; {METRIC_NAMES} metrics per shard and per application.",
        "- Not included: data transfer, the sweep task, NAT or VPC endpoints, alarms and dashboards.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--output", type=Path, default=DOC)
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(orjson.loads(args.results.read_bytes())))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
