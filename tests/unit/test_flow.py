"""The forward flow on the in-memory fakes (no AWS): decode -> buffer -> flush -> checkpoint,
the shared commit/re-plan loop, the orphan sweep, and "a failed write never checkpoints"."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.settings import settings_from
from processors.errors import StaleTripState, TransientError
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from processors.trip_items import MARK_VERSION
from processors.trip_planner import TripPlanner
from processors.trips import TripStateMachine, TripThresholds, VehicleTripPlan, step_of
from processors.vehicle_state import named_item
from schemas.items import TripStateItem
from schemas.records import KinesisRecord, StreamPosition, VehicleReading
from tests.conftest import TEST_ENV
from tests.fixtures.build import TRIP_GAP_SECONDS
from tests.support.fakes import MemoryStores, MemoryTripStore, memory_stores
from tests.support.harness import (
    RecordingCheckpointer,
    ShardRecord,
    batches,
    fixture,
    in_process_processors,
    process_records_input,
    shard_records,
)
from worker.config import Settings
from worker.pipeline import BatchOutcome, Pipeline
from worker.record_processor import EXIT_BATCH_FAILED, FleetRecordProcessor
from worker.replay import StreamEntry
from worker.retry import TRIP_REPLANS, Retrier
from worker.sweep import sweep
from worker.trip_commit import Replanned, TripArchiver, TripCommitter, commit_with_replans
from worker.wiring import TripStores

SHARD = "shardId-000000000000"
KEY = Pseudonymizer(b"flow-tests-key")
VIN = "1HGCM82633A004352"
NO_SLEEP = Retrier(sleep=lambda _seconds: None)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_from(
        {
            **TEST_ENV,
            "FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS),
            "FLEET_CHECKPOINT_EVERY_SECONDS": "0",
            "FLEET_HEARTBEAT_PATH": str(tmp_path),
        }
    )


def kinesis(records: Sequence[ShardRecord]) -> list[KinesisRecord]:
    return [
        KinesisRecord(r.data, r.partition_key, StreamPosition(SHARD, r.sequence_number, 0, r.arrival_ms))
        for r in records
    ]


def run(pipeline: Pipeline, records: Sequence[ShardRecord], size: int = 150) -> list[BatchOutcome]:
    """The batches, a caught-up empty poll (the stream clock passes every record: all settle), then what
    the end of the shard does: everything pending written (counted in the last outcome)."""
    outcomes = [pipeline.process(kinesis(batch)) for batch in batches(records, size)]
    outcomes.append(pipeline.process([], int(time.time() * 1000), caught_up=True))
    flushed = pipeline.end_of_shard(int(time.time() * 1000), lambda _position: None)
    last = outcomes[-1]
    outcomes[-1] = replace(
        last,
        writes=last.writes + flushed.writes,
        dead_letters=last.dead_letters + flushed.dead_letters,
        trips_archived=last.trips_archived + flushed.trips_archived,
        breadcrumbs=last.breadcrumbs + flushed.breadcrumbs,
    )
    return outcomes


def native(vin: str, at: str, **signals: Any) -> bytes:
    return orjson.dumps({"vin": vin, "timestamp": at, "signals": signals})


def test_a_clean_pass_archives_every_completed_trip_once_and_reports_it(settings: Settings) -> None:
    stores = memory_stores()
    pipeline = Pipeline(settings, stores, KEY, NO_SLEEP)
    records = shard_records(fixture("trips.jsonl"))
    outcomes = run(pipeline, records)
    pipeline.close()
    archived = sum(o.trips_archived for o in outcomes)
    assert archived >= 4 and archived == len(stores.archive.index)
    assert all(i.s3Key in stores.archive.objects for i in stores.archive.index.values())
    assert not any(item.outbox for item in stores.trips.items.values())
    assert outcomes[-2].last_position == kinesis(records[-1:])[0].position  # the last poll was empty
    assert sum(o.applied for o in outcomes) == len(records)
    assert len(stores.vault.vins) == len(stores.vehicle_state.items) == 5


def test_a_record_the_store_refuses_is_dead_lettered_and_the_rest_applied(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    stores = memory_stores()
    stores.vehicle_state.refuse = {"blob"}
    records = shard_records(
        [
            StreamEntry(native(VIN, "2025-03-05T14:00:00Z", vehicleSpeed=3.0), VIN),
            StreamEntry(native(VIN, "2025-03-05T14:00:01Z", blob="x"), VIN),
            StreamEntry(native(VIN, "2025-03-05T14:00:02Z", odometer=9.0), VIN),
        ]
    )
    with caplog.at_level(logging.WARNING):
        outcomes = run(Pipeline(settings, stores, KEY, NO_SLEEP), records)
    assert (outcomes[0].records, outcomes[0].applied, sum(o.dead_letters for o in outcomes)) == (3, 3, 1)
    (letter,) = stores.dead_letters.letters.values()
    assert (letter.reason, letter.record.position.sequence_number) == (
        "unwritable",
        records[1].sequence_number,
    )
    assert [r.getMessage() for r in caplog.records].count("record_dead_lettered") == 1
    (item,) = map(named_item, stores.vehicle_state.items.values())
    assert (item["vehicleSpeed"]["value"], item["odometer"]["value"]) == (3.0, 9.0)
    assert "blob" not in item


def test_an_older_valid_record_after_a_refused_update_still_lands(settings: Settings) -> None:
    """A refused update was remembered as written: a later record with an older event time then looked
    covered by values that were never stored, and was dropped (found in review, 2026-12-05)."""
    stores = memory_stores()
    stores.vehicle_state.refuse = {"blob"}
    pipeline = Pipeline(settings, stores, KEY, NO_SLEEP)
    t0 = 1_800_000_000_000

    def record(sequence: int, t: int, **signals: Any) -> KinesisRecord:
        data = native(VIN, format_time(t), **signals)
        return KinesisRecord(data, VIN, StreamPosition(SHARD, str(sequence), 0, t + 500))

    pipeline.process([record(1, t0, vehicleSpeed=0.0)], t0 + 600)
    pipeline.checkpoint(t0 + 700, lambda _position: None)
    pipeline.process([record(2, t0 + 2000, vehicleSpeed=5.0, blob="x")], t0 + 2600)
    pipeline.checkpoint(t0 + 2700, lambda _position: None)  # refused: dead-lettered
    pipeline.process([record(3, t0 + 1000, vehicleSpeed=4.0)], t0 + 3600)  # older, valid
    pipeline.checkpoint(t0 + 3700, lambda _position: None)
    pipeline.close()
    item = named_item(stores.vehicle_state.items[KEY.pseudo_vin(VIN)])
    assert item["vehicleSpeed"]["value"] == 4.0, item


def test_a_vehicle_another_writer_moved_is_replanned_on_top_of_its_state(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    stores = memory_stores()
    pipeline = Pipeline(settings, stores, KEY, NO_SLEEP)
    records = shard_records(fixture("trips.jsonl"))
    half = len(records) // 2
    run(pipeline, records[:half])
    # The orphan sweep claims every open trip meanwhile: the pipeline's cached versions are now stale.
    report = sweep(
        settings, TripStores(stores.trips, stores.trail, stores.archive), now_ms=10**15, retrier=NO_SLEEP
    )
    assert report.orphaned
    with caplog.at_level(logging.WARNING):
        run(pipeline, records[half:])
    assert "trip_state_conflict" in [r.getMessage() for r in caplog.records]
    assert not any(item.outbox for item in stores.trips.items.values())
    assert all(i.s3Key in stores.archive.objects for i in stores.archive.index.values())


# --- the shared commit/re-plan loop ---------------------------------------------------------------------


def plan(pseudo_vin: str, version: str | None = None) -> VehicleTripPlan:
    return VehicleTripPlan(pseudo_vin, [], [], 0, {}, True, version)


def stale(pseudo_vin: str) -> StaleTripState:
    return StaleTripState(pseudo_vin, TripStateItem(pseudoVin=pseudo_vin, status="IDLE", lastUpdate="v2"))


def test_contention_ends_contended_after_the_limits_rounds() -> None:
    commits: list[str] = []

    def commit(p: VehicleTripPlan) -> tuple[str | None, int]:
        commits.append(p.pseudo_vin)
        raise stale(p.pseudo_vin)

    outcome = commit_with_replans([plan("a")], commit, lambda s: Replanned(plan(s.pseudo_vin, "v2")))
    assert commits == ["a"] * TRIP_REPLANS.rounds
    assert [s.pseudo_vin for s in outcome.contended] == ["a"]


def test_a_vehicle_not_ours_to_redo_is_left_contended_and_the_others_commit() -> None:
    committed: list[tuple[str, str | None]] = []

    def commit(p: VehicleTripPlan) -> tuple[str | None, int]:
        if p.pseudo_vin == "a":
            raise stale("a")
        return "v1", 1

    commits = commit_with_replans(
        [plan("a"), plan("b")], commit, lambda s: None, on_committed=lambda pv, v: committed.append((pv, v))
    )
    assert (commits.versions, commits.requests, committed) == ({"b": "v1"}, 1, [("b", "v1")])
    assert [s.pseudo_vin for s in commits.contended] == ["a"]


def test_a_failure_is_raised_only_after_every_commit_of_the_round_ended() -> None:
    commits: list[str] = []

    def commit(p: VehicleTripPlan) -> tuple[str | None, int]:
        commits.append(p.pseudo_vin)
        if p.pseudo_vin == "a":
            raise TransientError("SlowDown")
        return "v1", 1

    with pytest.raises(TransientError):
        commit_with_replans([plan("a"), plan("b")], commit, lambda s: None)
    assert commits == ["a", "b"]


def test_the_executor_fails_the_batch_when_vehicles_stay_contended(settings: Settings) -> None:
    class AlwaysMoved(MemoryTripStore):
        """Another writer always got there first (and deleted the item: each re-plan writes again)."""

        def write(self, item: TripStateItem, expected_last_update: str | None) -> None:
            raise StaleTripState(item.pseudoVin, None)

    stores = replace(memory_stores(), trips=AlwaysMoved())
    with pytest.raises(TransientError) as raised:
        run(Pipeline(settings, stores, KEY, NO_SLEEP), shard_records(fixture("trips.jsonl")))
    assert raised.value.reason == "trip_state_contention"


# --- the orphan sweep -----------------------------------------------------------------------------------


def open_trips(settings: Settings) -> MemoryStores:
    stores = memory_stores()
    records = shard_records(fixture("trips.jsonl"))
    run(Pipeline(settings, stores, KEY, NO_SLEEP), records)
    assert any(item.tripId for item in stores.trips.items.values()), "the fixture leaves a trip open"
    return stores


def test_the_sweep_finishes_its_own_claim_when_a_later_step_failed(settings: Settings) -> None:
    stores = open_trips(settings)
    open_ids = {i.tripId for i in stores.trips.items.values() if i.status != "IDLE"}
    stores.archive.fail_next = [TransientError("SlowDown")]  # after the claim landed
    report = sweep(
        settings, TripStores(stores.trips, stores.trail, stores.archive), now_ms=10**15, retrier=NO_SLEEP
    )
    assert (set(report.orphaned), report.lost_race) == (open_ids, 0)
    # trip-state holds open trips only: archived, the items are gone and the vehicles are their marks
    assert stores.trips.items == {}
    assert set(stores.trips.marks) >= {pv for pv, _ in stores.archive.index}
    assert open_ids <= {trip_id for _pv, trip_id in stores.archive.index}


def test_the_sweep_leaves_a_trip_to_the_processor_that_wrote_meanwhile(settings: Settings) -> None:
    stores = open_trips(settings)

    class ProcessorWroteFirst(MemoryTripStore):
        def open_items(self, pseudo_vins: Sequence[str]) -> tuple[dict[str, TripStateItem], int]:
            found, requests = super().open_items(pseudo_vins)
            for item in found.values():
                # the vehicle's processor writes between the sweep's read and its claim
                self.items[item.pseudoVin] = item.model_copy(
                    update={"lastUpdate": "9999-12-31T00:00:00.000Z"}
                )
            return found, requests

    racing = ProcessorWroteFirst()
    racing.items, racing.marks = dict(stores.trips.items), dict(stores.trips.marks)
    report = sweep(
        settings, TripStores(racing, stores.trail, stores.archive), now_ms=10**15, retrier=NO_SLEEP
    )
    assert report.orphaned == [] and report.lost_race == sum(
        1 for i in stores.trips.items.values() if i.status != "IDLE"
    )


# --- the record processor: a failed write never checkpoints ---------------------------------------------


def deliver(
    processor: FleetRecordProcessor, records: Sequence[ShardRecord], checkpointer: RecordingCheckpointer
) -> None:
    processor.process_records(process_records_input(records, checkpointer))


@pytest.fixture
def processor_on(settings: Settings) -> Iterator[Any]:
    with in_process_processors() as start:
        # An hour after the records arrived: an empty, caught-up poll settles everything buffered.
        yield lambda stores: start(
            settings, lambda: Pipeline(settings, stores, KEY, NO_SLEEP), lambda: time.time() + 3600, SHARD
        )


def test_a_batch_is_checkpointed_at_its_last_record_once_the_machine_consumed_it(processor_on: Any) -> None:
    records = shard_records(fixture("trips.jsonl"))[:50]
    checkpointer = RecordingCheckpointer()
    processor = processor_on(memory_stores())
    deliver(processor, records, checkpointer)
    assert checkpointer.calls == []  # every record still settling: the watermark is before the first
    deliver(processor, [], checkpointer)
    assert checkpointer.calls == [(records[-1].sequence_number, 0)]


def test_a_failed_write_exits_before_any_checkpoint(processor_on: Any) -> None:
    stores = memory_stores()
    stores.vehicle_state.always = TransientError("SlowDown")
    checkpointer = RecordingCheckpointer()
    with pytest.raises(SystemExit) as exited:
        deliver(processor_on(stores), shard_records(fixture("trips.jsonl"))[:50], checkpointer)
    assert (exited.value.code, checkpointer.calls) == (EXIT_BATCH_FAILED, [])


# --- trip-state holds open trips only ---------------------------------------------------------------------


def test_an_old_idle_item_is_read_as_the_mark_and_deleted_by_the_next_archival() -> None:
    """Items left IDLE by earlier versions keep their high-water mark (a replay of the archived trip
    starts nothing); the vehicle's next archival deletes the item and leaves its mark in vin-mapping."""
    stores = memory_stores()
    store, trail, archive = MemoryTripStore(), stores.trail, stores.archive
    pv, t0 = "ab" * 16, 1_741_185_121_000
    old = TripStateItem(
        pseudoVin=pv, status="IDLE", lastEventTime=format_time(t0 + 10_000), lastUpdate=format_time(t0)
    )
    store.items[pv] = old
    planner = TripPlanner(TripStateMachine(TripThresholds(gap_ms=60_000)))
    planner.adopt(pv, store.load([pv])[pv])
    readings = [
        VehicleReading(
            pv, t0 + s * 1000, {"vehicleSpeed": v}, StreamPosition("shardId-000000000000", str(s), 0, 0)
        )
        for s, v in ((5, 30.0), (20, 30.0), (21, 0.0), (90, 0.0))
    ]
    planner.consume(pv, [step_of(r, r.position.sequence_number.encode()) for r in readings])
    plan = planner.plan_for(pv)
    assert [t.start_time_ms for t in plan.outbox] == [t0 + 20_000]  # not from the record under the mark
    TripCommitter(store, TripArchiver(trail, archive, TripThresholds(gap_ms=60_000))).commit(plan)
    assert store.items == {}
    assert store.marks[pv].hwm == t0 + 90_000 and store.marks[pv].recent == [
        [t0 + 20_000, t0 + 21_000, t0 + 90_000, (t0 + 20_000) // 1000]
    ]
    assert store.load([pv])[pv].lastUpdate == MARK_VERSION


# --- a record that arrives after its trip was archived ----------------------------------------------------


def test_a_record_arriving_after_its_trip_was_archived_is_counted_and_logged_not_archived(
    processor_on: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Its event time is in the archived trip's span, its arrival after the trip's completion point R: the
    archive is kept as it is, the record is counted (``LateAfterArchive``) and logged with the trip's id."""
    t0 = 1_741_185_000_000  # 2025-03-05T14:30:00Z

    def at(second: int, speed: float, arrival_ms: int | None = None, n: int = 0) -> ShardRecord:
        t = t0 + second * 1000
        data = native(VIN, format_time(t), vehicleSpeed=speed, lat=39.7 + second / 1e4, lng=-104.9)
        arrival = arrival_ms if arrival_ms is not None else t + 500
        return ShardRecord(data, VIN, str(10**20 + n), arrival)

    drive = [at(s, 30.0 if s < 20 else 0.0, n=s) for s in range(0, 20 + 2 * TRIP_GAP_SECONDS)]
    stores = memory_stores()
    processor, checkpointer = processor_on(stores), RecordingCheckpointer()
    deliver(processor, drive, checkpointer)
    deliver(processor, [], checkpointer)  # everything settles: the trip completes and is archived
    ((key, body),) = stores.archive.objects.items()
    ((pv, trip_id), index) = next(iter(stores.archive.index.items()))
    # R: the stream clock when the exact machine consumed the completing record (20 + gap): once the
    # vehicle had sent a record the allowed lateness (30 s) later, at second 20 + gap + 31.
    completion = t0 + (20 + TRIP_GAP_SECONDS + 31) * 1000 + 500
    assert index.breadcrumbCount == 21

    late = at(7, 30.0, arrival_ms=completion + 4000, n=1000)  # recorded mid-trip, arrives after R
    in_time = at(8, 30.0, arrival_ms=completion, n=1001)  # a resend that made it by R: in the archive
    caplog.clear()
    with caplog.at_level(logging.INFO):
        deliver(processor, [late, in_time], checkpointer)
        deliver(processor, [], checkpointer)
    (line,) = [r for r in caplog.records if r.getMessage() == "late_after_archive"]
    assert line.levelname == "WARNING"
    assert line.fields == {  # type: ignore[attr-defined]
        "pseudoVin": pv,
        "tripId": trip_id,
        "eventTime": format_time(t0 + 7000),
        "arrival": format_time(completion + 4000),
    }
    assert pv == KEY.pseudo_vin(VIN) and trip_id == f"trip_20250305_143000_{pv}"
    documents = [r.emf for r in caplog.records if hasattr(r, "emf")]
    assert [d["LateAfterArchive"] for d in documents] == [1]
    assert [d["LateForMachine"] for d in documents] == [2]
    (batch,) = [r for r in caplog.records if r.getMessage() == "batch"]
    assert batch.fields["lateAfterArchive"] == 1  # type: ignore[attr-defined]
    assert stores.archive.objects == {key: body} and stores.archive.index[(pv, trip_id)] == index
    assert stores.trips.marks[pv].recent[-1][3] * 1000 == t0  # the id's second, kept with the trip
    # the crumb is on the live trail all the same
    assert any(c.t_ms == t0 + 7000 for c in stores.trail.read(pv, t0, t0 + 20_000))


def test_a_record_received_while_the_completing_record_settles_is_in_the_archive(
    processor_on: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The record that completes the trip has arrived but waits for the allowed lateness when a record of
    the trip arrives, far behind: it is late for the machine, but it was received before the machine
    consumed the completing record, so it arrived by R (the stream clock then) and its crumb is one of the
    archive's rows: not counted, not lost. A record of a sealed segment received after the seal is counted
    with the open trip's id."""
    t0 = 1_741_185_000_000  # 2025-03-05T14:30:00Z

    def at(second: int, speed: float, arrival_ms: int | None = None, n: int = 0) -> ShardRecord:
        t = t0 + second * 1000
        data = native(VIN, format_time(t), vehicleSpeed=speed, lat=39.7 + second / 1e4, lng=-104.9)
        return ShardRecord(data, VIN, str(10**20 + n), arrival_ms if arrival_ms is not None else t + 500)

    completing = 20 + TRIP_GAP_SECONDS
    drive = [at(s, 30.0 if s < 20 else 0.0, n=s) for s in range(completing + 1)]
    late = at(7, 30.0, arrival_ms=drive[-1].arrival_ms + 2000, n=1000)
    stores = memory_stores()
    processor, checkpointer = processor_on(stores), RecordingCheckpointer()
    with caplog.at_level(logging.INFO):
        deliver(processor, [*drive, late], checkpointer)
        # The completing record is still settling. And no on-time archive: records of 2025 read now are a
        # backlog, whose final archive comes sooner than the on-time one would be of use.
        assert not stores.archive.index and not stores.archive.objects
        deliver(processor, [], checkpointer)
    ((pv, trip_id),) = stores.archive.index
    assert not stores.archive.index[(pv, trip_id)].provisional
    assert not [r for r in caplog.records if r.getMessage() == "late_after_archive"]
    documents = [r.emf for r in caplog.records if hasattr(r, "emf")]
    assert sum(d["LateAfterArchive"] for d in documents) == 0
    assert sum(d["LateForMachine"] for d in documents) == 1
    assert stores.archive.index[(pv, trip_id)].breadcrumbCount == 21  # the late record's crumb: a resend
