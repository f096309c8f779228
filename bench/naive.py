"""The naive peer: a team's first Lambda-style version of the same product, for the benchmark.

Per record, in order: ``json.loads`` into a full pydantic model; HMAC the VIN (no cache); KMS-encrypt the
VIN and write the ``vin-mapping`` item (``if_not_exists``, every time); ``GetItem`` its trip-state; put
the ``vehicle-state`` snapshot (conditional on its timestamp); put the trip-state if the trip moved; put
the record's breadcrumb while in a trip; on a completed trip, query its breadcrumbs and put the archive
object and the index item. Clients are created once (module-level, as Lambda code does); nothing is
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

from processors.archive import archive_key, archive_record, gzip_json, index_item
from processors.signals import format_time
from processors.trip_items import breadcrumb_item, next_last_update, state_fields, state_from_item
from processors.trips import CompletedTrip, TripEffects, TripStateMachine, VehicleTrips
from schemas.dynamo import Item, from_item, to_attribute, to_item
from schemas.items import BreadcrumbItem, TripStateItem
from schemas.records import Location, StreamPosition, VehicleReading
from worker.aws import aws_error_code
from worker.pipeline import trip_thresholds
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
    breadcrumbs: list[Item] = field(default_factory=list)
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
        self, record: NaiveRecord, pseudo_vin: str, stored_trip: Item | None, position: StreamPosition
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
            state_from_item(TripStateItem.model_validate(from_item(stored_trip)))
            if stored_trip
            else VehicleTrips(pseudo_vin)
        )
        effects = TripEffects()
        self._machine.apply(state, VehicleReading(pseudo_vin, at_ms, signals, position), effects)
        if effects.changed:
            item = TripStateItem(**state_fields(state), lastUpdate=next_last_update(None))
            writes.trip_state = to_item(item.model_dump(exclude_none=True, exclude={"closing"}))
        writes.breadcrumbs = [breadcrumb_item(crumb) for crumb in effects.breadcrumbs]
        writes.completed = effects.completed
        return writes


class NaiveHandler:
    """One record at a time, every write on its own, as a Lambda handler looping over its event."""

    def __init__(self, settings: Settings, clients: AwsClients, key: bytes) -> None:
        self._planner = NaivePlanner(key, TripStateMachine(trip_thresholds(settings)))
        self._ddb = clients.dynamodb
        self._s3 = clients.s3
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
        writes = self._planner.plan(record, pseudo_vin, stored, position)
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
        for crumb in writes.breadcrumbs:
            self._ddb.put_item(TableName=self._tables["live-breadcrumbs"], Item=crumb)
        for trip in writes.completed:
            self._archive(trip)

    def _archive(self, trip: CompletedTrip) -> None:
        page = self._ddb.query(
            TableName=self._tables["live-breadcrumbs"],
            ConsistentRead=True,
            KeyConditionExpression="pseudoVin = :pv AND #ts BETWEEN :from AND :to",
            FilterExpression="tripId = :trip",
            ExpressionAttributeNames={"#ts": "timestamp"},
            ExpressionAttributeValues={
                ":pv": {"S": trip.pseudo_vin},
                ":from": {"S": format_time(trip.start_time_ms)},
                ":to": {"S": format_time(trip.end_time_ms)},
                ":trip": {"S": trip.trip_id},
            },
        )
        records = [archive_record(BreadcrumbItem.model_validate(from_item(raw))) for raw in page["Items"]]
        self._s3.put_object(
            Bucket=self._settings.archive_bucket,
            Key=archive_key(trip.pseudo_vin, trip.trip_id),
            Body=gzip_json(records),
            ContentType="application/json",
            ContentEncoding="gzip",
        )
        item = index_item(trip, len(records))
        self._ddb.put_item(
            TableName=self._tables["trips-index"], Item=to_item(item.model_dump(exclude_none=True))
        )
