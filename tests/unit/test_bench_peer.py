"""The benchmark's naive peer must do the same work as ours, or the comparison measures nothing."""

from __future__ import annotations

from bench.naive import NaivePlanner
from processors.decode import DecodeLimits, Decoder
from processors.pseudonymize import Pseudonymizer
from processors.trips import CompletedTrip, TripEffects, TripStateMachine, TripThresholds, VehicleTrips
from schemas.dynamo import Item
from schemas.records import StreamPosition
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
        writes = naive.plan(decoded, pseudo_vin, stored.get(pseudo_vin), position)
        if writes.trip_state is not None:
            stored[pseudo_vin] = writes.trip_state
        naive_trips += writes.completed

    decoder, pseudonymizer = Decoder(DecodeLimits(max_event_age_ms=10**15)), Pseudonymizer(KEY)
    states: dict[str, VehicleTrips] = {}
    effects = TripEffects()
    for record, position in zip(records, positions, strict=True):
        reading = pseudonymizer.reading(decoder.decode(record.data, record.arrival_ms), position)
        machine.apply(
            states.setdefault(reading.pseudo_vin, VehicleTrips(reading.pseudo_vin)), reading, effects
        )

    assert len(effects.completed) >= 4
    assert naive_trips == effects.completed
