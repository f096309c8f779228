"""A deterministic fleet: 1 Hz native-format telemetry with parking, trips, stops, GPS, odometer, battery.

Each vehicle alternates parked periods (some shorter than the trip gap, most longer) with trips that
accelerate to a cruising speed, wander around it, pause at traffic lights and slow to a stop; position
follows speed and a slowly turning heading; odometer and battery follow distance. Same seed and start,
same stream, byte for byte.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

import orjson

from processors.signals import format_time

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
MANUFACTURERS = ("5YJ", "1HG", "WBA", "JTD", "1FT", "3VW", "KMH", "WDD")
CITY = (39.7392, -104.9903)  # Denver
MILES_PER_DEGREE = 69.0


def make_vin(rng: random.Random) -> str:
    return rng.choice(MANUFACTURERS) + "".join(rng.choice(VIN_ALPHABET) for _ in range(14))


@dataclass
class SimulatedVehicle:
    vin: str
    rng: random.Random
    lat: float
    lng: float
    heading: float
    odometer: float
    battery: float
    speed: float = 0.0
    phase: str = "parked"
    phase_left: int = 0
    cruise: float = 0.0
    light_left: int = 0
    plan: list[str] = field(default_factory=list)

    def tick(self) -> None:
        """Advance one second."""
        self.phase_left -= 1
        if self.phase_left <= 0:
            self._next_phase()
        if self.phase == "parked":
            self.speed = 0.0
        elif self.phase == "driving":
            self._drive()
        else:  # stopping
            self.speed = max(0.0, self.speed - self.rng.uniform(4, 8))
        distance = self.speed / 3600
        if distance:
            self.heading = (self.heading + self.rng.gauss(0, 4)) % 360
            rad = math.radians(self.heading)
            self.lat += distance * math.cos(rad) / MILES_PER_DEGREE
            self.lng += distance * math.sin(rad) / (MILES_PER_DEGREE * math.cos(math.radians(self.lat)))
            self.odometer += distance
            self.battery = max(5.0, self.battery - distance * 0.3)

    def _next_phase(self) -> None:
        if self.phase in ("parked",):
            self.phase, self.phase_left = "driving", self.rng.randint(180, 480)
            self.cruise = self.rng.uniform(25, 70)
        elif self.phase == "driving":
            self.phase, self.phase_left = "stopping", 20
        else:
            # Mostly long enough to end the trip (> 5 min); sometimes a short errand.
            long_stop = self.rng.random() < 0.75
            self.phase = "parked"
            self.phase_left = self.rng.randint(320, 600) if long_stop else self.rng.randint(30, 200)

    def _drive(self) -> None:
        if self.light_left > 0:
            self.light_left -= 1
            self.speed = max(0.0, self.speed - 10)
            return
        if self.speed > 15 and self.rng.random() < 0.004:
            self.light_left = self.rng.randint(15, 60)  # a red light: a stop far shorter than the gap
        target = self.cruise + self.rng.gauss(0, 3)
        self.speed = max(0.0, self.speed + max(-6.0, min(4.0, (target - self.speed) * 0.2)))

    def record(self, epoch_ms: int) -> dict[str, Any]:
        return {
            "vin": self.vin,
            "timestamp": format_time(epoch_ms),
            "signals": {
                "vehicleSpeed": round(self.speed, 1),
                "lat": round(self.lat, 6),
                "lng": round(self.lng, 6),
                "heading": round(self.heading),
                "odometer": round(self.odometer, 2),
                "batteryLevel": round(self.battery),
                "batteryRange": round(self.battery * 3.1, 1),
                "shiftState": "P" if self.phase == "parked" else "D",
            },
        }


def fleet(vehicles: int, seed: int) -> list[SimulatedVehicle]:
    rng = random.Random(seed)
    fleet_ = []
    for _ in range(vehicles):
        vehicle = SimulatedVehicle(
            vin=make_vin(rng),
            rng=random.Random(rng.random()),
            lat=CITY[0] + rng.uniform(-0.15, 0.15),
            lng=CITY[1] + rng.uniform(-0.2, 0.2),
            heading=rng.uniform(0, 360),
            odometer=rng.uniform(1_000, 60_000),
            battery=rng.uniform(40, 95),
        )
        # Stagger: a third are already driving when the stream starts.
        vehicle.phase = "parked" if rng.random() < 0.66 else "driving"
        vehicle.phase_left = rng.randint(10, 240)
        vehicle.cruise = rng.uniform(25, 70)
        vehicle.speed = vehicle.cruise if vehicle.phase == "driving" else 0.0
        fleet_.append(vehicle)
    return fleet_


def simulate(
    vehicles: int, minutes: float, seed: int, start_ms: int, phase: str | None = None
) -> Iterator[dict[str, Any]]:
    """Records in time order: every vehicle reports once a second (staggered within the second).
    ``phase``: every vehicle held in it (``parked`` or ``driving``) for the whole run."""
    cars = fleet(vehicles, seed)
    if phase is not None:
        if phase not in ("parked", "driving"):
            raise ValueError(f"unknown phase {phase!r}")
        for car in cars:
            car.phase, car.phase_left = phase, 10**9
            car.speed = car.cruise if phase == "driving" else 0.0
    offsets = [random.Random(seed + i).randrange(1000) for i in range(vehicles)]
    order = sorted(range(vehicles), key=lambda i: offsets[i])
    for second in range(int(minutes * 60)):
        for i in order:
            cars[i].tick()
            yield cars[i].record(start_ms + second * 1000 + offsets[i])


def start_ms(start: datetime | None, minutes: float) -> int:
    """Epoch ms of the first record: ``start``, else so that the stream ends now (its records are then
    within FLEET_MAX_EVENT_AGE_HOURS)."""
    if start is not None:
        return int(start.timestamp() * 1000)
    return (int(time.time()) - int(minutes * 60)) * 1000


def write_jsonl(
    out: BinaryIO, records: Iterable[dict[str, Any]], advance: Callable[[], None] = lambda: None
) -> int:
    """Write one JSON line per record; returns how many."""
    count = 0
    for record in records:
        out.write(orjson.dumps(record) + b"\n")
        count += 1
        advance()
    return count
