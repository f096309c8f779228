"""The benchmark's instruments: the naive peer must do the same work as ours, or the comparison measures
nothing; the workloads must be what producers send; the capacity model must price what was measured."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bench import capacity
from bench.naive import NaivePlanner
from bench.workload import Fleet, Produced, late_records
from processors.decode import DecodeLimits, Decoder
from processors.pseudonymize import Pseudonymizer
from processors.trips import (
    CompletedTrip,
    TripEffects,
    TripStateMachine,
    TripThresholds,
    VehicleTrips,
    step_of,
)
from schemas.dynamo import Item
from schemas.records import StreamPosition, TelemetryRecord
from tests.fixtures.build import TRIP_GAP_SECONDS
from tests.support.harness import fixture, shard_records

KEY = b"bench-peer-key"


def test_the_naive_peer_completes_the_same_trips_as_ours() -> None:
    records = shard_records(fixture("trips.jsonl"))
    positions = [StreamPosition("shardId-000000000000", r.sequence_number, 0, r.arrival_ms) for r in records]
    machine = TripStateMachine(TripThresholds(gap_ms=TRIP_GAP_SECONDS * 1000))

    naive = NaivePlanner(KEY, machine)
    stored: dict[str, Item] = {}  # what its GetItem would answer
    naive_trips: list[CompletedTrip] = []
    for record, position in zip(records, positions, strict=True):
        decoded, pseudo_vin = naive.decode(record.data)
        writes = naive.plan(decoded, pseudo_vin, stored.get(pseudo_vin), position, record.data)
        if writes.trip_state is not None:
            stored[pseudo_vin] = writes.trip_state
        naive_trips += writes.completed

    decoder, pseudonymizer = Decoder(DecodeLimits(max_event_age_ms=10**15)), Pseudonymizer(KEY)
    states: dict[str, VehicleTrips] = {}
    effects = TripEffects()
    for record, position in zip(records, positions, strict=True):
        reading = pseudonymizer.reading(decoder.decode(record.data, record.arrival_ms), position)
        machine.apply(
            states.setdefault(reading.pseudo_vin, VehicleTrips(reading.pseudo_vin)),
            step_of(reading, record.data),
            effects,
        )

    assert len(effects.completed) >= 4
    assert naive_trips == effects.completed


# -- the Tesla-shaped workload and the capacity model ---------------------------------------------------


def _decoded(fleet: Fleet) -> list[tuple[Produced, TelemetryRecord]]:
    decoder = Decoder(DecodeLimits(max_event_age_ms=10**15))
    out = []
    for produced in fleet.produced(start_ms=1_750_000_000_000):
        record = decoder.decode(produced.data, produced.event_ms + 100)
        assert isinstance(record, TelemetryRecord)
        out.append((produced, record))
    return out


def test_the_tesla_workload_is_a_snapshot_then_deltas_through_the_real_decoder() -> None:
    decoded = _decoded(Fleet(8, 4, workload="tesla"))
    assert {record.format for _, record in decoded} == {"tesla_protobuf"}
    seen: set[str] = set()
    moving_others = []
    for produced, record in decoded:
        signals = record.signals
        if produced.vin not in seen:  # the snapshot: ~40 fields, the canonical ones decoded as ours
            seen.add(produced.vin)
            assert 38 <= len(signals) <= 42
            assert {"location", "vehicleSpeed", "heading", "odometer", "shiftState"} <= set(signals)
            continue
        speed = signals.get("vehicleSpeed")
        if speed:  # moving: position and speed always, 0-3 other fields (gear may come on top)
            assert "location" in signals
            others = set(signals) - {"location", "vehicleSpeed", "shiftState"}
            assert len(others) <= 3
            moving_others.append(len(others))
        else:
            assert 1 <= len(signals) <= 4
            assert "location" not in signals or speed == 0
    assert len(seen) == 8
    assert set(moving_others) == {0, 1, 2, 3}  # the whole range occurs, not a constant


def test_the_tesla_workload_drives_like_the_native_one() -> None:
    """Same vehicles, same event times, same positions: only the format and the deltas differ."""
    native = Fleet(5, 2).produced(start_ms=1_750_000_000_000)
    tesla = Fleet(5, 2, workload="tesla").produced(start_ms=1_750_000_000_000)
    assert [(p.vin, p.event_ms) for p in native] == [(p.vin, p.event_ms) for p in tesla]
    assert Fleet(5, 2, workload="tesla").produced(start_ms=1) == Fleet(5, 2, workload="tesla").produced(
        start_ms=1
    )


def test_late_records_delays_a_share_behind_later_records_and_loses_none() -> None:
    stream = Fleet(20, 5).produced(start_ms=1_750_000_000_000)
    late = late_records(stream, share=0.05, delay_s=(5, 15))
    assert sorted(late, key=lambda p: (p.vin, p.event_ms)) != late  # order changed
    assert sorted(p.data for p in late) == sorted(p.data for p in stream)
    delayed = [p for p in late if p.due_ms != p.event_ms]
    assert 0.03 * len(stream) < len(delayed) < 0.07 * len(stream)
    assert all(5_000 <= p.due_ms - p.event_ms <= 15_000 for p in delayed)
    assert [p.due_ms for p in late] == sorted(p.due_ms for p in late)
    firsts = {p.vin: p for p in reversed(stream)}
    assert all(p.due_ms == p.event_ms for p in late if firsts[p.vin] is p)


def test_records_per_state_write_under_the_freshness_budget() -> None:
    """Proposal §5 (D1): at 1 Hz a budget of 1000 ms writes every record, 1800 ms every second one."""
    assert [capacity.records_per_write(b) for b in (1000, 1800, 2800, 4800)] == [1, 2, 3, 5]


def _per_record(**changes: Any) -> capacity.PerRecord:
    base = capacity.PerRecord(
        source="live",
        write_units=0.5,
        write_units_by_table={"vehicle-state": 0.5},
        read_requests=0.0,
        s3_puts=0.0,
        s3_bytes=0.0,
        kms=0.0,
        processor_cpu_ms=0.1,
        processor_idle_vcpu=0.01,
        daemon_cpu_ms=0.05,
        daemon_idle_vcpu=0.05,
        processor_rss_mb=100,
        daemon_rss_mb=250,
        record_bytes=200,
        log_bytes=0.0,
        state_item_bytes=500,
        stored={},
    )
    return dataclasses.replace(base, **changes)


def test_the_dollar_model_prices_each_line_from_its_measured_figure() -> None:
    one = capacity.bill(1_000_000, _per_record())
    # 1 M vehicles x 2,592,000 s x 0.5 WU x $0.625 / M
    assert one.lines["DynamoDB writes"] == pytest.approx(810_000)
    assert one.shards == 1_250
    assert one.lines["Kinesis shard hours"] == pytest.approx(1_250 * 730 * 0.015)
    assert one.lines["Kinesis PUT payload units"] == pytest.approx(2_592_000 * 0.014)
    double = capacity.bill(1_000_000, _per_record(write_units=1.0))
    assert double.lines["DynamoDB writes"] == pytest.approx(2 * one.lines["DynamoDB writes"])
    busy = capacity.bill(1_000_000, _per_record(processor_cpu_ms=1.0))
    assert busy.tasks > one.tasks
    assert busy.lines["ECS Fargate vCPU"] > one.lines["ECS Fargate vCPU"]
