"""The benchmark's workload: the simulator's deterministic 1 Hz fleet, as a shard would deliver it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from devtools.simulate import simulate
from schemas.records import KinesisRecord, StreamPosition
from worker.replay import StreamEntry

SEED = 7


@dataclass(frozen=True)
class Fleet:
    vehicles: int
    minutes: float
    skip_minutes: float = 0
    """Start this far into the simulation: vehicles are then caught mid-trip and mid-stop, as a worker
    taking over a running stream finds them (the first minutes are mostly vehicles setting off)."""
    seed: int = SEED

    @property
    def records(self) -> int:
        return self.vehicles * int(self.minutes * 60)

    def describe(self) -> str:
        skipped = f", from minute {self.skip_minutes:g} on" if self.skip_minutes else ""
        return f"{self.vehicles} vehicles x {self.minutes:g} min at 1 Hz{skipped} ({self.records:,} records)"

    def stream(self) -> list[dict[str, Any]]:
        """The records, in time order, ending a few seconds ago (no clock clamping)."""
        total = self.minutes + self.skip_minutes
        start = int(time.time() * 1000) - int(total * 60_000) - 5_000
        skipped = self.vehicles * int(self.skip_minutes * 60)
        return list(simulate(self.vehicles, total, self.seed, start))[skipped:]


def entries(records: Sequence[dict[str, Any]]) -> list[StreamEntry]:
    """As producers put them: compact JSON bytes, partition key = VIN."""
    return [StreamEntry(orjson.dumps(r), r["vin"]) for r in records]


def kinesis_records(stream: Sequence[StreamEntry], arrival_ms: int | None = None) -> list[KinesisRecord]:
    arrival = arrival_ms if arrival_ms is not None else int(time.time() * 1000)
    return [
        KinesisRecord(
            e.data, e.partition_key, StreamPosition("shardId-000000000000", str(10**20 + i), 0, arrival)
        )
        for i, e in enumerate(stream)
    ]


def windows(items: Sequence[Any], vehicles: int, seconds: float) -> Iterator[Sequence[Any]]:
    """Batches of ``seconds`` of a 1 Hz fleet: what a shard holds after that long (KCL polling)."""
    size = max(1, int(vehicles * seconds))
    for start in range(0, len(items), size):
        yield items[start : start + size]
