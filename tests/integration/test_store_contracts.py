"""One contract, two implementations: the in-memory fakes (``tests/support/fakes.py``) and the boto3 adapters
(``worker/stores/``) on the local AWS pass the same tests, so what the fakes prove elsewhere holds on AWS.

Checked: an idempotent rewrite changes nothing; a stale trip-state write raises with the current item and
overwrites nothing; a store refusing content as invalid raises ``UnwritableUpdate``; a failed write
exits the record processor before any checkpoint."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devtools.local_aws import FaultPlan
from devtools.settings import settings_from
from processors.batch import DeadLetter
from processors.errors import RejectReason, StaleTripState, TransientError, UnwritableUpdate
from processors.ports import Stores
from processors.pseudonymize import Pseudonymizer
from processors.trips import Breadcrumb
from processors.vehicle_state import Observation, StateUpdate
from schemas.dynamo import from_item
from schemas.items import CompletedTripItem, TripIndexItem, TripStateItem
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import TEST_ENV, AwsEnv
from tests.support.fakes import memory_stores
from tests.support.harness import fixture, process_records_input, shard_records
from worker.config import Settings
from worker.pipeline import Pipeline
from worker.record_processor import EXIT_BATCH_FAILED, FleetRecordProcessor
from worker.retry import Retrier
from worker.wiring import aws_stores

KEY = Pseudonymizer(b"contract-key")
PV = KEY.pseudo_vin("1HGCM82633A004352")
NO_SLEEP = Retrier(sleep=lambda _seconds: None)
SHARD = "shardId-000000000000"


@dataclass
class Backend:
    name: str
    stores: Stores
    settings: Settings
    vehicle_state: Callable[[str], dict[str, Any]]
    """The stored vehicle-state item (plain values), {} when absent."""
    dead_letter_count: Callable[[], int]
    fail_vehicle_state: Callable[[], None]
    """From now on, every vehicle-state write fails (past every retry)."""


def memory_backend(settings: Settings) -> Backend:
    stores = memory_stores()

    def fail() -> None:
        stores.vehicle_state.always = TransientError("ServiceUnavailable")

    return Backend(
        "memory",
        stores,
        settings,
        lambda pv: dict(stores.vehicle_state.items.get(pv, {})),
        lambda: len(stores.dead_letters.letters),
        fail,
    )


def aws_backend(env: AwsEnv) -> Backend:
    table = env.settings.table_names["vehicle-state"]

    def vehicle_state(pv: str) -> dict[str, Any]:
        item = env.clients.dynamodb.get_item(TableName=table, Key={"pseudoVin": {"S": pv}}).get("Item")
        return {k: v for k, v in from_item(item).items() if k != "pseudoVin"} if item else {}

    def dead_letter_count() -> int:
        listed = env.clients.s3.list_objects_v2(Bucket=env.settings.archive_bucket, Prefix="dead-letter/")
        return len(listed.get("Contents", []))

    def fail() -> None:
        plan = FaultPlan(
            rate=1.0, kinds=("server_error",), ops=frozenset({"UpdateItem"}), worker_tables=frozenset({table})
        )
        env.aws.app.inject(plan)

    return Backend(
        "aws",
        aws_stores(env.settings, env.clients, KEY),
        env.settings,
        vehicle_state,
        dead_letter_count,
        fail,
    )


@pytest.fixture(params=["memory", "aws"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield memory_backend(settings_from(TEST_ENV))
        return
    env: AwsEnv = request.getfixturevalue("aws_env").with_settings(FLEET_AWS_MAX_ATTEMPTS="1")
    yield aws_backend(env)
    env.aws.app.inject(None)


def trip_item(last_update: str, status: str = "IDLE", **fields: Any) -> TripStateItem:
    return TripStateItem.model_validate(
        {"pseudoVin": PV, "status": status, "lastUpdate": last_update, **fields}
    )


# --- trip store -----------------------------------------------------------------------------------------


def test_a_stale_trip_state_write_raises_with_the_current_item_and_overwrites_nothing(
    backend: Backend,
) -> None:
    trips = backend.stores.trips
    first = trip_item("2025-03-05T14:00:00.000Z")
    trips.write(first, None)
    second = trip_item("2025-03-05T14:00:01.000Z", lastEventTime="2025-03-05T13:59:00.000Z")
    trips.write(second, first.lastUpdate)
    for expected in (None, first.lastUpdate):  # a writer that read nothing, or the older version
        with pytest.raises(StaleTripState) as stale:
            trips.write(trip_item("2025-03-05T14:00:02.000Z"), expected)
        assert (stale.value.pseudo_vin, stale.value.current) == (PV, second)
    assert trips.load([PV, "absent"]) == {PV: second}
    assert list(trips.scan()) == [second]


def test_the_outbox_is_stored_and_read_back_under_its_stored_name(backend: Backend) -> None:
    done = CompletedTripItem(
        tripId="t1", startTime="2025-03-05T13:00:00.000Z", endTime="2025-03-05T13:30:00.000Z",
        endReason="gap", breadcrumbCount=0, distanceMiles=0.0, maxSpeedMph=0.0,
    )  # fmt: skip
    backend.stores.trips.write(trip_item("2025-03-05T14:00:00.000Z", outbox=[done]), None)
    assert backend.stores.trips.load([PV])[PV].outbox == [done]


def test_rewriting_breadcrumbs_is_idempotent_and_ranges_are_in_time_order(backend: Backend) -> None:
    crumbs = [
        Breadcrumb(PV, "trip-1", 1_741_183_200_000 + i * 1_000, 39.7, -104.9, 30.0, 90.0, 100.0 + i, 80)
        for i in (2, 0, 1, 3)
    ]
    trips = backend.stores.trips
    trips.put_breadcrumbs(crumbs)
    trips.put_breadcrumbs(crumbs[:2])
    found = trips.breadcrumbs(PV, "trip-1", 1_741_183_200_000, 1_741_183_202_000)
    assert [c.odometer for c in found] == [100.0, 101.0, 102.0]
    assert trips.breadcrumbs(PV, "other-trip", 0, 2_000_000_000_000) == []
    assert trips.breadcrumbs(PV, "trip-1", 5, 4) == []


# --- vehicle state --------------------------------------------------------------------------------------


def update(at_ms: int, **signals: Any) -> StateUpdate:
    return StateUpdate(PV, at_ms, {name: Observation(at_ms, value) for name, value in signals.items()})


def test_reapplying_a_vehicle_state_update_changes_nothing_and_nothing_rolls_back(backend: Backend) -> None:
    writer = backend.stores.vehicle_state
    writer.apply(update(5_000, vehicleSpeed=50.0))
    once = backend.vehicle_state(PV)
    writer.apply(update(5_000, vehicleSpeed=50.0))
    writer.apply(update(3_000, vehicleSpeed=30.0))  # late: older than what is stored
    assert (
        backend.vehicle_state(PV)
        == once
        == {
            "timestamp": "1970-01-01T00:00:05.000Z",
            "vehicleSpeed": {"value": 50.0, "at": "1970-01-01T00:00:05.000Z"},
        }
    )


def test_content_the_store_cannot_hold_raises_unwritable_update(backend: Backend) -> None:
    deep: Any = "bottom"
    for _ in range(40):  # DynamoDB refuses values nested past 32 levels
        deep = {"d": deep}
    with pytest.raises(UnwritableUpdate) as refused:
        backend.stores.vehicle_state.apply(update(1_000, nested=deep))
    assert refused.value.pseudo_vin == PV
    assert backend.vehicle_state(PV) == {}


# --- dead letters, vault, archive -----------------------------------------------------------------------


def test_a_redelivered_dead_letter_overwrites_its_own_object(backend: Backend) -> None:
    record = KinesisRecord(
        b"{not json", "1HGCM82633A004352", StreamPosition(SHARD, "49001", 0, 1_741_183_200_000)
    )
    letter = DeadLetter(record, RejectReason.MALFORMED_JSON, "line 1")
    writer = backend.stores.dead_letters
    writer.write(letter, writer.data_key())
    writer.write(letter, writer.data_key())
    assert backend.dead_letter_count() == 1


def test_remembering_a_vin_twice_keeps_one_mapping(backend: Backend) -> None:
    vault = backend.stores.vault
    vault.remember(PV, "1HGCM82633A004352")
    vault.remember(PV, "1HGCM82633A004352")
    assert vault.resolve(PV) == "1HGCM82633A004352"
    assert vault.resolve("0" * 32) is None


def test_archive_objects_and_index_items_are_plain_overwrites(backend: Backend) -> None:
    archive = backend.stores.archive
    archive.put_object("trips/x/t.json.gz", b"one")
    archive.put_object("trips/x/t.json.gz", b"two")
    assert archive.get_object("trips/x/t.json.gz") == b"two"
    item = TripIndexItem.model_validate(
        {
            "pseudoVin": PV, "tripId": "t", "tripDate": "2025-03-05", "startTime": "2025-03-05T13:00:00.000Z",
            "endTime": "2025-03-05T13:30:00.000Z", "durationSeconds": 1800, "breadcrumbCount": 0,
            "distanceMiles": 0.0, "maxSpeedMph": 0.0, "avgSpeedMph": 0.0, "s3Key": "trips/x/t.json.gz",
            "endReason": "gap", "expiresAt": 1,
        }
    )  # fmt: skip
    archive.put_index(item)
    archive.put_index(item)


# --- failure => no checkpoint ---------------------------------------------------------------------------


class Checkpointer:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, int | None]] = []

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        self.calls.append((sequence_number, sub_sequence_number))


def process(backend: Backend, checkpointer: Checkpointer, heartbeats: Path) -> None:
    settings = backend.settings.model_copy(
        update={"checkpoint_every_seconds": 0.0, "heartbeat_path": heartbeats}
    )
    processor = FleetRecordProcessor(
        settings, pipeline_factory=lambda: Pipeline(settings, backend.stores, KEY, NO_SLEEP)
    )  # the records arrived an hour ago: the empty, caught-up poll settles every one
    processor.initialize(SimpleNamespace(shard_id=SHARD, sequence_number="TRIM_HORIZON"))
    gc.unfreeze()  # initialize freezes what exists, for a long-lived process; not this test session
    try:
        processor.process_records(
            process_records_input(shard_records(fixture("trips.jsonl"))[:20], checkpointer)
        )
        processor.process_records(process_records_input([], checkpointer))
    finally:
        processor.lease_lost(None)


def test_a_batch_whose_writes_fail_exits_without_a_checkpoint(backend: Backend, tmp_path: Path) -> None:
    backend.fail_vehicle_state()
    checkpointer = Checkpointer()
    with pytest.raises(SystemExit) as exited:
        process(backend, checkpointer, tmp_path)
    assert (exited.value.code, checkpointer.calls) == (EXIT_BATCH_FAILED, [])


def test_the_same_batch_on_healthy_stores_is_checkpointed(backend: Backend, tmp_path: Path) -> None:
    checkpointer = Checkpointer()
    process(backend, checkpointer, tmp_path)
    assert len(checkpointer.calls) == 1
