"""What one record may add to its vehicle's ``vehicle-state`` item: bounded, deterministically, per record."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.batch import decode_batch
from processors.decode import DecodeLimits, Decoder
from processors.pseudonymize import Pseudonymizer
from processors.signal_bounds import KNOWN_SIGNALS, SignalBounds, bound_signals
from processors.signals import parse_event_time
from schemas.records import KinesisRecord, Location, StreamPosition
from worker.config import Settings
from worker.pipeline import signal_bounds

VIN = "5YJ3E1EA7KF317000"
T0 = parse_event_time("2025-03-05T14:32:01.000Z")
DECODER = Decoder(DecodeLimits(max_future_skew_ms=24 * 3600_000, max_event_age_ms=7 * 24 * 3600_000))
PSEUDO = Pseudonymizer(b"bounds-key")


def native(signals: dict[str, Any], seq: int = 1) -> KinesisRecord:
    data = orjson.dumps({"vin": VIN, "timestamp": T0, "signals": signals})
    return KinesisRecord(data, VIN, StreamPosition("shardId-000", str(seq), 0, T0 + 1_000))


def test_known_signals_cover_the_canonical_ones_and_every_tesla_field() -> None:
    assert {"vehicleSpeed", "location", "batteryLevel", "soc", "shiftState", "RouteLine", "InsideTemp"} <= (
        KNOWN_SIGNALS
    )
    assert len(KNOWN_SIGNALS) <= Settings().max_signals_per_vehicle


def test_a_record_keeps_its_known_signals_first_then_unknown_ones_in_name_order() -> None:
    signals: dict[str, Any] = {f"oem{i:03d}": i for i in range(10)} | {"vehicleSpeed": 1.0, "InsideTemp": 2}
    kept, dropped = bound_signals(signals, SignalBounds(max_signals=5, max_value_bytes=100))
    assert kept == {"vehicleSpeed": 1.0, "InsideTemp": 2, "oem000": 0, "oem001": 1, "oem002": 2}
    assert dropped == 7


def test_a_value_too_large_or_one_dynamodb_cannot_store_is_dropped_alone() -> None:
    signals: dict[str, Any] = {
        "vehicleSpeed": 3.0,
        "location": Location(1.0, 2.0),
        "big": "x" * 200,
        "justFits": "x" * 98,  # 100 bytes as JSON
        "hugeNested": {"n": 10**40},
        "infinite": [1e300 * 10],
        "emptyKey": {"": 1},
        "": 1,
        "n" * 300: 1,
    }
    kept, dropped = bound_signals(signals, SignalBounds(max_signals=100, max_value_bytes=100))
    assert kept == {"vehicleSpeed": 3.0, "location": Location(1.0, 2.0), "justFits": "x" * 98}
    assert dropped == 6


def test_the_bounds_are_settings() -> None:
    bounds = signal_bounds(Settings(max_signals_per_vehicle=7, max_signal_value_bytes=99))
    assert bounds == SignalBounds(max_signals=7, max_value_bytes=99)


def test_batch_planning_drops_and_counts_the_excess_and_keeps_the_record() -> None:
    too_long = "y" * (SignalBounds().max_value_bytes + 1_000)
    oversized = {"vehicleSpeed": 2.0, "blob": too_long} | {f"oem{i:03d}": i for i in range(400)}
    plan = decode_batch([native(oversized)], DECODER, PSEUDO)
    [reading] = plan.readings
    bounds = SignalBounds()
    assert len(reading.signals) == bounds.max_signals
    assert "blob" not in reading.signals and reading.signals["vehicleSpeed"] == 2.0
    assert plan.signals_dropped == len(oversized) - bounds.max_signals
    assert plan.dead_letters == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.text(max_size=8),
            st.integers(-5, 5)
            | st.text(max_size=60)
            | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30),
            max_size=12,
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 8),
)
def test_what_is_kept_of_a_record_depends_on_that_record_alone(
    records: list[dict[str, Any]], max_signals: int
) -> None:
    """So the item stays a function of the set of records applied, however they are batched."""
    bounds = SignalBounds(max_signals=max_signals, max_value_bytes=64)
    alone = [bound_signals(signals, bounds) for signals in records]
    together = decode_batch([native(s, n) for n, s in enumerate(records, 1)], DECODER, PSEUDO, bounds)
    kept_alone = [decode_batch([native(s)], DECODER, PSEUDO, bounds).readings for s in records]
    assert [r.signals for r in together.readings] == [r[0].signals for r in kept_alone if r]
    assert all(len(kept) <= max_signals for kept, _ in alone)
