"""What flows through the pipeline.

Wire formats are validated with pydantic at the edge (``NativeRecord``, ``TeslaPayloadJson``); inside,
records are plain frozen dataclasses. A native record whose fields already have the exact JSON types
``NativeRecord`` accepts is read without it (``processors.decode.native_fields``): the model would
return the same values, and it still answers for every other record. A ``TelemetryRecord`` still
carries the real VIN and lives only between decoding and pseudonymization; everything downstream sees a
``VehicleReading``, which cannot carry a VIN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypeAlias

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from typing_extensions import TypedDict


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lng: float


SignalValue: TypeAlias = float | int | str | bool | Location | dict[str, Any] | list[Any]
"""Known signals are numbers, strings or a ``Location``; unknown OEM signals keep their JSON shape."""

Signals: TypeAlias = Mapping[str, SignalValue]


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a record sits in the stream: checkpoints are derived from these, never tracked aside."""

    shard_id: str
    sequence_number: str
    sub_sequence_number: int
    arrival_ms: int
    """Kinesis ``approximateArrivalTimestamp``: the stream's clock."""


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """One decoded record, any producer format. Holds the real VIN: never leaves the boundary."""

    vin: str
    event_time_ms: int
    signals: Signals
    format: str
    dropped_location: bool = False
    """The record carried a location that was out of range or not finite (``invalid_coordinates``)."""


@dataclass(frozen=True, slots=True)
class VehicleReading:
    """A pseudonymized record: the unit every downstream stage works on."""

    pseudo_vin: str
    event_time_ms: int
    signals: Signals
    position: StreamPosition

    @property
    def speed(self) -> float | None:
        value = self.signals.get("vehicleSpeed")
        if type(value) is float:  # the usual case, read for every record by the trip machines
            return value
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def location(self) -> Location | None:
        value = self.signals.get("location")
        return value if type(value) is Location or isinstance(value, Location) else None


class NativeRecord(BaseModel):
    """Our native JSON format: ``{"vin", "timestamp", "signals": {...}}``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    vin: StrictStr
    timestamp: StrictInt | StrictFloat | StrictStr
    """ISO-8601 (UTC when no offset is given) or epoch milliseconds."""
    signals: dict[str, Any]
    """Already JSON (it comes from orjson): ``JsonValue`` would re-walk every value, half the validation."""


class TeslaDatumJson(TypedDict):
    """One ``Datum`` of a Tesla Fleet Telemetry ``Payload`` in protojson: ``{"key", "value": {member: x}}``.

    ``key`` is a ``Field`` name, or its number when the server did not know the field. ``value`` is the
    ``Value`` oneof (``{}`` or null when nothing is set). A TypedDict, not a model: one object fewer per
    datum on the hot path (``typing_extensions``' as pydantic requires before Python 3.12).
    """

    key: StrictStr | StrictInt
    value: NotRequired[dict[str, Any] | None]
    """Already JSON (it comes from orjson): ``JsonValue`` would re-walk it for about 2 µs a record."""


class TeslaPayloadJson(BaseModel):
    """Tesla Fleet Telemetry vehicle data as protojson (the server's ``transmit_decoded_records: true``).

    protojson readers accept both the JSON and the proto field names, so both are accepted here.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    vin: StrictStr
    created_at: StrictStr | None = Field(None, validation_alias=AliasChoices("createdAt", "created_at"))
    """RFC 3339; absent or null when the vehicle sent no time."""
    is_resend: StrictBool | None = Field(None, validation_alias=AliasChoices("isResend", "is_resend"))
    data: list[TeslaDatumJson]


@dataclass(frozen=True, slots=True)
class KinesisRecord:
    """A record as delivered by the daemon. ``partition_key`` is the VIN: never log or store it."""

    data: bytes = field(repr=False)
    partition_key: str = field(repr=False)
    position: StreamPosition
