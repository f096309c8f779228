"""DynamoDB table definitions: the single source of truth for bootstrap, tests and the IAM policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

AttributeType = Literal["S", "N", "B"]


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    type: AttributeType = "S"


@dataclass(frozen=True, slots=True)
class GlobalIndex:
    name: str
    partition_key: Key
    sort_key: Key | None = None
    projection: Literal["ALL", "KEYS_ONLY"] = "ALL"


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    """Logical (seed) name, e.g. ``vehicle-state``."""
    setting: str
    """The Settings field holding the configured name."""
    partition_key: Key
    sort_key: Key | None = None
    indexes: tuple[GlobalIndex, ...] = ()
    ttl_attribute: str | None = None

    @property
    def key_names(self) -> tuple[str, ...]:
        return (self.partition_key.name,) + ((self.sort_key.name,) if self.sort_key else ())

    def create_table_request(self, physical_name: str) -> dict[str, Any]:
        """Arguments for ``dynamodb.create_table`` (on-demand billing)."""
        keys = [self.partition_key, *([self.sort_key] if self.sort_key else [])]
        for index in self.indexes:
            keys += [index.partition_key, *([index.sort_key] if index.sort_key else [])]
        definitions = {key.name: key.type for key in keys}
        request: dict[str, Any] = {
            "TableName": physical_name,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": _key_schema(self.partition_key, self.sort_key),
            "AttributeDefinitions": [
                {"AttributeName": name, "AttributeType": type_} for name, type_ in definitions.items()
            ],
        }
        if self.indexes:
            request["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index.name,
                    "KeySchema": _key_schema(index.partition_key, index.sort_key),
                    "Projection": {"ProjectionType": index.projection},
                }
                for index in self.indexes
            ]
        return request


def _key_schema(partition: Key, sort: Key | None) -> list[dict[str, str]]:
    schema = [{"AttributeName": partition.name, "KeyType": "HASH"}]
    if sort:
        schema.append({"AttributeName": sort.name, "KeyType": "RANGE"})
    return schema


PSEUDO_VIN = Key("pseudoVin")

VEHICLE_STATE = TableSpec("vehicle-state", "vehicle_state_table", PSEUDO_VIN)
# Open trips only (a vehicle without one keeps its mark in vin-mapping). The sweep finds the silent ones
# through a sparse index written across 16 partition keys (one key would throttle at fleet scale).
TRIP_STATE = TableSpec(
    "trip-state",
    "trip_state_table",
    PSEUDO_VIN,
    indexes=(GlobalIndex("open-trips-by-idle", Key("sweepShard", "N"), Key("idleAfter", "N"), "KEYS_ONLY"),),
)
TRIPS_INDEX = TableSpec(
    "trips-index",
    "trips_index_table",
    PSEUDO_VIN,
    sort_key=Key("tripId"),
    indexes=(GlobalIndex("tripDate-index", Key("tripDate"), Key("startTime")),),
    ttl_attribute="expiresAt",
)
# One vehicle's trail in 15 s buckets (``processors.trail``): one attribute per 10 ms slot, no trip label.
LIVE_BREADCRUMBS = TableSpec(
    "live-breadcrumbs",
    "live_breadcrumbs_table",
    PSEUDO_VIN,
    sort_key=Key("bucket", "N"),
    ttl_attribute="expiresAt",
)
VIN_MAPPING = TableSpec("vin-mapping", "vin_mapping_table", PSEUDO_VIN)

ALL_TABLES: tuple[TableSpec, ...] = (VEHICLE_STATE, TRIP_STATE, TRIPS_INDEX, LIVE_BREADCRUMBS, VIN_MAPPING)
