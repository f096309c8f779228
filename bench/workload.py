"""The benchmark's workloads, as a shard would deliver them.

- **native**: the simulator's deterministic 1 Hz fleet in our JSON format, every record carrying every
  signal (``devtools.simulate``).
- **tesla**: the same vehicles driving the same way, sent as Tesla fleet-telemetry sends them (protobuf
  ``Payload``, the server's default; one record per PutRecord, partition key = VIN): a vehicle's first
  record is a snapshot of 40 fields drawn from the ``Field`` enum with realistic values, then each record
  carries only what changed: ``Location`` and ``VehicleSpeed`` always while the vehicle moves, and 0-3
  other changed fields (gear on a change, then a random few of heading, odometer, battery, range,
  accelerations, pack voltage/current, temperatures, ...). Parked, a vehicle still reports at 1 Hz (the
  capacity model's assumption) with 1-3 non-position fields. Both go through the processors' one decode
  path (``processors.decode``), as in production.

``late_records`` makes the issue-17 workload out of either: a share of records delayed in arrival order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from tesla_protocol.telemetry import vehicle_data_pb2 as pb
from tesla_protocol.telemetry.vehicle_data_pb2 import Datum, LocationValue, Payload, Value

from devtools.simulate import simulate
from processors.signals import parse_time
from schemas.records import KinesisRecord, StreamPosition
from worker.replay import StreamEntry

SEED = 7
WORKLOADS = ("native", "tesla")


@dataclass(frozen=True, slots=True)
class Produced:
    """One record as a producer puts it: ``data`` with partition key ``vin``, due at ``due_ms`` (when
    its PutRecords is sent, live) for an event at ``event_ms`` (the vehicle's clock)."""

    vin: str
    event_ms: int
    due_ms: int
    data: bytes
    changes: bool = True
    """Some value differs from the vehicle's previous record (False: a repeat, liveness only)."""


@dataclass(frozen=True)
class Fleet:
    vehicles: int
    minutes: float
    skip_minutes: float = 0
    """Start this far into the simulation: vehicles are then caught mid-trip and mid-stop, as a worker
    taking over a running stream finds them (the first minutes are mostly vehicles setting off)."""
    seed: int = SEED
    workload: str = "native"
    period_seconds: int = 1
    """Each vehicle reports every this many seconds (telematics units: 5-30 s), phases spread."""
    phase: str = "mixed"
    """``mixed``: the simulator's parking and driving; ``parked`` or ``driving``: every vehicle stays so
    throughout (parked vehicles repeat every value; driving ones move, with red lights)."""

    @property
    def records(self) -> int:
        return self.vehicles * (int(self.minutes * 60) // self.period_seconds)

    def describe(self) -> str:
        skipped = f", from minute {self.skip_minutes:g} on" if self.skip_minutes else ""
        rate = "1 Hz" if self.period_seconds == 1 else f"one record per {self.period_seconds} s"
        phase = "" if self.phase == "mixed" else f", all {self.phase}"
        return (
            f"{self.vehicles} vehicles x {self.minutes:g} min at {rate}{phase}{skipped} "
            f"({self.records:,} {self.workload} records)"
        )

    def stream(self, start_ms: int | None = None) -> list[dict[str, Any]]:
        """The native records, in time order, ending a few seconds ago (no clock clamping)."""
        total = self.minutes + self.skip_minutes
        if start_ms is None:
            start_ms = int(time.time() * 1000) - int(total * 60_000) - 5_000
        held = None if self.phase == "mixed" else self.phase
        records = simulate(self.vehicles, total, self.seed, start_ms, held)
        skipped = int(self.skip_minutes * 60)
        return list(_every(records, self.period_seconds, skipped))

    def produced(self, start_ms: int | None = None) -> list[Produced]:
        """The records of this fleet's workload as producers put them (a Tesla vehicle's snapshot comes
        with its first record of the stream, so a skipped start still opens with the snapshot)."""
        native = self.stream(start_ms)
        if self.workload == "native":
            return native_stream(native)
        if self.workload == "tesla":
            return tesla_stream(native, self.seed)
        raise ValueError(f"unknown workload {self.workload!r}")


def _every(records: Iterable[dict[str, Any]], period: int, skip_seconds: int) -> Iterator[dict[str, Any]]:
    """Each vehicle's records once every ``period`` seconds (vehicle i at the seconds ``= i mod period``,
    so the fleet's records stay spread), after its first ``skip_seconds``."""
    seen: dict[str, list[int]] = {}
    for record in records:
        counted = seen.get(record["vin"])
        if counted is None:
            counted = seen[record["vin"]] = [0, len(seen)]
        second, index = counted
        counted[0] += 1
        if second >= skip_seconds and second % period == index % period:
            yield record


def native_stream(native: Sequence[dict[str, Any]]) -> list[Produced]:
    """The records as put, each marked whether it changes a value of its vehicle's previous one."""
    previous: dict[str, dict[str, Any]] = {}
    out = []
    for record in native:
        signals = record["signals"]
        changes = previous.get(record["vin"]) != signals
        previous[record["vin"]] = signals
        out.append(replace(native_produced(record), changes=changes))
    return out


def native_produced(record: dict[str, Any]) -> Produced:
    event_ms = parse_time(record["timestamp"])
    return Produced(record["vin"], event_ms, event_ms, orjson.dumps(record))


# -- Tesla ------------------------------------------------------------------------------------------

Member = tuple[str, Any]
"""(``Value`` member, value): how the field travels."""


def _enum(enum: str, name: str) -> Member:
    member = {
        "DetailedChargeStateValue": "detailed_charge_state_value",
        "SentryModeState": "sentry_mode_state_value",
        "HvacPowerState": "hvac_power_value",
        "ClimateKeeperModeState": "climate_keeper_mode_value",
        "CarTypeValue": "car_type_value",
        "BMSStateValue": "bms_state_value",
        "DefrostModeState": "defrost_mode_value",
        "CabinOverheatProtectionModeState": "cabin_overheat_protection_mode_value",
        "DistanceUnit": "distance_unit_value",
        "TemperatureUnit": "temperature_unit_value",
        "ChargePortValue": "charge_port_value",
        "ChargePortLatchValue": "charge_port_latch_value",
        "HvacAutoModeState": "hvac_auto_mode_value",
    }[enum]
    return member, getattr(pb, enum).Value(name)


def _static_fields(rng: random.Random, number: int) -> dict[str, Member]:
    """The 32 fields of a snapshot besides the 8 canonical ones (position, speed, heading, odometer,
    battery, range, gear): a Model 3/Y as fleet-telemetry reports it, parked or driving."""
    return {
        "InsideTemp": ("double_value", round(rng.uniform(18, 24), 1)),
        "OutsideTemp": ("double_value", round(rng.uniform(2, 28), 1)),
        "PackVoltage": ("double_value", round(rng.uniform(380, 402), 2)),
        "PackCurrent": ("double_value", round(rng.uniform(-4, 1), 1)),
        "ModuleTempMax": ("double_value", round(rng.uniform(24, 30), 1)),
        "ModuleTempMin": ("double_value", round(rng.uniform(20, 24), 1)),
        "BrickVoltageMax": ("double_value", round(rng.uniform(3.9, 4.05), 3)),
        "BrickVoltageMin": ("double_value", round(rng.uniform(3.85, 3.9), 3)),
        "RatedRange": ("double_value", round(rng.uniform(150, 300), 1)),
        "IdealBatteryRange": ("double_value", round(rng.uniform(150, 300), 1)),
        "EnergyRemaining": ("double_value", round(rng.uniform(30, 70), 2)),
        "TpmsPressureFl": ("double_value", round(rng.uniform(2.8, 3.0), 2)),
        "TpmsPressureFr": ("double_value", round(rng.uniform(2.8, 3.0), 2)),
        "TpmsPressureRl": ("double_value", round(rng.uniform(2.8, 3.0), 2)),
        "TpmsPressureRr": ("double_value", round(rng.uniform(2.8, 3.0), 2)),
        "LateralAcceleration": ("double_value", 0.0),
        "LongitudinalAcceleration": ("double_value", 0.0),
        "PedalPosition": ("double_value", 0.0),
        "LifetimeEnergyUsed": ("double_value", round(rng.uniform(2_000, 20_000), 1)),
        "ChargeLimitSoc": ("int_value", rng.choice((80, 85, 90))),
        "HvacLeftTemperatureRequest": ("double_value", rng.choice((20.0, 21.0, 21.5, 22.0))),
        "Version": ("string_value", rng.choice(("2025.14.3 8f2b9c1e7a", "2025.20.6 1c4d2e9b0f"))),
        "VehicleName": ("string_value", f"Fleet {number:04d}"),
        "Locked": ("boolean_value", True),
        "DriverSeatOccupied": ("boolean_value", False),
        "ChargePortDoorOpen": ("boolean_value", False),
        "DetailedChargeState": _enum("DetailedChargeStateValue", "DetailedChargeStateDisconnected"),
        "SentryMode": _enum("SentryModeState", "SentryModeStateOff"),
        "HvacPower": _enum("HvacPowerState", "HvacPowerStateOff"),
        "CarType": _enum("CarTypeValue", rng.choice(("CarTypeModel3", "CarTypeModelY"))),
        "BMSState": _enum("BMSStateValue", "BMSStateStandby"),
        "SettingDistanceUnit": _enum("DistanceUnit", "DistanceUnitMiles"),
    }


DRIVING_EXTRAS = (
    "GpsHeading",
    "Odometer",
    "EstBatteryRange",
    "LateralAcceleration",
    "LongitudinalAcceleration",
    "PedalPosition",
    "PackCurrent",
    "PackVoltage",
    "ModuleTempMax",
    "InsideTemp",
)
PARKED_EXTRAS = ("InsideTemp", "OutsideTemp", "PackVoltage", "ModuleTempMin", "TpmsPressureFl", "PackCurrent")


class TeslaVehicle:
    """One vehicle behind a fleet-telemetry server: a snapshot first, then what changed."""

    def __init__(self, vin: str, rng: random.Random, number: int) -> None:
        self.vin = vin
        self.rng = rng
        self.battery_field = "Soc" if rng.random() < 0.3 else "BatteryLevel"
        self.fields = _static_fields(rng, number)
        self.sent: dict[str, Any] = {}

    def _canonical(self, signals: dict[str, Any]) -> dict[str, Member]:
        return {
            "Location": ("location_value", (signals["lat"], signals["lng"])),
            "VehicleSpeed": ("double_value", float(signals["vehicleSpeed"])),
            "GpsHeading": ("double_value", float(signals["heading"])),
            "Odometer": ("double_value", float(signals["odometer"])),
            self.battery_field: ("double_value", float(signals["batteryLevel"])),
            "EstBatteryRange": ("double_value", float(signals["batteryRange"])),
            "Gear": ("shift_state_value", pb.ShiftState.Value(f"ShiftState{signals['shiftState']}")),
        }

    def _wander(self, name: str, moving: bool) -> None:
        member, value = self.fields[name]
        rng = self.rng
        if name in ("LateralAcceleration", "LongitudinalAcceleration"):
            value = round(rng.gauss(0, 0.15), 3) if moving else 0.0
        elif name == "PedalPosition":
            value = round(rng.uniform(5, 40), 1) if moving else 0.0
        elif name == "PackCurrent":
            value = round(rng.uniform(20, 180), 1) if moving else round(rng.uniform(-4, 1), 1)
        else:
            value = round(value + rng.choice((-1, 1)) * (0.01 if value < 10 else 0.1), 3)
        self.fields[name] = (member, value)

    def record(self, native: dict[str, Any]) -> list[tuple[str, Member]]:
        """(field, value) pairs of this second's record."""
        signals = native["signals"]
        canonical = self._canonical(signals)
        moving = signals["vehicleSpeed"] > 0
        if not self.sent:  # the first record: a 40-field snapshot
            now = {**canonical, **self.fields}
            self.sent = dict(now)
            return list(now.items())
        changes: dict[str, Member] = {}
        if moving or self.sent["VehicleSpeed"] != canonical["VehicleSpeed"]:
            changes["VehicleSpeed"] = canonical["VehicleSpeed"]
            if self.sent["Location"] != canonical["Location"]:
                changes["Location"] = canonical["Location"]
        if self.sent["Gear"] != canonical["Gear"]:
            changes["Gear"] = canonical["Gear"]
        others = self.rng.randint(0, 3) if moving else self.rng.randint(1, 3)
        pool = DRIVING_EXTRAS if moving else PARKED_EXTRAS
        battery = canonical[self.battery_field]
        if self.sent[self.battery_field] != battery:
            changes[self.battery_field] = battery
            others -= 1
        for name in self.rng.sample(pool, k=max(0, others)):
            if name in canonical:
                changes[name] = canonical[name]
            else:
                self._wander(name, moving)
                changes[name] = self.fields[name]
        self.sent.update(changes)
        return list(changes.items())

    def payload(self, pairs: Iterable[tuple[str, Member]], event_ms: int) -> bytes:
        data = []
        for name, (member, value) in pairs:
            if member == "location_value":
                v = Value(location_value=LocationValue(latitude=value[0], longitude=value[1]))
            else:
                v = Value(**{member: value})
            data.append(Datum(key=name, value=v))
        message = Payload(data=data, vin=self.vin)
        message.created_at.FromMilliseconds(event_ms)
        return message.SerializeToString(deterministic=True)


def tesla_stream(native: Sequence[dict[str, Any]], seed: int = SEED) -> list[Produced]:
    """The native fleet's records as Tesla vehicles send them (same vehicles, same times, same drive)."""
    rng = random.Random(seed * 7919)
    vehicles: dict[str, TeslaVehicle] = {}
    out = []
    for record in native:
        vin = record["vin"]
        vehicle = vehicles.get(vin)
        if vehicle is None:
            vehicle = vehicles[vin] = TeslaVehicle(vin, random.Random(rng.random()), len(vehicles))
        event_ms = parse_time(record["timestamp"])
        sent = dict(vehicle.sent)
        pairs = vehicle.record(record)
        changes = not sent or any(sent.get(name) != member for name, member in pairs)
        out.append(Produced(vin, event_ms, event_ms, vehicle.payload(pairs, event_ms), changes))
    return out


def late_records(
    stream: Sequence[Produced], share: float = 0.03, delay_s: tuple[float, float] = (5, 15), seed: int = SEED
) -> list[Produced]:
    """Issue 17's workload: ``share`` of the records (never a vehicle's first) put ``delay_s`` seconds
    after their time, behind later records of the same vehicle; the rest unchanged. Arrival order."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    for record in stream:
        late = record.vin in seen and rng.random() < share
        seen.add(record.vin)
        out.append(
            replace(record, due_ms=record.due_ms + int(rng.uniform(*delay_s) * 1000)) if late else record
        )
    return sorted(out, key=lambda p: p.due_ms)


# -- delivery -----------------------------------------------------------------------------------------


def entries(records: Sequence[dict[str, Any] | Produced]) -> list[StreamEntry]:
    """As producers put them: the record's bytes (native: compact JSON), partition key = VIN."""
    return [
        StreamEntry(r.data, r.vin) if isinstance(r, Produced) else StreamEntry(orjson.dumps(r), r["vin"])
        for r in records
    ]


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


Transform = Callable[[Sequence[Produced]], list[Produced]]
