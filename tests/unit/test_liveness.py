"""Records that change nothing cost (almost) nothing (issue 23), through the whole ``Pipeline`` on the
in-memory fakes at the shipped settings: a parked vehicle repeating its values at 1 Hz is written once a
minute (liveness, or the checkpoint), a driving one every two records, and the item ends as the latest
record whatever was deferred."""

from __future__ import annotations

from pathlib import Path

import orjson

from devtools.settings import settings_from
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time
from processors.vehicle_state import named_item
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import TEST_ENV
from tests.support.fakes import memory_stores
from worker.pipeline import Pipeline
from worker.retry import Retrier

SHARD = "shardId-000000000000"
KEY = Pseudonymizer(b"liveness-tests-key")
PARKED, DRIVING = "1HGCM82633A004352", "5YJ3E1EA7KF317000"
T0 = 1_800_000_000_000
POLL_MS = 250
CHECKPOINT_MS = 60_000


def record(vin: str, second: int, speed: float) -> dict[str, object]:
    return {
        "vin": vin,
        "timestamp": format_time(T0 + second * 1000),
        "signals": {
            "vehicleSpeed": speed,
            "lat": 39.7,
            "lng": -104.9,
            "shiftState": "P" if not speed else "D",
        },
    }


def test_a_parked_vehicle_costs_one_write_a_minute_and_a_driving_one_a_write_per_two_records(
    tmp_path: Path,
) -> None:
    settings = settings_from({**TEST_ENV, "FLEET_HEARTBEAT_PATH": str(tmp_path)})
    assert settings.liveness_seconds == 60 and settings.checkpoint_every_seconds * 1000 == CHECKPOINT_MS
    stores = memory_stores()
    pipeline = Pipeline(settings, stores, KEY, Retrier(sleep=lambda _s: None))
    seconds, sequence, last_checkpoint = 600, 0, T0
    for second in range(seconds):
        batch = []
        for vin, speed in ((PARKED, 0.0), (DRIVING, float(20 + second % 30))):
            sequence += 1
            data = orjson.dumps(record(vin, second, speed))
            batch.append(
                KinesisRecord(data, vin, StreamPosition(SHARD, str(sequence), 0, T0 + second * 1000))
            )
        for poll in range(1000 // POLL_MS):  # the daemon polls every 250 ms, the batch in the first
            now = T0 + second * 1000 + 100 + poll * POLL_MS
            pipeline.process(batch if poll == 0 else [], now)
            if now - last_checkpoint >= CHECKPOINT_MS:
                pipeline.checkpoint(now, lambda _position: None)
                last_checkpoint = now
    pipeline.checkpoint(T0 + seconds * 1000, lambda _position: None)
    pipeline.close()
    parked, driving = (stores.vehicle_state.writes[KEY.pseudo_vin(vin)] for vin in (PARKED, DRIVING))
    assert parked / seconds <= 0.02, parked  # 1/60 a record: one item under 1 KB a minute
    assert driving / seconds >= 0.5, driving
    item = named_item(stores.vehicle_state.items[KEY.pseudo_vin(PARKED)])
    last = format_time(T0 + (seconds - 1) * 1000)
    assert item["timestamp"] == last and item["vehicleSpeed"] == {"value": 0.0, "at": last}
