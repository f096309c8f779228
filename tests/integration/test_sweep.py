"""The orphan sweep on the local AWS (issue 13, item 3): it reads open trips only, through the sparse
sweep index, and does nothing while a shard's consumer is behind."""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest

from bench.sweep import leases_caught_up, open_trip_item, pseudo_vin
from bench.sweep import seed as seed_fleet
from processors.signals import format_time
from processors.trip_items import SWEEP_SHARDS, idle_after
from schemas.dynamo import to_item
from tests.conftest import AwsEnv, create_lease_table
from tests.support.iam import recording_resources
from worker.sweep import skip_limit_ms, sweep_orphans


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
    assert (served[("kinesis", "GetShardIterator")], served[("kinesis", "GetRecords")]) == (2, 2)
    # trip-state holds open trips only: the orphans' items are gone, their marks hold what remains
    remaining = aws_env.clients.dynamodb.scan(TableName=aws_env.settings.table_names["trip-state"])
    assert remaining["Count"] == 30 - 4


def test_the_sweep_does_nothing_while_a_shard_is_a_gap_behind_its_designed_lag(
    aws_env: AwsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint trails the stream by design (it waits for the allowed lateness L, and comes every
    ``checkpoint_every_seconds``): the sweep skips only once a shard's first unprocessed record is older
    than a gap past that lag."""
    now = int(time.time() * 1000)
    seed(aws_env, idle=10, open_trips=5, silent=5, now=now)
    settings, clients = aws_env.settings, aws_env.clients
    limit_s = (
        settings.trip_gap_seconds + settings.trip_lateness_ms // 1000 + settings.checkpoint_every_seconds
    )
    assert skip_limit_ms(settings) == limit_s * 1000 == (300 + 30 + 60) * 1000  # the shipped defaults
    create_lease_table(aws_env)
    for shard in clients.kinesis.list_shards(StreamName=settings.stream_name)["Shards"]:
        clients.dynamodb.put_item(
            TableName=settings.application_name,
            Item={"leaseKey": {"S": shard["ShardId"]}, "checkpoint": {"S": "TRIM_HORIZON"}},
        )
    (first, *_) = clients.kinesis.list_shards(StreamName=settings.stream_name)["Shards"]
    clients.kinesis.put_record(
        StreamName=settings.stream_name,
        Data=b"{}",
        PartitionKey="x",
        ExplicitHashKey=first["HashKeyRange"]["StartingHashKey"],
    )
    # Seen the limit and 5 s later, that record is still waiting for its consumer.
    later = now + skip_limit_ms(settings) + 5_000
    with recording_resources() as calls, caplog.at_level(logging.INFO):
        report = sweep_orphans(settings, clients, now_ms=later)
    assert report.skipped == first["ShardId"] and report.orphaned == [] and report.items_read == 0
    assert not {r for _, _, r in calls if settings.table_names["trip-state"] in r}, "zero trip-state reads"
    (line,) = [r for r in caplog.records if r.name == "worker.sweep"]
    assert line.getMessage() == "sweep_skipped"
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["shard"], fields["limitSeconds"]) == (first["ShardId"], limit_s)
    assert limit_s < fields["behindSeconds"] <= limit_s + 5
    assert clients.dynamodb.scan(TableName=settings.table_names["trip-state"])["Count"] == 5
    # More than a gap behind, but within what a consumer that keeps up shows (its checkpoint waits for
    # the allowed lateness): the sweep runs and completes them. (A gap alone skipped every healthy shard.)
    within = now + (settings.trip_gap_seconds * 1000 + settings.trip_lateness_ms)
    report = sweep_orphans(settings, clients, now_ms=within)
    assert report.skipped is None and len(report.orphaned) == 5


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
