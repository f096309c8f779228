"""The orphan sweep on the local AWS (issue 13, item 3): it reads open trips only, through the sparse
sweep index, and does nothing while a shard's consumer is behind, which it learns from the consumers'
progress reports, never from the stream (issue 22)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.sweep import leases_caught_up, open_trip_item, pseudo_vin
from bench.sweep import seed as seed_fleet
from processors.frontier import BehindReason
from processors.signals import format_time
from processors.trip_items import SWEEP_SHARDS, idle_after
from schemas.dynamo import to_item
from tests.conftest import AwsEnv, create_lease_table
from tests.support.harness import (
    RecordingCheckpointer,
    ShardRecord,
    in_process_processors,
    process_records_input,
    shard_records,
)
from tests.support.iam import recording_resources
from worker.record_processor import FleetRecordProcessor
from worker.replay import StreamEntry
from worker.sweep import SweepReport, skip_limit_ms, sweep_orphans
from worker.wiring import pipeline_for


def seed(env: AwsEnv, idle: int, open_trips: int, silent: int, now: int) -> None:
    seed_fleet(env.clients, env.settings.table_names, idle, open_trips, silent, now)


@pytest.mark.parametrize("idle", [0, 400])
def test_the_sweep_reads_the_silent_open_trips_only_whatever_the_fleet(aws_env: AwsEnv, idle: int) -> None:
    """Idle vehicles (marks in vin-mapping) cost the sweep nothing: 16 index Queries and one BatchGetItem
    for the candidates, whether 0 or 400 vehicles are idle. (The replaced sweep Scanned trip-state.)"""
    now = int(time.time() * 1000)
    seed(aws_env, idle, open_trips=30, silent=4, now=now)
    leases_caught_up(aws_env.settings, aws_env.clients)
    aws_env.aws.app.reset_counts()
    with recording_resources() as calls:
        report = sweep_orphans(aws_env.settings, aws_env.clients, now_ms=now)
    assert (report.candidates, report.items_read, len(report.orphaned), report.lost_race) == (4, 4, 4, 0)
    served = Counter(aws_env.aws.app.requests)
    trip_state = f"table/{aws_env.settings.table_names['trip-state']}"
    reads = Counter(op for service, op, resource in calls if resource.startswith(trip_state))
    assert reads["Scan"] == 0 and reads["BatchGetItem"] == 1
    assert f"{trip_state}/index/open-trips-by-idle" in {r for _, _, r in calls}
    assert served[("dynamodb", "Query")] == SWEEP_SHARDS + 4  # the index; each orphan's breadcrumbs
    assert served[("dynamodb", "Scan")] == 1  # the lease table
    # the consumers' progress (vin-mapping), then the candidates (trip-state); never the stream
    assert served[("dynamodb", "BatchGetItem")] == 2
    assert not [op for op in served if op[0] == "kinesis"]
    # trip-state holds open trips only: the orphans' items are gone, their marks hold what remains
    remaining = aws_env.clients.dynamodb.scan(TableName=aws_env.settings.table_names["trip-state"])
    assert remaining["Count"] == 30 - 4


@pytest.fixture
def consumer(aws_env: AwsEnv, tmp_path: Path) -> Iterator[Callable[[str, int], FleetRecordProcessor]]:
    """A record processor of a shard, in-process on the local AWS (its wiring: ``pipeline_for``), its wall
    clock fixed at the given instant; every poll a checkpoint opportunity."""
    env = aws_env.with_settings(FLEET_CHECKPOINT_EVERY_SECONDS="0", FLEET_HEARTBEAT_PATH=str(tmp_path))
    factory = partial(pipeline_for, env.settings, env.clients)
    with in_process_processors() as start:
        yield lambda shard_id, clock_ms: start(env.settings, factory, lambda: clock_ms / 1000, shard_id)


def parked(arrival_ms: int) -> list[ShardRecord]:
    """A parked vehicle's record (no trip: trip-state stays the seeded one)."""
    record = {
        "vin": "5YJ3E1EA7KF900001",
        "timestamp": format_time(arrival_ms - 1_000),
        "signals": {"vehicleSpeed": 0},
    }
    return shard_records([StreamEntry(orjson.dumps(record), "5YJ3E1EA7KF900001")], arrival_ms=arrival_ms)


def skipped_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    (line,) = [r for r in caplog.records if r.name == "worker.sweep"]
    assert line.getMessage() == "sweep_skipped"
    fields: dict[str, Any] = line.fields  # type: ignore[attr-defined]
    caplog.clear()
    return fields


def test_the_sweep_does_nothing_while_a_shard_s_consumer_is_behind_and_never_reads_the_stream(
    aws_env: AwsEnv,
    consumer: Callable[[str, int], FleetRecordProcessor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 22: the sweep learns whether each shard's consumer keeps up from the progress its record
    processor reports at each checkpoint, not from the stream (which holds every VIN). A shard whose
    consumer lags more than a gap past one checkpoint interval and its spread, or whose consumer stopped
    reporting (it died), or that has no report, stops the sweep before it reads trip-state."""
    now = int(time.time() * 1000)
    seed(aws_env, idle=10, open_trips=5, silent=5, now=now)
    settings, clients = aws_env.settings, aws_env.clients
    limit_ms = skip_limit_ms(settings)
    # A trip gap, a checkpoint interval and its spread (a sixth of the interval).
    assert limit_ms == (settings.trip_gap_seconds + settings.checkpoint_every_seconds * 7 / 6) * 1000
    assert limit_ms == 370_000
    create_lease_table(aws_env)
    first, second = (
        s["ShardId"] for s in clients.kinesis.list_shards(StreamName=settings.stream_name)["Shards"]
    )
    for shard in (first, second):
        clients.dynamodb.put_item(
            TableName=settings.application_name,
            Item={"leaseKey": {"S": shard}, "checkpoint": {"S": "TRIM_HORIZON"}},
        )
    trip_state = settings.table_names["trip-state"]

    def sweep_at(at_ms: int) -> tuple[SweepReport, set[str], Counter[tuple[str, str]]]:
        aws_env.aws.app.reset_counts()
        with recording_resources() as calls, caplog.at_level(logging.INFO):
            report = sweep_orphans(settings, clients, now_ms=at_ms)
        return report, {r for _, _, r in calls}, Counter(aws_env.aws.app.requests)

    # No report yet from the second shard's consumer (it never reached a checkpoint).
    consumer(first, now).process_records(process_records_input([], RecordingCheckpointer(), millis_behind=0))
    report, touched, served = sweep_at(now)
    assert (report.skipped, report.skip_reason) == (second, BehindReason.NO_PROGRESS)
    assert skipped_line(caplog)["behindSeconds"] is None

    # It reports, working through a backlog that arrived a minute more than the limit ago.
    behind_ms = limit_ms + 60_000
    lagging = consumer(second, now)
    lagging.process_records(
        process_records_input(parked(now - behind_ms), RecordingCheckpointer(), behind_ms)
    )
    report, touched, served = sweep_at(now)
    assert (report.skipped, report.skip_reason, report.items_read, report.orphaned) == (
        second,
        BehindReason.LAGGING,
        0,
        [],
    )
    assert not {r for r in touched if trip_state in r}, "zero trip-state reads"
    assert not [op for op in served if op[0] == "kinesis"], "the sweep reads no record"
    fields = skipped_line(caplog)
    assert (fields["shard"], fields["reason"], fields["limitSeconds"]) == (second, "lagging", 370)
    assert (fields["behindSeconds"], fields["shardsBehind"]) == (430, 1)

    # Caught up: both consumers report at ``now``; then both die. Past the limit, they are not reporting.
    lagging.process_records(process_records_input([], RecordingCheckpointer(), millis_behind=0))
    report, touched, _ = sweep_at(now + limit_ms + 5_000)
    assert (report.skip_reason, report.items_read) == (BehindReason.NOT_REPORTING, 0)
    assert not {r for r in touched if trip_state in r}
    fields = skipped_line(caplog)
    assert (fields["reason"], fields["behindSeconds"], fields["shardsBehind"]) == ("not_reporting", 375, 2)
    assert clients.dynamodb.scan(TableName=trip_state)["Count"] == 5

    # Up to the limit the consumers count as keeping up: the sweep runs and completes the silent trips.
    report, touched, served = sweep_at(now + limit_ms)
    assert report.skipped is None and len(report.orphaned) == 5 and report.shards == 2
    assert not [op for op in served if op[0] == "kinesis"]
    assert clients.dynamodb.scan(TableName=trip_state)["Count"] == 0


def test_silence_is_judged_by_the_newest_records_arrival_to_the_second(aws_env: AwsEnv) -> None:
    """Issue 21, defect 5: a trip is silent ``idle`` after its newest record's arrival (``heardAt``), not
    after its item's last write, and ``--idle-seconds N`` names a trip heard within the index's 5-minute
    quantum. (Judged by ``lastUpdate``, a trip written at a checkpoint 60 s before its last record was cut a
    minute early; and ``idleAfter`` = lastUpdate + 2 x gap hid any trip younger than the quantum.)"""
    now = int(time.time() * 1000)
    settings, clients = aws_env.settings, aws_env.clients
    idle_ms = settings.trip_idle_ms
    heard = now - idle_ms + 10_000  # heard 10 s short of the idle time; last written a minute before that
    (item,) = seed_fleet(clients, settings.table_names, 0, 1, 0, now)
    table = settings.table_names["trip-state"]
    clients.dynamodb.update_item(
        TableName=table,
        Key={"pseudoVin": item["pseudoVin"]},
        UpdateExpression="SET heardAt = :h, lastUpdate = :u, idleAfter = :i",
        ExpressionAttributeValues={
            ":h": {"N": str(heard)},
            ":u": {"S": format_time(heard - 60_000)},
            ":i": {"N": str(idle_after(heard))},
        },
    )
    leases_caught_up(settings, clients)
    assert sweep_orphans(settings, clients, now_ms=now).orphaned == []
    assert len(sweep_orphans(settings, clients, now_ms=now + 10_000).orphaned) == 1

    young = to_item(open_trip_item(pseudo_vin("young", 0), False, now))  # heard a minute ago
    clients.dynamodb.put_item(TableName=table, Item=young)
    assert sweep_orphans(settings, clients, now_ms=now, idle_ms=90_000).orphaned == []
    report = sweep_orphans(settings, clients, now_ms=now, idle_ms=30_000)
    assert len(report.orphaned) == 1 and young["pseudoVin"]["S"] in report.orphaned[0]
