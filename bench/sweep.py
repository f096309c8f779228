"""``python -m bench sweep``: the orphan sweep's work against fleet size (issue 13, item 3).

For each fleet size, a clean local AWS is seeded (BatchWriteItem, in parallel) with N idle vehicles (a
mark in ``vin-mapping``, no ``trip-state`` item: what an archived vehicle leaves) and ``--open`` open
trips in ``trip-state`` (``--silent`` of them not written for longer than the sweep's idle time). The
sweep then runs as on AWS (``sweep_orphans``: the lease table and the consumers' progress reports, 16
index Queries in parallel, one BatchGetItem per 100 candidates, the silent trips completed). Printed: the
requests and items the sweep read, counted by the local AWS, next to what the sweep it replaces read: a
Scan of every trip-state item, idle tombstones included (pages computed by DynamoDB's 1 MB Scan page rule).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.stage import fresh_stage
from devtools.local_aws import LocalAws
from devtools.local_aws.limits import item_size
from processors.frontier import ShardProgress
from processors.signals import format_time
from processors.trip_items import idle_after, sweep_shard
from schemas.dynamo import to_item
from worker.aws import AwsClients
from worker.config import Settings
from worker.sweep import sweep_orphans
from worker.wiring import progress_store

RESULTS = Path(__file__).parent / "results"
BATCH = 25
SCAN_PAGE_BYTES = 1024 * 1024


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def pseudo_vin(kind: str, i: int) -> str:
    return hashlib.md5(f"{kind}-{i}".encode()).hexdigest()


def write_all(clients: AwsClients, table: str, items: list[dict[str, Any]]) -> None:
    """BatchWriteItem in 25s, 8 at a time."""
    ddb = clients.dynamodb

    def write(chunk: list[dict[str, Any]]) -> None:
        pending: Any = {table: [{"PutRequest": {"Item": item}} for item in chunk]}
        while pending:
            pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, [items[i : i + BATCH] for i in range(0, len(items), BATCH)]))


def idle_mark(i: int, now_ms: int) -> dict[str, Any]:
    hwm = now_ms - 86_400_000 - i * 1000
    return {"hwm": hwm, "rbl": True, "recent": [[hwm - 900_000, hwm - 300_000, hwm]], "ts": hwm // 1000 - 900}


SWEEP_IDLE_MS = Settings().trip_idle_ms


def open_trip_item(pv: str, silent: bool, now_ms: int) -> dict[str, Any]:
    last = now_ms - (3 * SWEEP_IDLE_MS if silent else 60_000)
    start = last - 600_000
    return {
        "pseudoVin": pv,
        "status": "ACTIVE",
        "tripId": f"trip_x_{pv}",
        "startTime": format_time(start),
        "lastEventTime": format_time(last),
        "lastRecordTime": format_time(last),
        "lastUpdate": format_time(last),
        "heardAt": last,
        "sweepShard": sweep_shard(pv),
        "idleAfter": idle_after(last),
    }


def tombstone_item(pv: str, now_ms: int) -> dict[str, Any]:
    """The IDLE trip-state item the replaced write path kept per vehicle ever seen."""
    return {
        "pseudoVin": pv,
        "status": "IDLE",
        "lastEventTime": format_time(now_ms - 86_400_000),
        "appliedThrough": {"shardId": "shardId-000000000000", "sequenceNumber": "4" * 56},
        "reportsBatteryLevel": True,
        "lastUpdate": format_time(now_ms - 86_400_000),
    }


def leases_caught_up(settings: Settings, clients: AwsClients, now_ms: int | None = None) -> None:
    """Consumers caught up at ``now_ms`` (default: now): a lease per shard, checkpointed at the shard's
    newest record, and the progress report a record processor writes at such a checkpoint (the daemon
    said the shard had nothing newer), which is what the sweep reads."""
    ddb, kinesis = clients.dynamodb, clients.kinesis
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    ddb.create_table(
        TableName=settings.application_name,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    progress = progress_store(settings, clients)
    for shard in kinesis.list_shards(StreamName=settings.stream_name)["Shards"]:
        put = kinesis.put_record(
            StreamName=settings.stream_name,
            Data=b"{}",
            PartitionKey="x",
            ExplicitHashKey=shard["HashKeyRange"]["StartingHashKey"],
        )
        ddb.put_item(
            TableName=settings.application_name,
            Item={"leaseKey": {"S": shard["ShardId"]}, "checkpoint": {"S": put["SequenceNumber"]}},
        )
        progress.record(ShardProgress(shard["ShardId"], now, caught_up_ms=now, millis_behind=0))


@dataclass
class Figures:
    idle: int
    open: int
    silent: int
    requests: int
    items_read: int
    candidates: int
    orphaned: int
    find_requests: int
    """Requests to find the candidates (leases, progress, index queries, reads), not completing them."""
    scan_requests: int
    scan_items: int


def seed(
    clients: AwsClients, tables: Mapping[str, str], idle: int, open_trips: int, silent: int, now: int
) -> list[dict[str, Any]]:
    """``idle`` vehicles with only a mark (and a vault entry) in vin-mapping, ``open_trips`` open trips in
    trip-state of which the first ``silent`` went quiet a day before ``now``. Returns the trip-state items."""
    marks = [
        {
            "pseudoVin": {"S": pseudo_vin("idle", i)},
            "encryptedVin": {"B": b"x" * 180},
            "createdAt": {"S": format_time(now)},
            "m": {"M": to_item(idle_mark(i, now))},
        }
        for i in range(idle)
    ]
    write_all(clients, tables["vin-mapping"], marks)
    opened = [to_item(open_trip_item(pseudo_vin("open", i), i < silent, now)) for i in range(open_trips)]
    write_all(clients, tables["trip-state"], opened)
    return opened


def measure(aws: LocalAws, idle: int, open_trips: int, silent: int) -> Figures:
    stage = fresh_stage(aws, shards=2)
    now = int(time.time() * 1000)
    tables = stage.settings.table_names
    started = time.monotonic()
    opened = seed(stage.clients, tables, idle, open_trips, silent, now)
    leases_caught_up(stage.settings, stage.clients)
    say(f"      seeded {idle:,} idle + {open_trips:,} open in {time.monotonic() - started:.0f} s")
    # What the replaced sweep read: a Scan of every trip-state item, an IDLE tombstone per idle vehicle
    # included. Computed by DynamoDB's rule (a Scan page reads at most 1 MB of items), not run: moto's
    # Scan re-reads the whole table for each page, minutes at 100k items.
    tombstone = item_size(to_item(tombstone_item(pseudo_vin("idle", 0), now)))
    scanned_bytes = idle * tombstone + sum(item_size(item) for item in opened)
    scan_requests = max(1, math.ceil(scanned_bytes / SCAN_PAGE_BYTES))
    scan_items = idle + open_trips

    aws.app.reset_counts()
    report = sweep_orphans(stage.settings, stage.clients, now_ms=now)
    served = Counter(aws.app.requests)
    finding = {
        ("dynamodb", "Scan"),  # the lease table
        ("dynamodb", "Query"),
        ("dynamodb", "BatchGetItem"),  # the progress reports (vin-mapping); the candidates (trip-state)
    }
    # Each orphan's archive Queries its breadcrumbs once (no sealed segments here): not finding work.
    find_requests = sum(n for op, n in served.items() if op in finding) - len(report.orphaned)
    return Figures(
        idle=idle,
        open=open_trips,
        silent=silent,
        requests=sum(served.values()),
        items_read=report.items_read,
        candidates=report.candidates,
        orphaned=len(report.orphaned),
        find_requests=find_requests,
        scan_requests=scan_requests,
        scan_items=scan_items,
    )


def table(rows: list[Figures]) -> str:
    head = (
        f"{'idle vehicles':>14} {'open trips':>10} {'silent':>7} | {'requests':>8} {'to find':>8} "
        f"{'items read':>10} {'orphaned':>8} | {'before: Scan requests':>21} {'items read':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.idle:>14,} {r.open:>10,} {r.silent:>7,} | {r.requests:>8,} {r.find_requests:>8,} "
            f"{r.items_read:>10,} {r.orphaned:>8,} | {r.scan_requests:>21,} {r.scan_items:>10,}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sweep", description=__doc__.split("\n\n")[0])
    # make bench runs 10k: seeding 100k idle vehicles takes the local AWS minutes, and the sweep's requests
    # do not grow with the idle fleet (``--idle 10000 100000`` shows it; bench/results/sweep.json).
    parser.add_argument("--idle", type=int, nargs="+", default=[10_000], help="idle fleet sizes")
    parser.add_argument("--output", type=Path, default=RESULTS / "sweep.json")
    parser.add_argument("--open", type=int, default=1_000, help="open trips")
    parser.add_argument("--silent", type=int, default=100, help="open trips silent past the idle time")
    args = parser.parse_args(argv)
    rows = []
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with LocalAws() as aws:
        for idle in args.idle:
            say(f"[sweep] {idle:,} idle vehicles, {args.open:,} open trips ({args.silent} silent) ...")
            rows.append(measure(aws, idle, args.open, args.silent))
            say(table(rows[-1:]))
    print(table(rows))
    previous = orjson.loads(args.output.read_bytes()) if args.output.exists() else {}
    by_size = {row["idle"]: row for row in previous.get("rows", [])}  # a one-off 100k row is kept
    by_size.update({row.idle: {**asdict(row), "generated_at": stamp} for row in rows})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(
        orjson.dumps({"rows": [by_size[k] for k in sorted(by_size)]}, option=orjson.OPT_INDENT_2) + b"\n"
    )
    print(
        "\nrequests: everything the sweep asked of the local AWS (leases and progress, 16 index Queries,"
        "\nBatchGetItem, and completing the silent trips); to find: without completing them. Before: the"
        "\nreplaced sweep's Scan of trip-state, which kept an IDLE item per vehicle ever seen (1 MB pages,"
        "\ncomputed)."
    )
    return 0
