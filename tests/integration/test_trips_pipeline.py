"""Trips through the record processor (MultiLangDaemon protocol harness) against the local AWS."""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from devtools.local_aws import FaultPlan
from processors.decode import DecodeLimits, Decoder
from processors.errors import TransientError
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time, parse_event_time
from processors.trip_items import BREADCRUMB_TTL_SECONDS
from processors.trips import (
    CompletedTrip,
    EndReason,
    TripEffects,
    TripStateMachine,
    TripThresholds,
    VehicleTrips,
    complete,
)
from schemas.dynamo import from_item
from schemas.items import TripIndexItem
from tests.conftest import FIXTURES, AwsEnv
from tests.fixtures.build import TRIP_GAP_SECONDS, TRIP_SCENARIO, expected_trips
from tests.support import harness as support
from tests.support.digest import state_digest
from tests.support.harness import (
    ProcessExited,
    ProcessorHarness,
    ShardRecord,
    batches,
    fixture,
    shard_records,
)
from tests.support.oracle import leaked, vins_in
from worker.bootstrap import bootstrap
from worker.sweep import sweep_orphans
from worker.trip_commit import TripArchiver

SEGMENT = 100
TRIP_ENV = {
    "FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS),
    "FLEET_TRIP_SEGMENT_BREADCRUMBS": str(SEGMENT),
    "FLEET_CHECKPOINT_EVERY_SECONDS": "0",
    "FLEET_PSEUDONYM_KEY": "trip-tests-key",
}
KEY = Pseudonymizer(TRIP_ENV["FLEET_PSEUDONYM_KEY"].encode())
PV = {vin[-1]: KEY.pseudo_vin(vin) for vin in TRIP_SCENARIO}  # "1".."5" -> pseudoVin
AN_HOUR_LATER = int(time.time() * 1000) + 3_600_000


@pytest.fixture
def trip_env(aws_env: AwsEnv) -> AwsEnv:
    return aws_env.with_settings(**TRIP_ENV)


def table(env: AwsEnv, name: str) -> list[dict[str, Any]]:
    return [
        from_item(i) for i in env.clients.dynamodb.scan(TableName=env.settings.table_names[name])["Items"]
    ]


def archive(env: AwsEnv, key: str) -> tuple[Any, list[dict[str, Any]]]:
    obj = env.clients.s3.get_object(Bucket=env.settings.archive_bucket, Key=key)
    return obj, orjson.loads(gzip.decompress(obj["Body"].read()))


def deliver(env: AwsEnv, records: Sequence[ShardRecord], size: int = 150) -> ProcessorHarness:
    return support.deliver(env.environ, records, size)


def clean_pass(records: Sequence[ShardRecord]) -> tuple[list[CompletedTrip], int]:
    """The pure machine over the same decoded records, in one pass in (event time, record bytes) order
    (what the settle buffer feeds it); the silent trip swept at the end."""
    decoder = Decoder(DecodeLimits(max_event_age_ms=10**15))
    machine = TripStateMachine(TripThresholds(gap_ms=TRIP_GAP_SECONDS * 1000, segment_breadcrumbs=SEGMENT))
    states: dict[str, VehicleTrips] = {}
    effects = TripEffects()
    decoded = [(decoder.decode(r.data, r.arrival_ms), r.data) for r in records]
    for record, _ in sorted(decoded, key=lambda d: (d[0].event_time_ms, d[1])):
        pv = KEY.pseudo_vin(record.vin)
        machine.apply(states.setdefault(pv, VehicleTrips(pv)), KEY.reading(record, None), effects)  # type: ignore[arg-type]
    orphans = [complete(pv, s.trip, EndReason.ORPHAN) for pv, s in states.items() if s.trip is not None]
    return effects.completed + orphans, len(effects.breadcrumbs)


def test_trip_scenario_through_the_record_processor(trip_env: AwsEnv) -> None:
    records = shard_records(fixture("trips.jsonl"))
    deliver(trip_env, records)
    silent = next(i for i in table(trip_env, "trip-state") if i["pseudoVin"] == PV["3"])
    assert silent["status"] == "ACTIVE"
    report = sweep_orphans(trip_env.settings, trip_env.clients, now_ms=AN_HOUR_LATER)
    assert report.orphaned == [silent["tripId"]]

    index = {(i["pseudoVin"], i["tripId"]): i for i in table(trip_env, "trips-index")}
    for vin, phases in TRIP_SCENARIO.items():
        trips = [i for (pv, _), i in index.items() if pv == KEY.pseudo_vin(vin)]
        assert len(trips) == expected_trips(phases), vin
    assert {i["endReason"] for (pv, _), i in index.items() if pv == PV["3"]} == {"orphan"}

    completed, breadcrumbs = clean_pass(records)
    assert len(index) == len(completed)
    for trip in completed:
        item = index[(trip.pseudo_vin, trip.trip_id)]
        assert (item["startTime"], item["endTime"], item["endReason"]) == (
            format_time(trip.start_time_ms),
            format_time(trip.end_time_ms),
            trip.end_reason.value,
        )
        assert item["breadcrumbCount"] == trip.breadcrumbs
        assert item["distanceMiles"] == round(trip.distance_miles, 3)
        assert item["tripDate"] == item["startTime"][:10]
        assert item["expiresAt"] == trip.end_time_ms // 1000 + 90 * 86400
        obj, crumbs = archive(trip_env, item["s3Key"])
        assert item["s3Key"] == f"trips/{trip.pseudo_vin}/{trip.trip_id}.json.gz"
        assert (obj["ContentType"], obj["ContentEncoding"]) == ("application/json", "gzip")
        assert len(crumbs) == item["breadcrumbCount"]
        times = [c["timestamp"] for c in crumbs]
        assert times == sorted(set(times)) and item["startTime"] <= times[0] and times[-1] <= item["endTime"]
        full = {"timestamp", "lat", "lng", "vehicleSpeed", "heading", "odometer", "batteryLevel"}
        # Delta producers: a breadcrumb carries what the trip has seen so far.
        assert all(
            set(c) >= (full if trip.pseudo_vin != PV["5"] else full - {"heading", "odometer", "batteryLevel"})
            for c in crumbs
        )

    states = {i["pseudoVin"]: i for i in table(trip_env, "trip-state")}
    assert PV["4"] not in states  # never drove: no trip-state at all
    assert {s["status"] for s in states.values()} == {"IDLE"} and not any(
        "closing" in s for s in states.values()
    )
    live = table(trip_env, "live-breadcrumbs")
    assert len(live) == breadcrumbs
    assert all(b["expiresAt"] == _epoch(b["timestamp"]) + BREADCRUMB_TTL_SECONDS for b in live)
    segments = trip_env.clients.s3.list_objects_v2(
        Bucket=trip_env.settings.archive_bucket, Prefix="trip-segments/"
    )
    assert len(segments["Contents"]) >= 4  # the long haul was staged while it ran

    every_object = [archive(trip_env, i["s3Key"])[1] for i in index.values()]
    assert not leaked(
        vins_in(FIXTURES / "trips.jsonl"), orjson.dumps([every_object, list(states.values()), live])
    )


def test_a_sweep_whose_archive_step_fails_once_finishes_its_own_claim(
    trip_env: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(trip_env, shard_records(fixture("trips.jsonl")))
    silent = next(i for i in table(trip_env, "trip-state") if i["pseudoVin"] == PV["3"])
    archive_once = TripArchiver.archive
    failures = iter([TransientError("SlowDown")])

    def flaky_archive(self: TripArchiver, trip: CompletedTrip) -> TripIndexItem:
        if (error := next(failures, None)) is not None:
            raise error  # after the claim landed: the retry meets the sweep's own claim
        return archive_once(self, trip)

    monkeypatch.setattr(TripArchiver, "archive", flaky_archive)
    report = sweep_orphans(trip_env.settings, trip_env.clients, now_ms=AN_HOUR_LATER)
    assert (report.orphaned, report.lost_race) == ([silent["tripId"]], 0)
    assert any(i["tripId"] == silent["tripId"] for i in table(trip_env, "trips-index"))
    (state,) = [i for i in table(trip_env, "trip-state") if i["pseudoVin"] == PV["3"]]
    assert state["status"] == "IDLE" and "closing" not in state


def test_a_trip_outliving_the_breadcrumb_ttl_is_still_archived_whole(trip_env: AwsEnv) -> None:
    records = shard_records(fixture("trips.jsonl"))
    long_haul = [r for r in records if r.partition_key.endswith("00002")]
    deliver(trip_env, long_haul[:400])
    # DynamoDB's TTL removes breadcrumbs older than a day: remove every one of this trip sealed so far.
    state = next(i for i in table(trip_env, "trip-state") if i["pseudoVin"] == PV["2"])
    expired = [b for b in table(trip_env, "live-breadcrumbs") if b["timestamp"] <= state["sealedThrough"]]
    assert len(expired) >= 3 * SEGMENT
    for crumb in expired:
        trip_env.clients.dynamodb.delete_item(
            TableName=trip_env.settings.table_names["live-breadcrumbs"],
            Key={"pseudoVin": {"S": crumb["pseudoVin"]}, "timestamp": {"S": crumb["timestamp"]}},
        )
    deliver(trip_env, long_haul[400:])
    ((trip,), _) = clean_pass(long_haul)[0], None
    (item,) = table(trip_env, "trips-index")
    _, crumbs = archive(trip_env, item["s3Key"])
    assert len(crumbs) == item["breadcrumbCount"] == trip.breadcrumbs


def test_a_breadcrumb_lost_before_it_was_staged_is_archived_without_but_reported(trip_env: AwsEnv) -> None:
    records = [r for r in shard_records(fixture("trips.jsonl")) if r.partition_key.endswith("00001")]
    ((first, *_), _) = clean_pass(records)
    moving = [r for r in records if parse_event_time(orjson.loads(r.data)["timestamp"]) <= first.end_time_ms]
    deliver(trip_env, moving)
    assert first.sealed_through_ms is not None
    staged, end = format_time(first.sealed_through_ms), format_time(first.end_time_ms)
    unstaged = [
        b
        for b in table(trip_env, "live-breadcrumbs")
        if b["tripId"] == first.trip_id and staged < b["timestamp"] <= end
    ]
    lost = unstaged[0]  # as if DynamoDB's TTL had taken it before the trip ended
    trip_env.clients.dynamodb.delete_item(
        TableName=trip_env.settings.table_names["live-breadcrumbs"],
        Key={"pseudoVin": {"S": lost["pseudoVin"]}, "timestamp": {"S": lost["timestamp"]}},
    )
    harness = deliver(trip_env, records[len(moving) :])
    item = next(i for i in table(trip_env, "trips-index") if i["tripId"] == first.trip_id)
    _, crumbs = archive(trip_env, item["s3Key"])
    assert len(crumbs) == item["breadcrumbCount"] == first.breadcrumbs - 1
    (alarm,) = [line for line in harness.logs() if line["event"] == "archive_incomplete"]
    assert alarm["level"] == "ERROR" and alarm["tripId"] == first.trip_id
    assert (alarm["breadcrumbs"], alarm["archived"]) == (first.breadcrumbs, first.breadcrumbs - 1)


def _epoch(iso: str) -> int:
    from processors.signals import parse_time

    return parse_time(iso) // 1000


def replay_with_crashes(env: AwsEnv, records: Sequence[ShardRecord], seed: int) -> int:
    """Deliver like the KCL after failures: random batch sizes; the processor killed at random points
    (mid-stream, never gracefully) and a new one started from the last checkpoint, so random
    overlapping ranges are delivered again. Returns the number of crashes."""
    rng = random.Random(seed)
    position, crashes = 0, 0
    checkpoint = -1  # index of the last checkpointed record
    while position < len(records):
        harness = ProcessorHarness(env.environ)
        harness.initialize()
        crash_after = rng.randint(1, 6) if crashes < 4 else 10**9
        for _ in range(crash_after):
            if position >= len(records):
                break
            batch = records[position : position + rng.randint(20, 400)]
            for made in harness.process(batch):
                checkpoint = next(
                    i for i, r in enumerate(records) if r.sequence_number == made.sequence_number
                )
            position += len(batch)
        if position >= len(records):
            harness.process([])
            harness.shutdown_requested()
            harness.lease_lost()
            harness.close()
            break
        harness.proc.kill()
        harness.proc.wait()
        crashes += 1
        position = checkpoint + 1
    return crashes


def clean_digest_then_reset(env: AwsEnv, records: Sequence[ShardRecord]) -> dict[str, Any]:
    """The digest of one clean pass (the silent trip swept), then empty resources for the next run."""
    deliver(env, records)
    sweep_orphans(env.settings, env.clients, now_ms=AN_HOUR_LATER)
    clean = state_digest(env.settings, env.clients)
    env.aws.reset()
    bootstrap(env.settings, env.clients, shards=2)
    return clean


@pytest.mark.parametrize("seed", [1, 2])
def test_redelivering_random_overlapping_ranges_leaves_exactly_what_one_clean_pass_leaves(
    trip_env: AwsEnv, seed: int
) -> None:
    records = shard_records(fixture("trips.jsonl"))
    clean = clean_digest_then_reset(trip_env, records)
    crashes = replay_with_crashes(trip_env, records, seed)
    sweep_orphans(trip_env.settings, trip_env.clients, now_ms=AN_HOUR_LATER)
    assert crashes >= 2
    assert state_digest(trip_env.settings, trip_env.clients) == clean


def _objects(env: AwsEnv, prefix: str) -> list[str]:
    listing = env.clients.s3.list_objects_v2(Bucket=env.settings.archive_bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.mark.parametrize("failing", ["trips-index", "trip-state"])
def test_a_crash_between_two_writes_of_a_commit_is_finished_identically(
    trip_env: AwsEnv, failing: str
) -> None:
    records = shard_records(fixture("trips.jsonl"))
    clean = clean_digest_then_reset(trip_env, records)
    physical = frozenset({trip_env.settings.table_names[failing]})
    trip_env.aws.app.inject(
        FaultPlan(rate=1.0, kinds=("server_error",), ops=frozenset({"PutItem"}), worker_tables=physical)
    )
    harness = ProcessorHarness(trip_env.environ)
    harness.initialize()
    with pytest.raises(ProcessExited):  # retries exhausted: the processor ends, nothing checkpointed after
        for batch in batches(records, 150):
            harness.process(batch)
    trip_env.aws.app.inject(None)
    if failing == "trips-index":  # stopped between the archive object and its index item
        assert _objects(trip_env, "trips/") and not table(trip_env, "trips-index")
        assert any(item.get("closing") for item in table(trip_env, "trip-state"))
    else:  # stopped between a vehicle's breadcrumbs and its trip state
        assert table(trip_env, "live-breadcrumbs") and not table(trip_env, "trip-state")

    # The KCL starts a new processor from the last checkpoint.
    checkpointed = harness.checkpoints[-1].sequence_number if harness.checkpoints else None
    resume = next((i + 1 for i, r in enumerate(records) if r.sequence_number == checkpointed), 0)
    deliver(trip_env, records[resume:])
    sweep_orphans(trip_env.settings, trip_env.clients, now_ms=AN_HOUR_LATER)
    assert state_digest(trip_env.settings, trip_env.clients) == clean
