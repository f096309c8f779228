"""The real KCL MultiLangDaemon (3.x, as in production), end to end, against the embedded local AWS.

One daemon run (a new lease table costs the KCL a random 1-30 s wait) over a 2-shard stream carrying
four fixture streams; each test checks one aspect of the result.
"""

from __future__ import annotations

import gzip
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from devtools.local_aws import LocalAws
from processors.frontier import ShardProgress
from processors.pseudonymize import Pseudonymizer
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from tests.conftest import FIXTURES, AwsEnv, fresh_env
from tests.fixtures.build import (
    LATE_SCENARIO,
    TRIP_GAP_SECONDS,
    TRIP_SCENARIO,
    boundary_fleet_vins,
    expected_trips,
)
from tests.integration.test_late_trail import in_event_order
from tests.support.harness import deliver, fixture, run_daemon, shard_records
from tests.support.iam import (
    NOT_EXERCISED_LOCALLY,
    SWEEP_POLICY,
    WORKER_POLICY,
    assert_policy_covers,
    disallowed_resources,
    iam_actions,
    policy_actions,
    recording_resources,
)
from tests.support.oracle import dumps, latest_by_vin, leaked, vins_in
from worker.leases import lease_checkpoints
from worker.replay import ReplayStats, read_fixture, replay
from worker.status import shard_status
from worker.sweep import sweep_orphans
from worker.wiring import progress_store

STREAMS = ("fleet-small.jsonl", "trips.jsonl", "boundary-mix.jsonl", "late-trail.jsonl")
E2E_ENV = {
    "FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS),
    "FLEET_PSEUDONYM_KEY": "e2e-key",
    # No fixture record is displaced by more than 15 s (late-trail's): an allowed lateness of 20 s orders
    # them all, and the drain waits 20 s of stream clock after the last record instead of the default 30.
    "FLEET_TRIP_LATENESS_SECONDS": "20",
}

NOT_EXERCISED_HERE = {
    **NOT_EXERCISED_LOCALLY,
    # With its own role the sweep's calls no longer count as the worker's.
    "s3:GetObject": "trip-segments/ of a long trip completed by the worker: this run's long trip ends as an "
    "orphan, so the sweep reads its segments (tests/deploy/test_iam.py records the worker reading them)",
}


@dataclass
class DaemonRun:
    env: AwsEnv
    daemon: subprocess.CompletedProcess[str]
    replayed: ReplayStats
    pseudo: Pseudonymizer
    calls: Counter[tuple[str, str]]
    """Every AWS request the launcher, the daemon and its processors made (the worker task role's)."""
    resources: set[tuple[str, str, str]]
    """The same requests as (service, operation, resource touched)."""
    sweep_resources: set[tuple[str, str, str]]
    """The orphan sweep's requests after the run (the sweep task role's)."""
    late_in_order: Archived
    """``late-trail.jsonl``'s records in event order through the record processor (protocol harness)
    with the same key and gap, before the daemon run: what its archives must be."""
    reports: dict[str, ShardProgress]
    """The progress each leased shard's record processor reported (``vin-mapping``) by the run's end."""
    replay_started_ms: int

    def table(self, name: str) -> list[dict[str, Any]]:
        raw = self.env.clients.dynamodb.scan(TableName=self.env.settings.table_names[name])["Items"]
        return [from_item(item) for item in raw]


@dataclass
class Archived:
    objects: dict[str, bytes]
    """``trips/`` objects by key."""
    index: dict[str, dict[str, Any]]
    """``trips-index`` items by trip id."""


def archived(env: AwsEnv) -> Archived:
    bucket = env.settings.archive_bucket
    listing = env.clients.s3.list_objects_v2(Bucket=bucket, Prefix="trips/").get("Contents", [])
    objects = {
        o["Key"]: env.clients.s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing
    }
    raw = env.clients.dynamodb.scan(TableName=env.settings.table_names["trips-index"])["Items"]
    return Archived(objects, {item["tripId"]: item for item in map(from_item, raw)})


def late_trail_in_order(local_aws: LocalAws) -> Archived:
    env = fresh_env(local_aws, E2E_ENV)
    deliver(env.environ, shard_records(in_event_order(fixture("late-trail.jsonl"))), 150)
    return archived(env)


@pytest.fixture(scope="module")
def kcl_run(local_aws: LocalAws) -> Iterator[DaemonRun]:
    late_in_order = late_trail_in_order(local_aws)  # before the daemon's run resets the local AWS
    env = fresh_env(local_aws, E2E_ENV)
    stats = ReplayStats()
    replay_started_ms = int(time.time() * 1000)
    for name in STREAMS:
        part = replay(env.clients.kinesis, env.settings.stream_name, read_fixture(FIXTURES / name))
        stats.records += part.records
        stats.last_sequence.update(part.last_sequence)
    local_aws.app.reset_counts()  # from here on, only the worker (daemon, processors), then the sweep
    with recording_resources() as resources:
        daemon = run_daemon(env.environ, timeout=240)
        assert daemon.returncode == 0, daemon.stderr[-3000:]
        calls = Counter(local_aws.app.requests)
        touched = set(resources)
        progress = progress_store(env.settings, env.clients)
        leased = sorted(lease_checkpoints(env.settings, env.clients))
        reports, _ = progress.read(leased)
        # The sweep an hour later (every open trip silent by then), its consumers caught up then: the
        # reports it reads say so (the run's own are checked by
        # test_each_shard_s_processor_reported_its_progress).
        an_hour_later = int(time.time() * 1000) + 3_600_000
        for shard in leased:
            progress.record(ShardProgress(shard, an_hour_later, caught_up_ms=an_hour_later, millis_behind=0))
        resources.clear()
        swept_report = sweep_orphans(env.settings, env.clients, now_ms=an_hour_later)
        assert swept_report.skipped is None, swept_report
        swept = set(resources)
    yield DaemonRun(
        env,
        daemon,
        stats,
        Pseudonymizer(b"e2e-key"),
        calls,
        touched,
        swept,
        late_in_order,
        reports,
        replay_started_ms,
    )


def test_each_shard_s_processor_reported_its_progress(kcl_run: DaemonRun) -> None:
    """What the orphan sweep reads instead of the stream (issue 22): by the drain, each shard's record
    processor reported, at a checkpoint after its last record, that it had received the records replayed
    (and so, that they are in trip-state)."""
    leased = lease_checkpoints(kcl_run.env.settings, kcl_run.env.clients)
    assert set(kcl_run.reports) == set(leased) and len(leased) == 2
    for report in kcl_run.reports.values():
        assert report.through_ms is not None and report.through_ms >= kcl_run.replay_started_ms, report
        assert not report.ended and report.written_ms >= report.through_ms - 1_000


def test_vehicle_state_holds_each_vehicles_latest_values(kcl_run: DaemonRun) -> None:
    state = {item["pseudoVin"]: named_item(item) for item in kcl_run.table("vehicle-state")}
    expected = (
        latest_by_vin(FIXTURES / "fleet-small.jsonl")
        | latest_by_vin(FIXTURES / "trips.jsonl")
        | latest_by_vin(FIXTURES / "late-trail.jsonl")
    )
    vehicles = set(expected) | boundary_fleet_vins()
    assert sorted(state) == sorted({kcl_run.pseudo.pseudo_vin(vin) for vin in vehicles})  # one item each
    for vin, latest in expected.items():
        item = state[kcl_run.pseudo.pseudo_vin(vin)]
        assert item["timestamp"] == latest["timestamp"]
        assert item["vehicleSpeed"]["value"] == latest["vehicleSpeed"]
        assert item["location"]["value"] == {"lat": latest["lat"], "lng": latest["lng"]}


def test_every_shard_is_checkpointed_at_or_past_its_last_record(kcl_run: DaemonRun) -> None:
    checkpoints = lease_checkpoints(kcl_run.env.settings, kcl_run.env.clients)
    assert set(checkpoints) == set(kcl_run.replayed.last_sequence) and len(checkpoints) == 2
    for shard, last in kcl_run.replayed.last_sequence.items():
        assert int(checkpoints[shard]) >= int(last)


def test_completed_trips_are_archived_and_indexed(kcl_run: DaemonRun) -> None:
    index = kcl_run.table("trips-index")
    bucket = kcl_run.env.settings.archive_bucket
    for vin, phases in TRIP_SCENARIO.items():
        trips = [i for i in index if i["pseudoVin"] == kcl_run.pseudo.pseudo_vin(vin)]
        assert len(trips) == expected_trips(phases), vin
        for item in trips:
            body = kcl_run.env.clients.s3.get_object(Bucket=bucket, Key=item["s3Key"])["Body"].read()
            assert len(orjson.loads(gzip.decompress(body))) == item["breadcrumbCount"] > 0
    assert {i["endReason"] for i in index} == {"gap", "orphan"}


def test_late_records_through_the_kcl_are_archived_as_if_they_had_arrived_in_order(
    kcl_run: DaemonRun,
) -> None:
    """Issue 17: ``late-trail.jsonl`` (about 8% of the moving records 5-15 s late) gives byte-identical
    archives and the same index items as its records in event order, every breadcrumb of every drive
    (before the trail held every accepted record: 243 of 268)."""
    late = {kcl_run.pseudo.pseudo_vin(vin) for vin in LATE_SCENARIO}
    index = {i["tripId"]: i for i in kcl_run.table("trips-index") if i["pseudoVin"] in late}
    expected = kcl_run.late_in_order
    assert set(index) == set(expected.index) and len(index) == 4
    bucket = kcl_run.env.settings.archive_bucket
    for trip_id, item in index.items():
        # expiresAt comes from the completion point R, the arrival of the record that completed the trip:
        # a fact of each stream (the daemon's Kinesis arrivals, the harness's), not of the record order.
        assert {k: v for k, v in item.items() if k != "expiresAt"} == {
            k: v for k, v in expected.index[trip_id].items() if k != "expiresAt"
        }
        body = kcl_run.env.clients.s3.get_object(Bucket=bucket, Key=item["s3Key"])["Body"].read()
        assert body == expected.objects[item["s3Key"]]
    counts = sorted(i["breadcrumbCount"] for i in index.values())
    print(f"late-trail.jsonl through the KCL: {sum(counts)} breadcrumbs archived, per trip {counts}")
    assert counts == [24, 40, 72, 132]


def test_no_real_vin_in_any_table_object_or_log_line(kcl_run: DaemonRun) -> None:
    vins = set().union(*(vins_in(FIXTURES / name) for name in STREAMS))
    for name in kcl_run.env.settings.table_names:
        assert not leaked(vins, dumps(kcl_run.table(name))), name
    bucket = kcl_run.env.settings.archive_bucket
    for entry in kcl_run.env.clients.s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = kcl_run.env.clients.s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
        assert not leaked(vins, gzip.decompress(body) if entry["Key"].endswith(".gz") else body), entry["Key"]
    assert not leaked(vins, kcl_run.daemon.stderr)
    assert kcl_run.daemon.stdout == ""


def test_processors_log_their_lifecycle_as_json_lines(kcl_run: DaemonRun) -> None:
    lines = [orjson.loads(line) for line in kcl_run.daemon.stderr.splitlines() if line.startswith('{"ts"')]
    events = {line["event"] for line in lines}
    assert events >= {"initialize", "batch", "checkpoint", "shutdown_requested", "drained"}
    assert sum(line["records"] for line in lines if line["event"] == "batch") >= kcl_run.replayed.records


def test_the_task_role_grants_exactly_what_the_worker_called(kcl_run: DaemonRun) -> None:
    assert kcl_run.calls[("kinesis", "GetRecords")] > 0 and kcl_run.calls[("dynamodb", "UpdateItem")] > 0
    # KCL 3's own: its lease table's index (created, then queried), and its two extra tables.
    assert kcl_run.calls[("dynamodb", "UpdateTable")] >= 1 and kcl_run.calls[("dynamodb", "Query")] >= 1
    assert_policy_covers(
        WORKER_POLICY, kcl_run.calls, not_exercised=NOT_EXERCISED_HERE, name="WorkerTaskRole (deploy/)"
    )
    never = policy_actions(WORKER_POLICY) - iam_actions(kcl_run.calls)
    assert never == set(NOT_EXERCISED_HERE), "each action this run did not call has its reason"
    segment_reads = [
        r for _, op, r in kcl_run.sweep_resources if op == "GetObject" and "/trip-segments/" in r
    ]
    assert segment_reads, "the reason given for s3:GetObject holds: the sweep read this run's segments"
    print(f"task policy actions this run never called: {sorted(never)}")


def test_every_call_is_allowed_on_the_resource_it_touched(kcl_run: DaemonRun) -> None:
    """By ARN, not only by action: the lease table's index, the KCL's own tables, each data table."""
    app = kcl_run.env.settings.application_name
    touched = {resource for _, _, resource in kcl_run.resources}
    assert {
        f"table/{app}",
        f"table/{app}/index/LeaseOwnerToLeaseKeyIndex",
        f"table/{app}-CoordinatorState",
        f"table/{app}-WorkerMetricStats",
    } <= touched
    assert disallowed_resources(WORKER_POLICY, kcl_run.resources, kcl_run.env.settings.region) == []
    assert kcl_run.sweep_resources, "the sweep completed orphaned trips"
    assert disallowed_resources(SWEEP_POLICY, kcl_run.sweep_resources, kcl_run.env.settings.region) == []


def test_kcl_3_creates_its_coordinator_and_worker_metrics_tables_and_the_lease_owner_index(
    kcl_run: DaemonRun,
) -> None:
    dynamodb, app = kcl_run.env.clients.dynamodb, kcl_run.env.settings.application_name
    (index,) = dynamodb.describe_table(TableName=app)["Table"]["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "LeaseOwnerToLeaseKeyIndex" and index["IndexStatus"] == "ACTIVE"
    assert [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]] == [
        ("leaseOwner", "HASH"),
        ("leaseKey", "RANGE"),
    ]
    state = {i["key"]["S"]: i for i in dynamodb.scan(TableName=f"{app}-CoordinatorState")["Items"]}
    assert state["Migration3.0"]["cv"]["S"] == "CLIENT_VERSION_3X"  # a new application: 3.x from the start
    # The leader's lock is deleted on a graceful stop: only the migration state is left.
    assert set(state) == {"Migration3.0"}
    workers = dynamodb.scan(TableName=f"{app}-WorkerMetricStats")["Items"]
    assert len(workers) == 1 and "wid" in workers[0]  # one daemon ran
    # Off AWS the worker metrics are off, so the KCL never asked the EC2 instance metadata address.
    assert "instance metadata" not in kcl_run.daemon.stderr and "169.254" not in kcl_run.daemon.stderr


def test_status_reads_kcl_3_lease_items(kcl_run: DaemonRun) -> None:
    dynamodb, app = kcl_run.env.clients.dynamodb, kcl_run.env.settings.application_name
    (worker_id,) = {i["wid"]["S"] for i in dynamodb.scan(TableName=f"{app}-WorkerMetricStats")["Items"]}
    leases = dynamodb.scan(TableName=app)["Items"]
    # KCL 3 adds throughputKBps to each lease (checkpointOwner only while a lease is handed over); a
    # graceful stop leaves the owner in place, for the next leader to reassign once it expires.
    assert all({"leaseOwner", "checkpoint", "leaseCounter", "throughputKBps"} <= set(i) for i in leases)
    statuses = shard_status(kcl_run.env.settings, kcl_run.env.clients)
    assert len(statuses) == 2
    for status in statuses:
        assert status.owner == worker_id and status.checkpoint is not None and status.checkpoint.isdigit()
        assert status.behind is not None and status.behind.records == 0 and status.behind.exact
