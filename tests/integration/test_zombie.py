"""A zombie processor, the orphan sweep and the new owner on one shard (issue 13, item 1; design:
docs/proposals/write-path.md §4.3), on the strict local AWS, with two in-process pipelines.

Vehicle V drives (trip T); the processor Z that persisted T stalls holding T in memory; the lease moves to
O, which resumes from Z's last checkpoint; V is silent long enough that the sweep completes T as orphan;
O receives V's next records and starts T2 on them; then Z wakes with its stale T. Whatever Z does then,
the tables end as one processor's clean pass with the same sweep leaves them.

Before this wave Z relabelled O's breadcrumbs: they were written unconditionally, keyed by time and
carrying a trip id, before the conditional trip commit, so Z rewrote T2's breadcrumbs as T's and its
re-plan (below the high-water mark) never repaired them: T2 was archived with 1 of its 6 breadcrumbs. It
cannot now, because everything Z can write is either identical to what O writes or refused:
- a trail crumb is a pure function of its record (no trip id, ``processors.trail``), max-merged: Z's
  merges of V's new records are byte for byte O's;
- vehicle-state merges per signal, newest observation wins: Z's are O's;
- every trip-state write is conditional on the version the writer last saw: Z's write of T is refused
  (the sweep deleted the item, or O's T2 replaced it), and Z re-plans on top of what is stored, where
  its records fall under the high-water mark;
- creating a trip-state item is a transaction that checks the vehicle's mark in ``vin-mapping``: a Z
  whose view predates T's archival (its creation of T still in flight) cannot bring T back after the
  sweep deleted its item (``in_creation`` below; the test fails without that check).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import orjson
import pytest

from bench.sweep import leases_caught_up
from processors.errors import StaleTripState
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from schemas.dynamo import from_item
from schemas.items import TripStateItem
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import AwsEnv
from tests.support.digest import state_digest
from worker.aws import AwsClients
from worker.bootstrap import bootstrap
from worker.pipeline import Pipeline
from worker.stores.dynamo_trips import DynamoTripStore
from worker.sweep import sweep_orphans
from worker.wiring import aws_stores, pipeline_for, pseudonymizer_for

GAP_S = 60
ENV = {
    "FLEET_TRIP_GAP_SECONDS": str(GAP_S),  # the settle window D defaults to the gap
    "FLEET_CHECKPOINT_EVERY_SECONDS": "0",
    "FLEET_PSEUDONYM_KEY": "zombie-tests-key",
}
SETTLE_MS = GAP_S * 1000
VIN = "1HGCM82633A004352"
PV = Pseudonymizer(ENV["FLEET_PSEUDONYM_KEY"].encode()).pseudo_vin(VIN)
SHARD = "shardId-000000000000"
HELD_SECONDS = 60


@pytest.fixture
def env(aws_env: AwsEnv) -> AwsEnv:
    return aws_env.with_settings(**ENV)


class Stream:
    """V's records on one shard: T (90 s of driving), 50 min of silence with the sweep in it, then T2
    (6 s of driving and a stop: ``next_trip``) and the record a gap after the stop that completes it
    (``completes``). Arrival 300 ms after each event. T is half an hour before the wall clock, the sweep
    runs 10 min after it (it judges silence by the wall-clock versions the writers stamp) and T2 comes
    10 min after the sweep, so the stream's order is the story's."""

    def __init__(self, wall_ms: int) -> None:
        self.sequence = 0
        t = wall_ms - 30 * 60_000
        self.first_trip = [self.record(t + i * 1000, 30.0, i) for i in range(90)]
        self.sweep_ms = wall_ms + 10 * 60_000  # V silent for ~40 min of stream and wall clock
        t2 = wall_ms + 20 * 60_000
        self.next_trip = [self.record(t2 + i * 1000, 30.0 if i < 6 else 0.0, 100 + i) for i in range(7)]
        self.completes = [self.record(t2 + 6_000 + 2 * GAP_S * 1000, 0.0, 106)]

    def record(self, t_ms: int, speed: float, step: int) -> KinesisRecord:
        self.sequence += 1
        signals = {
            "vehicleSpeed": speed,
            "lat": 39.7 + step * 0.0001,
            "lng": -104.95,
            "heading": 0,
            "odometer": 1000.0 + step * 0.01,
            "batteryLevel": 90.0 - step * 0.01,
        }
        data = orjson.dumps({"vin": VIN, "timestamp": format_time(t_ms), "signals": signals})
        position = StreamPosition(SHARD, str(10**20 + self.sequence), 0, t_ms + 300)
        return KinesisRecord(data, VIN, position)


def feed(pipeline: Pipeline, records: Sequence[KinesisRecord]) -> StreamPosition | None:
    """A batch, then what the record processor does while caught up: an empty poll D later (the machine
    consumes everything), the flush of everything pending, and the checkpoint position it would take."""
    last = max(r.position.arrival_ms for r in records)
    pipeline.process(records, now_ms=last)
    later = last + SETTLE_MS + 2_000
    pipeline.process([], now_ms=later, caught_up=True)
    pipeline.flush(later, everything=True)
    return pipeline.watermark()


def after(records: Sequence[KinesisRecord], checkpoint: StreamPosition | None) -> list[KinesisRecord]:
    """What a new lease owner receives: the records after the last checkpoint."""
    if checkpoint is None:
        return list(records)
    return [r for r in records if int(r.position.sequence_number) > int(checkpoint.sequence_number)]


def sweep(env: AwsEnv, now_ms: int) -> list[str]:
    """The scheduled sweep as on AWS: the consumers are current at ``now_ms`` (lease items at each shard's
    newest record, and the progress their processors reported then), so its "shard behind" check lets it
    run."""
    leases_caught_up(env.settings, env.clients, now_ms)
    report = sweep_orphans(env.settings, env.clients, now_ms=now_ms)
    assert report.skipped is None
    return report.orphaned


def reset(env: AwsEnv) -> None:
    env.aws.reset()
    bootstrap(env.settings, env.clients, shards=2)


def clean_pass(env: AwsEnv, stream: Stream) -> dict[str, Any]:
    """One processor and the same sweep; then empty resources for the run under test."""
    alone = pipeline_for(env.settings, AwsClients(env.settings))
    alone.process(stream.first_trip[:80], now_ms=stream.first_trip[79].position.arrival_ms)
    feed(alone, stream.first_trip[80:])
    (orphan,) = sweep(env, stream.sweep_ms)
    feed(alone, stream.next_trip)
    feed(alone, stream.completes)
    alone.close()
    digest = state_digest(env.settings, env.clients)
    trips = {i["tripId"]: i for i in digest["trips-index"]}
    assert trips[orphan]["endReason"] == "orphan" and trips[orphan]["breadcrumbCount"] == 90
    (t2,) = [i for trip_id, i in trips.items() if trip_id != orphan]
    assert (t2["endReason"], t2["breadcrumbCount"]) == ("gap", 7)  # every record of T2, the stop included
    assert digest["trip-state"] == []
    reset(env)
    return digest


class HeldWrite(DynamoTripStore):
    """Z's trip-state port: its first creation (``creation``) or first update of an item is held back,
    as when the process stalls just before the request leaves, until ``release``; then it is sent."""

    def __init__(self, env: AwsEnv, creation: bool) -> None:
        tables = env.settings.table_names
        super().__init__(env.clients.dynamodb, tables["trip-state"], tables["vin-mapping"])
        self.creation = creation
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.refused: StaleTripState | None = None

    def write(self, item: TripStateItem, expected_last_update: str | None) -> None:
        if self.stalled.is_set() or (expected_last_update is None) != self.creation:
            super().write(item, expected_last_update)
            return
        self.stalled.set()
        assert self.release.wait(HELD_SECONDS), "never released"
        try:
            super().write(item, expected_last_update)
        except StaleTripState as refused:
            self.refused = refused
            raise


def zombie_pipeline(env: AwsEnv, trips: DynamoTripStore | None = None) -> Pipeline:
    clients = AwsClients(env.settings)
    pseudonymizer = pseudonymizer_for(env.settings, clients)
    stores = aws_stores(env.settings, clients, pseudonymizer)
    return Pipeline(env.settings, replace(stores, trips=trips) if trips else stores, pseudonymizer)


def trip_state(env: AwsEnv) -> list[dict[str, Any]]:
    table = env.settings.table_names["trip-state"]
    return [from_item(i) for i in env.clients.dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]]


def test_a_zombie_waking_on_the_new_owners_records_leaves_what_one_clean_pass_leaves(
    env: AwsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    stream = Stream(int(time.time() * 1000))
    clean = clean_pass(env, stream)

    zombie = zombie_pipeline(env)
    zombie.process(stream.first_trip[:80], now_ms=stream.first_trip[79].position.arrival_ms)
    checkpoint = feed(zombie, stream.first_trip[80:])
    (t,) = trip_state(env)
    assert (t["pseudoVin"], t["status"], t["breadcrumbCount"]) == (PV, "ACTIVE", 90)  # T, persisted by Z
    # Z stalls holding T. The lease moves to O, which resumes from Z's last checkpoint.
    owner = pipeline_for(env.settings, AwsClients(env.settings))
    assert after(stream.first_trip, checkpoint) == []
    assert sweep(env, stream.sweep_ms) == [t["tripId"]]
    feed(owner, stream.next_trip)
    (t2,) = trip_state(env)
    assert t2["tripId"] != t["tripId"] and t2["status"] == "ENDING"
    # Z wakes with T in memory and gets the same records: to it they continue T. Its trail and vehicle
    # state merges are O's own; its write of T is refused (O's T2 is stored), and its re-plan on top of T2
    # finds every record under T2's high-water mark.
    with caplog.at_level(logging.WARNING):
        feed(zombie, stream.next_trip)
    assert "trip_state_conflict" in [r.getMessage() for r in caplog.records]
    (stored,) = trip_state(env)
    assert {k: v for k, v in stored.items() if k not in ("lastUpdate", "idleAfter")} == {
        k: v for k, v in t2.items() if k not in ("lastUpdate", "idleAfter")
    }
    zombie.close()  # its next checkpoint would raise LeaseLost
    feed(owner, stream.completes)
    owner.close()
    assert state_digest(env.settings, env.clients) == clean


@pytest.mark.parametrize("held", ["update", "in_creation"])
def test_a_zombie_that_never_gets_the_new_records_has_its_only_write_refused(env: AwsEnv, held: str) -> None:
    """Z stalls just before sending a write of T: an update of the T it created (refused by the version),
    or T's very creation (refused by the mark the sweep left: T was archived meanwhile; without that check
    the transaction would bring T back as an open trip, and O would then continue T instead of T2)."""
    stream = Stream(int(time.time() * 1000))
    clean = clean_pass(env, stream)

    trips = HeldWrite(env, creation=held == "in_creation")
    zombie = zombie_pipeline(env, trips)

    def run_zombie() -> StreamPosition | None:
        zombie.process(stream.first_trip[:80], now_ms=stream.first_trip[79].position.arrival_ms)
        return feed(zombie, stream.first_trip[80:])

    with ThreadPoolExecutor(1, thread_name_prefix="zombie") as pool:
        woken = pool.submit(run_zombie)
        try:
            if not trips.stalled.wait(HELD_SECONDS):
                woken.result()  # it ended (or failed) without reaching the write to hold
                pytest.fail("the zombie never reached the write to hold")
            # Z never checkpointed: O resumes from the start of the shard, the sweep completes T.
            owner = pipeline_for(env.settings, AwsClients(env.settings))
            feed(owner, after(stream.first_trip, None))
            (t,) = trip_state(env)
            assert sweep(env, stream.sweep_ms) == [t["tripId"]]
            assert trip_state(env) == []
        finally:
            trips.release.set()  # Z wakes and sends the write it held
        woken.result()
    assert trips.refused is not None, "Z's held write of T was accepted"
    assert trip_state(env) == []  # nothing of T came back
    zombie.close()
    feed(owner, stream.next_trip)
    feed(owner, stream.completes)
    owner.close()
    assert state_digest(env.settings, env.clients) == clean
