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
from processors.archive import archive_trip, read_gzip_json
from processors.decode import DecodeLimits, Decoder
from processors.errors import TransientError
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time, parse_event_time
from processors.trail import TRAIL_TTL_SECONDS, Crumb, crumb_of, decode_item, pack
from processors.trips import (
    CompletedTrip,
    EndReason,
    TripEffects,
    TripStateMachine,
    TripThresholds,
    VehicleTrips,
    complete,
    step_of,
)
from schemas.dynamo import from_item
from schemas.items import TripIndexItem
from schemas.records import StreamPosition
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
from worker.trip_commit import TripArchiver, archive_safe_ms
from worker.wiring import trip_stores

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


def clean_pass(records: Sequence[ShardRecord]) -> tuple[list[CompletedTrip], dict[str, list[Crumb]]]:
    """The pure machine over the same decoded records, in one pass in (event time, record bytes) order
    (what the settle buffer feeds it), the silent trip swept at the end (R = the sweep's clock); and every
    vehicle's crumbs (every accepted record with a trail field)."""
    decoder = Decoder(DecodeLimits(max_event_age_ms=10**15))
    machine = TripStateMachine(TripThresholds(gap_ms=TRIP_GAP_SECONDS * 1000, segment_breadcrumbs=SEGMENT))
    states: dict[str, VehicleTrips] = {}
    crumbs: dict[str, list[Crumb]] = {}
    effects = TripEffects()
    decoded = [(decoder.decode(r.data, r.arrival_ms), r, i) for i, r in enumerate(records)]
    for record, raw, i in sorted(decoded, key=lambda d: (d[0].event_time_ms, d[1].data)):
        reading = KEY.reading(record, StreamPosition("shardId-0", str(i + 1), 0, raw.arrival_ms))
        machine.apply(
            states.setdefault(reading.pseudo_vin, VehicleTrips(reading.pseudo_vin)),
            step_of(reading, raw.data),
            effects,
        )
        if (crumb := crumb_of(reading)) is not None:
            crumbs.setdefault(reading.pseudo_vin, []).append(crumb)
    orphans = [
        complete(pv, s, s.trip, EndReason.ORPHAN, AN_HOUR_LATER)
        for pv, s in states.items()
        if s.trip is not None
    ]
    return effects.completed + orphans, crumbs


def expected_index(trip: CompletedTrip, crumbs: dict[str, list[Crumb]]) -> TripIndexItem:
    return archive_trip(trip, crumbs[trip.pseudo_vin])[1]


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

    completed, crumbs_by_vehicle = clean_pass(records)
    assert len(index) == len(completed)
    for trip in completed:
        item = index[(trip.pseudo_vin, trip.trip_id)]
        assert (item["startTime"], item["endTime"], item["endReason"]) == (
            format_time(trip.start_time_ms),
            format_time(trip.end_time_ms),
            trip.end_reason.value,
        )
        expected = expected_index(trip, crumbs_by_vehicle)  # the whole trail, no segments, no store
        assert item["breadcrumbCount"] == expected.breadcrumbCount > 0
        assert item["distanceMiles"] == expected.distanceMiles
        assert (item["maxSpeedMph"], item.get("endBattery")) == (expected.maxSpeedMph, expected.endBattery)
        assert item["tripDate"] == item["startTime"][:10]
        assert item["expiresAt"] == trip.end_time_ms // 1000 + 90 * 86400  # from the end, not from R
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

    # trip-state holds open trips only: every trip archived, no item is left; what exactly-once still
    # needs of each vehicle that drove is its mark in vin-mapping
    assert table(trip_env, "trip-state") == []
    marks = {i["pseudoVin"]: i["m"] for i in table(trip_env, "vin-mapping") if "m" in i}
    assert PV["4"] not in marks  # never drove: no mark either
    assert set(marks) == {pv for pv, _ in index}
    for pv, mark in marks.items():
        recent = sorted([t.start_time_ms, t.end_time_ms] for t in completed if t.pseudo_vin == pv)[-4:]
        assert [r[:2] for r in mark["recent"]] == recent
    states = list(marks.values())
    # Every accepted record with a trail field is a crumb, moving or not, in a trip or not.
    live = table(trip_env, "live-breadcrumbs")
    packed = {(m.pseudo_vin, m.bucket): m for pv, cs in crumbs_by_vehicle.items() for m in pack(pv, cs)}
    assert {(b["pseudoVin"], b["bucket"]) for b in live} == set(packed)
    for bucket in live:
        merge = packed[(bucket["pseudoVin"], bucket["bucket"])]
        assert {
            k: v for k, v in bucket.items() if k not in ("pseudoVin", "bucket", "expiresAt")
        } == merge.slots
        assert bucket["expiresAt"] == merge.expires_at == records[0].arrival_ms // 1000 + TRAIL_TTL_SECONDS
    segments = trip_env.clients.s3.list_objects_v2(
        Bucket=trip_env.settings.archive_bucket, Prefix="trip-segments/"
    )
    assert len(segments["Contents"]) >= 4  # the long haul was staged while it ran

    every_object = [archive(trip_env, i["s3Key"])[1] for i in index.values()]
    assert not leaked(vins_in(FIXTURES / "trips.jsonl"), orjson.dumps([every_object, states, live]))


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
    assert not [i for i in table(trip_env, "trip-state") if i["pseudoVin"] == PV["3"]]  # archived: gone


def bucket_items(env: AwsEnv, pseudo_vin: str) -> list[dict[str, Any]]:
    return [b for b in table(env, "live-breadcrumbs") if b["pseudoVin"] == pseudo_vin]


def delete_bucket(env: AwsEnv, bucket: dict[str, Any]) -> None:
    env.clients.dynamodb.delete_item(
        TableName=env.settings.table_names["live-breadcrumbs"],
        Key={"pseudoVin": {"S": bucket["pseudoVin"]}, "bucket": {"N": str(bucket["bucket"])}},
    )


def test_a_trip_outliving_the_breadcrumb_ttl_is_still_archived_whole(trip_env: AwsEnv) -> None:
    records = shard_records(fixture("trips.jsonl"))
    long_haul = [r for r in records if r.partition_key.endswith("00002")]
    deliver(trip_env, long_haul[:400])
    # DynamoDB's TTL removes buckets a day after their newest arrival: remove every bucket of this trip
    # sealed so far (wholly before the sealed point), as if they had expired.
    state = next(i for i in table(trip_env, "trip-state") if i["pseudoVin"] == PV["2"])
    sealed = state["machine"]["sl"]  # the exact machine's sealed-through point
    expired = [b for b in bucket_items(trip_env, PV["2"]) if (b["bucket"] + 15) * 1000 <= sealed]
    assert sum(len(decode_item(b)) for b in expired) >= 3 * SEGMENT
    for bucket in expired:
        delete_bucket(trip_env, bucket)
    deliver(trip_env, long_haul[400:])
    ((trip,), crumbs) = clean_pass(long_haul)
    (item,) = table(trip_env, "trips-index")
    _, rows = archive(trip_env, item["s3Key"])
    assert len(rows) == item["breadcrumbCount"] == expected_index(trip, crumbs).breadcrumbCount
    segment = trip_env.clients.s3.get_object(
        Bucket=trip_env.settings.archive_bucket, Key=f"trip-segments/{PV['2']}/{trip.trip_id}/00000.json.gz"
    )
    raw = read_gzip_json(segment["Body"].read())  # raw crumbs: [tMs, aS, lat, lng, speed, ...]
    assert all(len(r) == 9 and r[1] == long_haul[0].arrival_ms // 1000 for r in raw)


def test_a_trip_archived_after_its_trail_may_have_expired_is_archived_as_found_but_reported(
    trip_env: AwsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """A re-archive reads the same rows while every needed crumb is stored (rows are chosen against R);
    this long after R, TTL may have taken some of the tail: the archive says so (``archive_at_risk``)."""
    records = [r for r in shard_records(fixture("trips.jsonl")) if r.partition_key.endswith("00001")]
    ((first, *_), crumbs) = clean_pass(records)
    moving = [r for r in records if parse_event_time(orjson.loads(r.data)["timestamp"]) <= first.end_time_ms]
    deliver(trip_env, moving)
    assert first.sealed_through_ms is not None
    sealed = first.sealed_through_ms
    tail = [
        b
        for b in bucket_items(trip_env, PV["1"])
        if any(sealed < c.t_ms <= first.end_time_ms and c.located for c in decode_item(b))
    ]
    lost = tail[len(tail) // 2]  # as if DynamoDB's TTL had taken it before the trip was archived
    delete_bucket(trip_env, lost)
    stores = trip_stores(trip_env.settings, trip_env.clients)
    late = (first.completion_ms + archive_safe_ms(TripThresholds())) / 1000
    item = TripArchiver(stores.trail, stores.archive, TripThresholds(), clock=lambda: late).archive(first)
    _, rows = archive(trip_env, item.s3Key)
    gone = {c.t_ms for c in decode_item(lost) if c.t_ms > sealed}  # what the sealed segment did not keep
    left = [c for c in crumbs[PV["1"]] if c.t_ms not in gone]
    assert len(rows) == item.breadcrumbCount == archive_trip(first, left)[1].breadcrumbCount
    assert item.breadcrumbCount < expected_index(first, crumbs).breadcrumbCount
    (alarm,) = [r for r in caplog.records if r.getMessage() == "archive_at_risk"]
    assert alarm.levelname == "ERROR"
    assert alarm.fields == {  # type: ignore[attr-defined]
        "pseudoVin": PV["1"],
        "tripId": first.trip_id,
        "lagSeconds": archive_safe_ms(TripThresholds()) // 1000,
    }
    on_time = TripArchiver(
        stores.trail, stores.archive, TripThresholds(), clock=lambda: first.completion_ms / 1000
    )
    caplog.clear()
    assert on_time.archive(first) == item  # the same rows: nothing else changed
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


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
    writes = frozenset({"PutItem", "TransactWriteItems"})  # the item's creation is a transaction
    trip_env.aws.app.inject(FaultPlan(rate=1.0, kinds=("server_error",), ops=writes, worker_tables=physical))
    harness = ProcessorHarness(trip_env.environ)
    harness.initialize()
    with pytest.raises(ProcessExited):  # retries exhausted: the processor ends, nothing checkpointed after
        for batch in batches(records, 150):
            harness.process(batch)
    trip_env.aws.app.inject(None)
    if failing == "trips-index":  # stopped between the archive object and its index item
        assert _objects(trip_env, "trips/") and not table(trip_env, "trips-index")
        assert any(item.get("closing") for item in table(trip_env, "trip-state"))
    else:  # stopped between a vehicle's trail and its trip state
        assert table(trip_env, "live-breadcrumbs") and not table(trip_env, "trip-state")

    # The KCL starts a new processor from the last checkpoint.
    checkpointed = harness.checkpoints[-1].sequence_number if harness.checkpoints else None
    resume = next((i + 1 for i, r in enumerate(records) if r.sequence_number == checkpointed), 0)
    deliver(trip_env, records[resume:])
    sweep_orphans(trip_env.settings, trip_env.clients, now_ms=AN_HOUR_LATER)
    assert state_digest(trip_env.settings, trip_env.clients) == clean
