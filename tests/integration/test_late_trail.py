"""Issue 17's held-out stream through the record processor (MultiLangDaemon protocol harness), local AWS.

``late-trail.jsonl``: 3 vehicles, 4 drives, about 8% of the moving records arriving 5-15 s after newer
ones. Before the trail held every accepted record, the archives kept 243 of its 268 breadcrumbs (119/132,
64/72, 37/40, 23/24): a record at or below the machine's high-water mark was left out of the trail.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest

from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time, parse_event_time
from tests.conftest import AwsEnv
from tests.fixtures.build import LATE_SCENARIO, TRIP_GAP_SECONDS
from tests.integration.test_trips_pipeline import TRIP_ENV, deliver, table
from tests.support.harness import ShardRecord, fixture, shard_records
from worker.bootstrap import bootstrap
from worker.replay import StreamEntry

KEY = Pseudonymizer(TRIP_ENV["FLEET_PSEUDONYM_KEY"].encode())
START_SPEED_MPH, END_SPEED_MPH = 5.0, 1.0  # the shipped thresholds (worker.config)


@pytest.fixture
def trip_env(aws_env: AwsEnv) -> AwsEnv:
    return aws_env.with_settings(**TRIP_ENV)


def scenario_breadcrumbs(path_records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """Independently of the worker: per vehicle in event order, a trip starts at the first record above
    the start speed and stops at the first one at or below the end speed; a stop followed by a gap of
    at least ``TRIP_GAP_SECONDS`` ends it there. Its breadcrumbs are the located records with ``start <= t
    <= stop``. Keyed by (VIN, start ms)."""
    by_vin: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for record in path_records:
        by_vin.setdefault(record["vin"], []).append((parse_event_time(record["timestamp"]), record))
    spans: dict[tuple[str, int], int] = {}
    for vin, timeline in by_vin.items():
        timeline.sort(key=lambda entry: entry[0])
        start = stop = None
        for t, record in timeline:
            speed = record["signals"]["vehicleSpeed"]
            if start is not None and stop is not None and t >= stop + TRIP_GAP_SECONDS * 1000:
                spans[(vin, start)] = stop
                start = stop = None
            if start is None and speed > START_SPEED_MPH:
                start = t
            elif start is not None and stop is None and speed <= END_SPEED_MPH:
                stop = t
            elif stop is not None and speed > START_SPEED_MPH:
                stop = None
        assert start is None, f"{vin}: the scenario ends every drive parked for longer than the gap"
    located = {
        (r["vin"], parse_event_time(r["timestamp"]))
        for r in path_records
        if "lat" in r["signals"] and "lng" in r["signals"]
    }
    return {
        (vin, start): sum(1 for v, t in located if v == vin and start <= t <= stop)
        for (vin, start), stop in spans.items()
    }


def in_event_order(entries: Sequence[StreamEntry]) -> Iterator[StreamEntry]:
    """The same records as the vehicles recorded them (event time, then the fixture's order)."""
    timed = [(parse_event_time(orjson.loads(e.data)["timestamp"]), i, e) for i, e in enumerate(entries)]
    for _, _, entry in sorted(timed, key=lambda x: x[:2]):
        yield entry


def archived(env: AwsEnv, records: Sequence[ShardRecord]) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    deliver(env, records)
    index = sorted(table(env, "trips-index"), key=lambda i: (i["pseudoVin"], i["tripId"]))
    bucket = env.settings.archive_bucket
    listing = env.clients.s3.list_objects_v2(Bucket=bucket, Prefix="trips/").get("Contents", [])
    objects = {
        o["Key"]: env.clients.s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing
    }
    return objects, index


def test_late_records_are_archived_as_if_they_had_arrived_in_order(trip_env: AwsEnv) -> None:
    entries = fixture("late-trail.jsonl")
    arrival = int(time.time() * 1000) - 310_000  # one arrival per record, the same in both runs
    late_objects, late_index = archived(trip_env, shard_records(entries, arrival_ms=arrival))

    trip_env.aws.reset()
    bootstrap(trip_env.settings, trip_env.clients, shards=2)
    ordered = shard_records(list(in_event_order(entries)), arrival_ms=arrival)
    assert [r.data for r in ordered] != [r.data for r in shard_records(entries)], "the fixture is shuffled"
    objects, index = archived(trip_env, ordered)

    assert late_index == index and late_objects == objects  # the same bytes, the same index items

    expected = scenario_breadcrumbs([orjson.loads(e.data) for e in entries])
    assert len(expected) == 4 and {vin for vin, _ in expected} == set(LATE_SCENARIO)
    by_trip = {(i["pseudoVin"], i["startTime"]): i for i in late_index}
    assert len(by_trip) == len(expected)
    counts: list[str] = []
    for (vin, start), breadcrumbs in sorted(expected.items()):
        item = by_trip[(KEY.pseudo_vin(vin), format_time(start))]
        rows = orjson.loads(gzip.decompress(late_objects[item["s3Key"]]))
        assert item["breadcrumbCount"] == len(rows) == breadcrumbs, (vin, start)
        counts.append(f"{vin} {format_time(start)}: {item['breadcrumbCount']}/{breadcrumbs}")
    total = sum(i["breadcrumbCount"] for i in late_index)
    print(f"late-trail.jsonl archived {total}/{sum(expected.values())} breadcrumbs: " + "; ".join(counts))
    assert total == sum(expected.values()) == 268
