"""One contract, two implementations: the in-memory fakes (``tests/support/fakes.py``) and the boto3 adapters
(``worker/stores/``) on the local AWS pass the same tests, so what the fakes prove elsewhere holds on AWS.

Checked: an idempotent rewrite changes nothing; a trail merge is a join (idempotent, order-free, one instant
sent as several records ends as one crumb with all their fields, concurrent writers converge, a late crumb
joins its bucket, ``expiresAt`` never decreases); a stale trip-state write raises with the current item and
overwrites nothing; a store refusing content as invalid raises ``UnwritableUpdate``; a shard's progress
report replaces its last one whole and is never a vehicle; a failed write exits the record processor before
any checkpoint."""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from devtools.local_aws import FaultPlan
from devtools.settings import settings_from
from processors.batch import DeadLetter
from processors.dead_letter import dead_letter_key
from processors.errors import (
    ConflictReason,
    RejectReason,
    StaleTripState,
    TransientError,
    UnwritableUpdate,
    WriteOnceConflict,
)
from processors.frontier import ShardProgress, progress_key
from processors.ports import Stores
from processors.pseudonymize import PSEUDONYM_KEY_ITEM, Pseudonymizer
from processors.signals import parse_time
from processors.trail import BucketMerge, Crumb, bucket_of, crumb_of, encode, join, pack, slot_of
from processors.trip_items import MARK_VERSION, item_from_mark, sweep_shard
from processors.vehicle_state import Observation, StateUpdate
from schemas.dynamo import from_item, to_item
from schemas.items import CompletedTripItem, TripIndexItem, TripMarkItem, TripStateItem
from schemas.records import KinesisRecord, Location, StreamPosition, VehicleReading
from tests.conftest import TEST_ENV, AwsEnv
from tests.support.fakes import memory_stores
from tests.support.harness import RecordingCheckpointer, fixture, process_records_input, shard_records
from worker.config import Settings
from worker.pipeline import Pipeline
from worker.record_processor import EXIT_BATCH_FAILED, FleetRecordProcessor
from worker.retry import Retrier
from worker.stores.dynamo_trail import DynamoTrail
from worker.wiring import aws_stores

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

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
    dead_letter: Callable[[str], object]
    """What is stored at a dead letter's key (the fake: the ``DeadLetter``; S3: the object's bytes)."""
    fail_vehicle_state: Callable[[], None]
    """From now on, every vehicle-state write fails (past every retry)."""
    set_vault_attribute: Callable[[str, str, Any], None]
    """Set another attribute on a vin-mapping item (as a trip mark would be written)."""
    vault_item: Callable[[str], dict[str, Any]]
    """The stored vin-mapping item (plain values), {} when absent."""
    trail_item: Callable[[str, int], dict[str, Any]]
    """The stored bucket item (plain values), {} when absent."""
    index_item: Callable[[str, str], dict[str, Any]]
    """The stored trips-index item (plain values), {} when absent."""


def memory_backend(settings: Settings) -> Backend:
    stores = memory_stores()

    def fail() -> None:
        stores.vehicle_state.always = TransientError("ServiceUnavailable")

    def set_vault_attribute(pv: str, name: str, value: Any) -> None:
        stores.vault.items.setdefault(pv, {"pseudoVin": pv})[name] = value

    return Backend(
        "memory",
        stores,
        settings,
        lambda pv: dict(stores.vehicle_state.items.get(pv, {})),
        lambda: len(stores.dead_letters.letters),
        lambda key: stores.dead_letters.letters[key],
        fail,
        set_vault_attribute,
        lambda pv: dict(stores.vault.items.get(pv, {})),
        lambda pv, bucket: dict(stores.trail.items.get((pv, bucket), {})),
        lambda pv, trip: (
            stored.model_dump(exclude_none=True)
            if (stored := stores.archive.index.get((pv, trip))) is not None
            else {}
        ),
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

    vault_table = env.settings.table_names["vin-mapping"]

    def set_vault_attribute(pv: str, name: str, value: Any) -> None:
        env.clients.dynamodb.update_item(
            TableName=vault_table,
            Key={"pseudoVin": {"S": pv}},
            UpdateExpression="SET #a = :v",
            ExpressionAttributeNames={"#a": name},
            ExpressionAttributeValues={":v": to_item({"v": value})["v"]},
        )

    def vault_item(pv: str) -> dict[str, Any]:
        item = env.clients.dynamodb.get_item(TableName=vault_table, Key={"pseudoVin": {"S": pv}}).get("Item")
        return from_item(item) if item else {}

    def trail_item(pv: str, bucket: int) -> dict[str, Any]:
        item = env.clients.dynamodb.get_item(
            TableName=env.settings.table_names["live-breadcrumbs"],
            Key={"pseudoVin": {"S": pv}, "bucket": {"N": str(bucket)}},
            ConsistentRead=True,
        ).get("Item")
        return from_item(item) if item else {}

    def index_item(pv: str, trip: str) -> dict[str, Any]:
        item = env.clients.dynamodb.get_item(
            TableName=env.settings.table_names["trips-index"],
            Key={"pseudoVin": {"S": pv}, "tripId": {"S": trip}},
            ConsistentRead=True,
        ).get("Item")
        return from_item(item) if item else {}

    return Backend(
        "aws",
        aws_stores(env.settings, env.clients, KEY),
        env.settings,
        vehicle_state,
        dead_letter_count,
        lambda key: env.clients.s3.get_object(Bucket=env.settings.archive_bucket, Key=key)["Body"].read(),
        fail,
        set_vault_attribute,
        vault_item,
        trail_item,
        index_item,
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
    assert trips.open_items([PV, "absent"])[0] == {PV: second}


def open_trip(last_update: str, start: str, **fields: Any) -> TripStateItem:
    return trip_item(last_update, "ACTIVE", tripId=f"trip_x_{PV}", startTime=start, **fields)


def test_an_archived_trip_leaves_a_mark_and_no_item_and_cannot_be_created_again(backend: Backend) -> None:
    """trip-state holds open trips only. Closing stores the mark (a monotone register) and deletes the
    item; creating an item whose trip started at or before the mark's high-water mark (a zombie bringing
    an archived trip back) is refused with the mark as the current state."""
    trips = backend.stores.trips
    trip = open_trip("2025-03-05T14:00:00.000Z", "2025-03-05T13:00:00.000Z")
    trips.write(trip, None)
    hwm = parse_time("2025-03-05T13:30:00.000Z")
    mark = TripMarkItem(hwm=hwm, rbl=True, recent=[[hwm - 1800_000, hwm, hwm + 1]], ts=hwm // 1000 - 1800)
    assert trips.close(PV, mark, trip.lastUpdate) == 2
    loaded = trips.load([PV])[PV]
    assert loaded == item_from_mark(PV, mark) and loaded.lastUpdate == MARK_VERSION
    assert trips.open_items([PV])[0] == {}
    with pytest.raises(StaleTripState) as stale:  # the zombie: its trip started before the mark
        trips.write(trip, None)
    assert stale.value.current == loaded
    assert trips.open_items([PV])[0] == {}
    # An older mark does not move it back; the next trip, after the mark, is created.
    trips.close(PV, mark.model_copy(update={"hwm": hwm - 1}), None)
    assert trips.load([PV])[PV] == loaded
    later = open_trip("2025-03-05T15:00:00.000Z", "2025-03-05T14:30:00.000Z")
    trips.write(later, None)
    assert trips.load([PV])[PV] == later
    # A stale delete raises with what is stored and deletes nothing.
    with pytest.raises(StaleTripState) as stale:
        trips.close(PV, None, trip.lastUpdate)
    assert stale.value.current == later and trips.open_items([PV])[0] == {PV: later}


def test_the_sweep_index_names_the_silent_open_trips_of_a_shard(backend: Backend) -> None:
    trips = backend.stores.trips
    shard = sweep_shard(PV)
    trips.write(open_trip("2025-03-05T14:00:00.000Z", "2025-03-05T13:00:00.000Z", sweepShard=shard,
                          idleAfter=1_000_000_200), None)  # fmt: skip
    assert trips.silent(shard, 1_000_000_200)[0] == [PV]
    assert trips.silent(shard, 1_000_000_199)[0] == []
    assert trips.silent((shard + 1) % 16, 2_000_000_000)[0] == []


def test_the_outbox_is_stored_and_read_back_under_its_stored_name(backend: Backend) -> None:
    done = CompletedTripItem(
        tripId="t1", startTime="2025-03-05T13:00:00.000Z", endTime="2025-03-05T13:30:00.000Z",
        endReason="gap", completionMs=1_741_181_700_000, reportsBatteryLevel=True,
    )  # fmt: skip
    backend.stores.trips.write(trip_item("2025-03-05T14:00:00.000Z", outbox=[done]), None)
    assert backend.stores.trips.load([PV])[PV].outbox == [done]


# --- trail --------------------------------------------------------------------------------------------

T0 = 1_741_183_200_000  # 2025-03-05T14:00:00Z, a bucket boundary
BUCKET = T0 // 1000


def crumb(t: int, arrival: int, speed: float = 30.0, odometer: float = 100.0) -> Crumb:
    location = Location(39.7, -104.9)
    signals: dict[str, Any] = {"vehicleSpeed": speed, "odometer": odometer, "location": location}
    made = crumb_of(VehicleReading(PV, t, signals, StreamPosition(SHARD, "1", 0, arrival)))
    assert made is not None
    return made


def slots(item: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in item.items() if k not in ("pseudoVin", "bucket", "expiresAt")}


def test_re_merging_the_trail_is_idempotent_and_reads_are_in_time_order(backend: Backend) -> None:
    crumbs = [crumb(T0 + i * 1_000, T0 + 5_000, odometer=100.0 + i) for i in (2, 0, 1, 3, 20)]
    trail = backend.stores.trail
    trail.merge(pack(PV, crumbs))
    stored = backend.trail_item(PV, BUCKET)
    trail.merge(pack(PV, crumbs[:2]))
    trail.merge(pack(PV, crumbs))
    assert backend.trail_item(PV, BUCKET) == stored
    assert stored["expiresAt"] == (T0 + 5_000) // 1000 + 86_400
    found = trail.read(PV, T0, T0 + 2_000)
    assert [c.odometer for c in found] == [100.0, 101.0, 102.0]
    assert found == sorted(crumbs[:3], key=lambda c: c.t_ms)
    assert [c.t_ms for c in trail.read(PV, T0, T0 + 60_000)] == [T0 + i * 1_000 for i in (0, 1, 2, 3, 20)]
    assert trail.read(PV, T0 + 5, T0 + 4) == [] and trail.read("f" * 32, T0, T0 + 60_000) == []


def test_a_resend_of_one_sample_keeps_its_earliest_arrival_in_either_order(backend: Backend) -> None:
    earlier, later = crumb(T0 + 10, T0 + 1_000), crumb(T0 + 10, T0 + 9_000)  # a resend of one sample
    other = crumb(T0 + 500, T0 + 9_000)
    trail = backend.stores.trail
    trail.merge(pack(PV, [earlier]))
    trail.merge(pack(PV, [later, other]))  # the stored slot covers the resend already; the other is new
    (winner,) = [v for k, v in slots(backend.trail_item(PV, BUCKET)).items() if k == slot_of(T0 + 10)]
    assert winner == encode(earlier) > encode(later)
    assert trail.read(PV, T0, T0 + 1_000) == [earlier, other]
    trail.merge(pack(PV, [later]))
    assert slots(backend.trail_item(PV, BUCKET))[slot_of(T0 + 10)] == encode(earlier)


def test_a_late_crumb_joins_its_existing_bucket_and_expires_at_never_decreases(backend: Backend) -> None:
    trail = backend.stores.trail
    trail.merge(pack(PV, [crumb(T0 + 1_000, T0 + 30 * 3_600_000)]))  # accepted 30 h late
    late = crumb(T0 + 2_000, T0 + 3_000)  # a crumb that arrived earlier, merged later
    trail.merge(pack(PV, [late]))
    item = backend.trail_item(PV, BUCKET)
    assert item["expiresAt"] == (T0 + 30 * 3_600_000) // 1000 + 86_400  # from arrival, not event time
    assert slots(item)[slot_of(late.t_ms)] == encode(late) and len(slots(item)) == 2


def test_a_full_bucket_of_the_longest_values_is_written_in_chunks(backend: Backend) -> None:
    longest = -2.2250738585072014e-308
    crumbs = [
        Crumb(T0 + i * 10, T0 + 20_000, longest, longest, longest, longest, longest, longest, longest)
        for i in range(1500)
    ]
    (merge,) = pack(PV, crumbs)
    backend.stores.trail.merge([merge])
    assert slots(backend.trail_item(PV, BUCKET)) == dict(merge.slots)
    assert len(backend.stores.trail.read(PV, T0, T0 + 15_000)) == 1500
    backend.stores.trail.merge([merge])  # every guard equal: nothing left to write
    assert slots(backend.trail_item(PV, BUCKET)) == dict(merge.slots)


def test_merges_of_one_bucket_by_two_writers_in_any_order_leave_the_same_item(backend: Backend) -> None:
    a = [crumb(T0 + i * 700, T0 + 9_000 - i * 100, speed=float(i)) for i in range(12)]
    b = [crumb(T0 + i * 700, T0 + 2_000 + i * 100, speed=float(i)) for i in range(6, 18)]
    trail = backend.stores.trail
    trail.merge(pack(PV, a))
    trail.merge(pack(PV, b))
    first = backend.trail_item(PV, BUCKET)
    other = "e" * 32
    trail.merge([BucketMerge(other, m.bucket, m.slots, m.expires_at) for m in pack(PV, b)])
    trail.merge([BucketMerge(other, m.bucket, m.slots, m.expires_at) for m in pack(PV, a)])
    assert {**backend.trail_item(other, BUCKET), "pseudoVin": PV} == first
    assert bucket_of(T0 + 17 * 700) == BUCKET


def merge_in(span_s: int, crumbs: list[Crumb]) -> BucketMerge:
    """``crumbs`` as one writer packs them into a bucket of ``span_s`` (the TrailBuffer's choice for a slow
    reporter): the bucket's start as key, each slot relative to it."""
    bucket = bucket_of(crumbs[0].t_ms, span_s)
    assert all(bucket_of(c.t_ms, span_s) == bucket for c in crumbs)
    slots = {slot_of(c.t_ms, bucket): encode(c) for c in crumbs}
    return BucketMerge(PV, bucket, slots, max(c.arrival_s for c in crumbs) + 86_400)


def test_a_reader_finds_every_crumb_whatever_span_its_bucket_has(backend: Backend) -> None:
    # A 30 s reporter's 450 s bucket, a 5 s reporter's 75 s one, and a restarted writer's 15 s bucket that
    # holds a record the 450 s one holds too: the reader needs no span, and sees that record once.
    start = bucket_of(T0, 450) * 1000
    wide = [crumb(start + i * 30_000 + 5, start + i * 30_000 + 1_000) for i in range(15)]
    mid = [crumb(start + 450_000 + i * 5_000, start + 451_000 + i * 5_000) for i in range(15)]
    again = [wide[-1], crumb(wide[-1].t_ms + 1_000, wide[-1].t_ms + 2_000)]
    trail = backend.stores.trail
    trail.merge([merge_in(450, wide), merge_in(75, mid), merge_in(15, again)])
    everything = trail.read(PV, start, start + 525_000)
    assert everything == sorted([*wide, *mid, again[1]], key=lambda c: (c.t_ms, encode(c)))
    # A range starting late in the 450 s bucket still reads it (the query reaches back a full span).
    assert trail.read(PV, wide[-2].t_ms, wide[-1].t_ms) == wide[-2:]
    assert trail.read(PV, mid[3].t_ms, mid[3].t_ms) == [mid[3]]


def record(t: int, arrival: int, **signals: Any) -> Crumb:
    made = crumb_of(VehicleReading(PV, t, signals, StreamPosition(SHARD, "1", 0, arrival)))
    assert made is not None
    return made


SPLIT = T0 + 1_234
"""An instant a gateway sends as several records."""


def split_instant() -> list[Crumb]:
    """One instant as three records: location; speed and heading; a resend with another speed and soc."""
    return [
        record(SPLIT, T0 + 3_000, location=Location(39.7, -104.9)),
        record(SPLIT, T0 + 2_000, vehicleSpeed=61.5, heading=182),
        record(SPLIT, T0 + 9_000, vehicleSpeed=60.0, soc=70.0),
    ]


def test_two_records_of_one_instant_with_disjoint_fields_end_as_one_crumb_with_both(backend: Backend) -> None:
    located, moving, _ = split_instant()
    trail = backend.stores.trail
    trail.merge(pack(PV, [located]))
    trail.merge(pack(PV, [moving]))
    (both,) = trail.read(PV, T0, T0 + 15_000)
    assert (both.t_ms, both.lat, both.lng, both.vehicle_speed, both.heading) == (
        SPLIT,
        39.7,
        -104.9,
        61.5,
        182,
    )
    assert both.arrival_ms == T0 + 2_000  # the earlier of the two
    item = backend.trail_item(PV, BUCKET)
    assert slots(item) == {slot_of(SPLIT): encode(join(located, moving))}
    assert item["expiresAt"] == (T0 + 3_000) // 1000 + 86_400  # the later of the two
    trail.merge(pack(PV, [located]))  # a redelivery of either half changes nothing
    trail.merge(pack(PV, [moving]))
    assert backend.trail_item(PV, BUCKET) == item


def test_the_order_of_two_records_of_one_instant_does_not_matter(backend: Backend) -> None:
    located, moving, _ = split_instant()
    trail, other = backend.stores.trail, "e" * 32
    for pseudo_vin, order in ((PV, [located, moving]), (other, [moving, located])):
        for crumb_ in order:
            trail.merge(pack(pseudo_vin, [crumb_]))
    first = backend.trail_item(PV, BUCKET)
    assert {**backend.trail_item(other, BUCKET), "pseudoVin": PV} == first
    assert slots(first) == {slot_of(SPLIT): encode(join(located, moving))}


def test_concurrent_writers_of_one_instant_converge_to_the_join(backend: Backend) -> None:
    """Three writers at once, each with one record of the instant (two with different speeds): whatever the
    interleaving of their conditional writes, the slot ends as the join of all three, speed the max."""
    records = split_instant()
    joined = functools.reduce(join, records)
    assert (joined.lat, joined.vehicle_speed, joined.heading, joined.soc) == (39.7, 61.5, 182, 70.0)
    trail = backend.stores.trail
    for n in range(4):  # a few races, each on its own vehicle
        pseudo_vin = f"{n:x}" * 32
        start = threading.Barrier(len(records))

        def write(crumb_: Crumb, pseudo_vin: str = pseudo_vin, start: threading.Barrier = start) -> int:
            start.wait()
            return trail.merge(pack(pseudo_vin, [crumb_]))

        with ThreadPoolExecutor(len(records)) as pool:
            list(pool.map(write, records))
        item = backend.trail_item(pseudo_vin, BUCKET)
        assert slots(item) == {slot_of(SPLIT): encode(joined)}
        assert item["expiresAt"] == (T0 + 9_000) // 1000 + 86_400


def test_a_write_landing_between_a_failed_guard_and_the_swap_is_joined_too(aws_env: AwsEnv) -> None:
    """The adapter's rounds, interleaved by hand: our first write fails its guard (the slot holds another
    record of the instant), and before our compare-and-swap lands a rival swaps in a third record; our swap
    then fails too, and the next round swaps in the join of all three. Three requests, none lost."""
    located, moving, resend = split_instant()
    client, table = aws_env.clients.dynamodb, aws_env.settings.table_names["live-breadcrumbs"]
    rival = DynamoTrail(client, table)
    sent: list[dict[str, Any]] = []

    class Interposed:
        """Our client: the rival's merge lands just before our second request (the swap)."""

        def update_item(self, **request: Any) -> Any:
            sent.append(request)
            if len(sent) == 2:
                rival.merge(pack(PV, [resend]))
            return client.update_item(**request)

    ours = DynamoTrail(cast("DynamoDBClient", Interposed()), table)
    rival.merge(pack(PV, [located]))
    assert ours.merge(pack(PV, [moving])) == 3
    first, *swaps = (request["ConditionExpression"] for request in sent)
    assert first.startswith("(attribute_not_exists(#k0) OR #k0 = :c0)")
    assert all(swap.startswith("#k0 = :s0") for swap in swaps)
    assert [r["ExpressionAttributeValues"][":s0"]["S"] for r in sent[1:]] == [
        encode(located),  # what the failed guard returned
        encode(join(located, resend)),  # what the failed swap returned: the rival's join
    ]
    stored = aws_backend(aws_env).trail_item(PV, BUCKET)
    assert slots(stored) == {slot_of(SPLIT): encode(join(join(located, moving), resend))}


def test_a_record_is_the_same_bytes_whoever_writes_it_whatever_trip_it_thinks_it_is_in(
    backend: Backend,
) -> None:
    """No writer can relabel a crumb: a processor that sees the record mid-trip (after the vehicle's
    earlier records) and one that sees it alone (no trip at all) store the same string for it."""
    records = [r for r in shard_records(fixture("trips.jsonl")) if r.partition_key.endswith("00001")]
    as_kinesis = [
        KinesisRecord(r.data, r.partition_key, StreamPosition(SHARD, r.sequence_number, 0, r.arrival_ms))
        for r in records
    ]
    k = 62
    in_a_trip = memory_stores()
    pipeline = Pipeline(backend.settings, in_a_trip, KEY, NO_SLEEP)
    pipeline.process(as_kinesis[:k])
    pipeline.process(as_kinesis[k : k + 1])
    pipeline.process([], caught_up=True)  # the stream clock settles them: the machine consumes them
    pipeline.flush(int(time.time() * 1000), everything=True)  # as before a checkpoint
    pipeline.close()
    (open_trip,) = [item for item in in_a_trip.trips.items.values() if item.tripId]
    assert open_trip.status == "ACTIVE"

    alone = Pipeline(backend.settings, backend.stores, KEY, NO_SLEEP)
    alone.process(as_kinesis[k : k + 1])  # a first sighting: the vehicle has no trip here
    alone.flush(int(time.time() * 1000), everything=True)
    alone.close()
    ((pv, bucket),) = [key for key in in_a_trip.trail.items if backend.trail_item(*key)]
    held, stored = in_a_trip.trail.items[(pv, bucket)], backend.trail_item(pv, bucket)
    (slot,) = slots(stored)
    assert len(slots(held)) > 1  # the writer in a trip has the record's neighbours in that bucket too
    assert slots(stored)[slot] == held[slot] and "trip" not in stored[slot]
    assert stored["expiresAt"] == records[k].arrival_ms // 1000 + 86_400


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
        backend.vehicle_state(PV) == once == {"ts": 5_000, "v": [50.0, 5_000]}  # vehicleSpeed: [value, atMs]
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


def test_a_redelivered_dead_letter_writes_nothing_and_another_record_at_its_key_raises(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Sealed under a fresh data key each time, the same dead letter has other bytes on every write: the
    stored object must stay as it was (a reason changed by a deploy in between included)."""
    position = StreamPosition(SHARD, "49001", 0, 1_741_183_200_000)
    record = KinesisRecord(b"{not json", "1HGCM82633A004352", position)
    letter = DeadLetter(record, RejectReason.MALFORMED_JSON, "line 1")
    writer = backend.stores.dead_letters
    key = dead_letter_key(position)
    writer.write(letter, writer.data_key())
    first = backend.dead_letter(key)
    writer.write(letter, writer.data_key())
    writer.write(DeadLetter(record, RejectReason.INTERNAL_ERROR, "KeyError"), writer.data_key())
    assert backend.dead_letter_count() == 1
    assert backend.dead_letter(key) == first

    other = KinesisRecord(b"{other", "1HGCM82633A004352", position)
    forged = DeadLetter(other, RejectReason.MALFORMED_JSON, "")
    with caplog.at_level("ERROR"), pytest.raises(WriteOnceConflict) as conflict:
        writer.write(forged, writer.data_key())
    assert (conflict.value.key, conflict.value.reason) == (key, ConflictReason.DIFFERENT_RECORD)
    assert backend.dead_letter(key) == first
    if backend.name == "aws":  # the adapter logs what an alarm counts (the fake only raises)
        assert [r.getMessage() for r in caplog.records] == ["archive_conflict"]
        assert "1HGCM82633A004352" not in caplog.text


def test_remembering_a_vin_twice_keeps_one_mapping(backend: Backend) -> None:
    vault = backend.stores.vault
    assert vault.known([PV]) == set()
    vault.remember(PV, "1HGCM82633A004352")
    first = backend.vault_item(PV)
    vault.remember(PV, "1HGCM82633A004352")
    assert backend.vault_item(PV) == first  # neither the ciphertext nor createdAt moved
    assert vault.known([PV, "0" * 32]) == {PV}
    assert vault.resolve(PV) == "1HGCM82633A004352"
    assert vault.resolve("0" * 32) is None


def test_the_vault_write_keeps_and_is_not_blocked_by_another_attribute(backend: Backend) -> None:
    """A trip mark (``m``) written before the VIN neither blocks the vault write nor is lost by it, and
    an item holding only other attributes is not a known vehicle."""
    vault = backend.stores.vault
    backend.set_vault_attribute(PV, "m", {"hwm": 5})
    assert vault.known([PV]) == set()
    vault.remember(PV, "1HGCM82633A004352")
    backend.set_vault_attribute(PV, "m", {"hwm": 7})
    vault.remember(PV, "1HGCM82633A004352")
    item = backend.vault_item(PV)
    assert item["m"] == {"hwm": 7} and "encryptedVin" in item and "createdAt" in item
    assert vault.known([PV]) == {PV}
    assert vault.resolve(PV) == "1HGCM82633A004352"


def test_known_answers_for_more_vehicles_than_one_batch_read(backend: Backend) -> None:
    vault = backend.stores.vault
    vins = {KEY.pseudo_vin(f"1HGCM82633A{i:06d}"): f"1HGCM82633A{i:06d}" for i in range(250)}
    stored = sorted(vins)[::2]
    for pv in stored:
        vault.remember(pv, vins[pv])
    assert vault.known([*vins, *stored]) == set(stored)  # 250 keys (+ repeats): 3 reads of <= 100


def test_the_first_pseudonym_key_fingerprint_recorded_wins(backend: Backend) -> None:
    vault = backend.stores.vault
    first = vault.fingerprint() or vault.record_fingerprint("a" * 32)  # aws: bootstrap recorded one
    assert vault.record_fingerprint("b" * 32) == first
    assert vault.fingerprint() == first
    assert vault.known([PSEUDONYM_KEY_ITEM]) == set()
    assert vault.resolve(PSEUDONYM_KEY_ITEM) is None


def test_a_shard_s_progress_report_replaces_the_last_whole_and_is_never_a_vehicle(backend: Backend) -> None:
    progress, vault = backend.stores.progress, backend.stores.vault
    other = "shardId-000000000001"
    progress.record(ShardProgress(SHARD, 1_000, last_arrival_ms=900, millis_behind=100))
    later = ShardProgress(SHARD, 2_000, caught_up_ms=1_990, millis_behind=0)  # no arrival: removed
    progress.record(later)
    ended = ShardProgress(other, 3_000, ended=True)
    progress.record(ended)
    found, requests = progress.read([SHARD, other, "shardId-000000000002", SHARD])
    assert (found, requests) == ({SHARD: later, other: ended}, 1)
    assert vault.known([progress_key(SHARD), progress_key(other)]) == set()
    assert vault.resolve(progress_key(SHARD)) is None


def test_progress_reports_of_more_shards_than_one_batch_read_are_all_read(backend: Backend) -> None:
    shards = [f"shardId-{i:012d}" for i in range(150)]
    for i, shard in enumerate(shards[::3]):
        backend.stores.progress.record(ShardProgress(shard, i, caught_up_ms=i, millis_behind=0))
    found, requests = backend.stores.progress.read(shards)
    assert (sorted(found), requests) == (shards[::3], 2)


@pytest.mark.parametrize("key", ["trips/x/t.json.gz", "trip-segments/x/t/00000.json.gz"])
def test_archive_objects_are_written_once_and_index_items_are_plain_overwrites(
    backend: Backend, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    archive = backend.stores.archive
    archive.put_object(key, b"one")
    archive.put_object(key, b"one")  # a retry, a redelivery, a second writer: the same bytes, a no-op
    with caplog.at_level("ERROR"), pytest.raises(WriteOnceConflict) as conflict:
        archive.put_object(key, b"two")
    assert (conflict.value.key, conflict.value.reason) == (key, ConflictReason.DIFFERENT_BYTES)
    assert archive.get_object(key) == b"one"
    if backend.name == "aws":
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", "archive_conflict")]
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
    assert backend.index_item(PV, "t")["s3Key"] == "trips/x/t.json.gz"


def test_an_on_time_archive_never_replaces_the_final_one(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """On-time (provisional) index items replace none or each other; the final item replaces them and is
    never replaced by one (a replay of the on-time archive after the final one). An on-time key holding
    other bytes is a conflict logged at INFO, not alarmed."""
    archive = backend.stores.archive
    key = "trips-provisional/x/t/1741183800000.json.gz"
    archive.put_object(key, b"one", provisional=True)
    with caplog.at_level("INFO"), pytest.raises(WriteOnceConflict) as conflict:
        archive.put_object(key, b"two", provisional=True)
    assert conflict.value.reason == ConflictReason.PROVISIONAL_BYTES
    if backend.name == "aws":
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("INFO", "archive_conflict")]
    fields = {
        "pseudoVin": PV, "tripId": "t", "tripDate": "2025-03-05", "startTime": "2025-03-05T13:00:00.000Z",
        "durationSeconds": 1800, "breadcrumbCount": 0, "distanceMiles": 0.0, "maxSpeedMph": 0.0,
        "avgSpeedMph": 0.0, "endReason": "gap", "expiresAt": 1,
    }  # fmt: skip

    def index(end: str, s3_key: str, provisional: bool) -> TripIndexItem:
        return TripIndexItem.model_validate(
            {**fields, "endTime": end, "s3Key": s3_key, "provisional": True if provisional else None}
        )

    archive.put_index(index("2025-03-05T13:30:00.000Z", key, provisional=True))
    assert backend.index_item(PV, "t")["provisional"] is True
    archive.put_index(index("2025-03-05T13:31:00.000Z", key, provisional=True))  # the trip resumed
    assert backend.index_item(PV, "t")["endTime"] == "2025-03-05T13:31:00.000Z"
    archive.put_index(index("2025-03-05T13:31:00.000Z", "trips/x/t.json.gz", provisional=False))
    archive.put_index(index("2025-03-05T13:30:00.000Z", key, provisional=True))  # a replay: refused
    final = backend.index_item(PV, "t")
    assert (final["s3Key"], "provisional" in final) == ("trips/x/t.json.gz", False)


# --- failure => no checkpoint ---------------------------------------------------------------------------


def process(backend: Backend, checkpointer: RecordingCheckpointer, heartbeats: Path) -> None:
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
    checkpointer = RecordingCheckpointer()
    with pytest.raises(SystemExit) as exited:
        process(backend, checkpointer, tmp_path)
    assert (exited.value.code, checkpointer.calls) == (EXIT_BATCH_FAILED, [])


def test_the_same_batch_on_healthy_stores_is_checkpointed(backend: Backend, tmp_path: Path) -> None:
    checkpointer = RecordingCheckpointer()
    process(backend, checkpointer, tmp_path)
    assert len(checkpointer.calls) == 1
