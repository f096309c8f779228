"""The naive peer: a team's first Lambda-style version of the same product, for the benchmark.

Per record, in order: ``json.loads`` into a full pydantic model; HMAC the VIN (no cache); KMS-encrypt the
VIN and write the ``vin-mapping`` item (``if_not_exists``, every time); ``GetItem`` its trip-state; put
the ``vehicle-state`` snapshot (conditional on its timestamp); put the trip-state if the trip moved; put
the record's crumb (one trail UpdateItem per record); on a completed trip, query its trail and put the
archive object and the index item. Clients are created once (module-level, as Lambda code does); nothing is
batched, coalesced or cached.

It writes the same tables in the same shapes (it reuses the trip machine and item builders, so the trip
logic is identical), which keeps the comparison about the I/O pattern and the per-record overhead.
``plan`` is the pure part (what the CPU-path benchmark times), ``NaiveHandler`` the I/O around it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from processors.archive import archive_key, archive_trip
from processors.signals import format_time
from processors.trail import BucketMerge, crumb_of, pack
from processors.trip_items import item_fields, next_last_update, state_from_item
from processors.trips import CompletedTrip, TripEffects, TripStateMachine, VehicleTrips, step_of
from schemas.dynamo import Item, from_item, to_attribute, to_item
from schemas.items import TripStateItem
from schemas.records import Location, StreamPosition, VehicleReading
from worker.aws import aws_error_code
from worker.stores.dynamo_trail import DynamoTrail
from worker.stores.vin_vault import KmsVinVault as VinVault
from worker.stores.vin_vault import load_pseudonym_key

if TYPE_CHECKING:
    from worker.aws import AwsClients
    from worker.config import Settings


def pseudonym_key(settings: Settings, clients: AwsClients) -> bytes:
    """The same HMAC key the worker uses, read the same way."""
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode()
    return load_pseudonym_key(settings.pseudonym_secret_id, clients.secretsmanager)


class NaiveSignals(BaseModel):
    model_config = ConfigDict(extra="allow")

    vehicleSpeed: float | None = None
    lat: float | None = None
    lng: float | None = None
    heading: float | None = None
    odometer: float | None = None
    batteryLevel: float | None = None
    batteryRange: float | None = None
    shiftState: str | None = None


class NaiveRecord(BaseModel):
    vin: str
    timestamp: datetime
    signals: NaiveSignals


@dataclass
class NaiveWrites:
    """The requests one record turns into (DynamoDB items), before any of them is sent."""

    pseudo_vin: str
    vin: str
    vehicle_state: Item
    trip_state: Item | None = None
    trail: list[BucketMerge] = field(default_factory=list)
    completed: list[CompletedTrip] = field(default_factory=list)


class NaivePlanner:
    def __init__(self, key: bytes, machine: TripStateMachine) -> None:
        self._key = key
        self._machine = machine

    def decode(self, data: bytes) -> tuple[NaiveRecord, str]:
        record = NaiveRecord.model_validate(json.loads(data))
        vin = record.vin.strip().upper()
        return record, hmac.new(self._key, vin.encode(), hashlib.sha256).hexdigest()[:32]

    def plan(
        self,
        record: NaiveRecord,
        pseudo_vin: str,
        stored_trip: Item | None,
        position: StreamPosition,
        data: bytes = b"",
    ) -> NaiveWrites:
        at_ms = int(record.timestamp.timestamp() * 1000)
        at = format_time(at_ms)
        signals: dict[str, Any] = record.signals.model_dump(exclude_none=True)
        if "lat" in signals and "lng" in signals:
            signals["location"] = Location(signals.pop("lat"), signals.pop("lng"))
        snapshot: Item = {"pseudoVin": {"S": pseudo_vin}, "timestamp": {"S": at}}
        for name, value in signals.items():
            snapshot[name] = {"M": {"value": to_attribute(value), "at": {"S": at}}}
        writes = NaiveWrites(pseudo_vin, record.vin.strip().upper(), snapshot)

        state = (
            state_from_item(TripStateItem.model_validate(from_item(stored_trip)))[0]
            if stored_trip
            else VehicleTrips(pseudo_vin)
        )
        effects = TripEffects()
        reading = VehicleReading(pseudo_vin, at_ms, signals, position)
        self._machine.apply(state, step_of(reading, data), effects)
        if effects.changed:
            item = TripStateItem(**item_fields(pseudo_vin, state), lastUpdate=next_last_update(None))
            writes.trip_state = to_item(item.model_dump(exclude_none=True, exclude={"closing"}))
        crumb = crumb_of(reading)
        writes.trail = pack(pseudo_vin, [crumb]) if crumb is not None else []
        writes.completed = effects.completed
        return writes


class NaiveHandler:
    """One record at a time, every write on its own, as a Lambda handler looping over its event."""

    def __init__(self, settings: Settings, clients: AwsClients, key: bytes) -> None:
        self._planner = NaivePlanner(key, TripStateMachine(settings.trip_thresholds()))
        self._ddb = clients.dynamodb
        self._s3 = clients.s3
        self._trail = DynamoTrail(clients.dynamodb, settings.table_names["live-breadcrumbs"])
        self._vault = VinVault(
            clients.dynamodb, clients.kms, settings.table_names["vin-mapping"], settings.vin_key_alias
        )
        self._settings = settings
        self._tables = settings.table_names

    def handle(self, data: bytes, position: StreamPosition) -> None:
        record, pseudo_vin = self._planner.decode(data)
        # The same conditional write as ours, but on every record: no cache asked first.
        self._vault.remember(pseudo_vin, record.vin.strip().upper())
        stored = cast(
            Item | None,
            self._ddb.get_item(
                TableName=self._tables["trip-state"],
                Key={"pseudoVin": {"S": pseudo_vin}},
                ConsistentRead=True,
            ).get("Item"),
        )
        writes = self._planner.plan(record, pseudo_vin, stored, position, data)
        try:
            self._ddb.put_item(
                TableName=self._tables["vehicle-state"],
                Item=writes.vehicle_state,
                ConditionExpression="attribute_not_exists(pseudoVin) OR #ts < :ts",
                ExpressionAttributeNames={"#ts": "timestamp"},
                ExpressionAttributeValues={":ts": writes.vehicle_state["timestamp"]},
            )
        except ClientError as error:
            if aws_error_code(error) != "ConditionalCheckFailedException":
                raise
        if writes.trip_state is not None:
            self._ddb.put_item(TableName=self._tables["trip-state"], Item=writes.trip_state)
        self._trail.merge(writes.trail)
        for trip in writes.completed:
            self._archive(trip)

    def _archive(self, trip: CompletedTrip) -> None:
        body, item = archive_trip(
            trip, self._trail.read(trip.pseudo_vin, trip.start_time_ms, trip.end_time_ms)
        )
        self._s3.put_object(
            Bucket=self._settings.archive_bucket,
            Key=archive_key(trip.pseudo_vin, trip.trip_id),
            Body=body,
            ContentType="application/json",
            ContentEncoding="gzip",
        )
        self._ddb.put_item(
            TableName=self._tables["trips-index"], Item=to_item(item.model_dump(exclude_none=True))
        )
