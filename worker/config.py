"""Runtime configuration: every knob is an environment variable with the ``FLEET_`` prefix.

The AWS endpoint and region come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``)
so the same settings drive boto3, the KCL daemon and the local AWS.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors.trips import TripThresholds
from schemas.tables import ALL_TABLES, TableSpec


class Settings(BaseSettings):
    """Every knob of the worker, read once per process from ``FLEET_*`` variables (and the standard AWS
    ones); frozen. Validation errors name the setting, never its value: a setting may be a secret."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # --- where things are ---------------------------------------------------------------------------
    stream_name: str = Field("vehicle-telemetry", description="Kinesis stream consumed by the worker.")
    application_name: str = Field(
        "fleet-ingest", description="KCL application name; also names the KCL lease table."
    )
    table_prefix: str = Field("", description="Prefix prepended to every data table name (e.g. `prod-`).")
    vehicle_state_table: str = Field("vehicle-state", description="Latest snapshot per vehicle.")
    trip_state_table: str = Field(
        "trip-state", description="Open trips only (idle vehicles' marks are in vin-mapping)."
    )
    trips_index_table: str = Field("trips-index", description="One metadata item per archived trip.")
    live_breadcrumbs_table: str = Field(
        "live-breadcrumbs-v2", description="Every vehicle's trail in 15 s buckets (24 h after arrival)."
    )
    vin_mapping_table: str = Field("vin-mapping", description="pseudoVin -> KMS-encrypted VIN.")
    archive_bucket: str = Field(
        "fleet-telemetry-archive", description="S3 bucket for trip archives and dead letters."
    )
    region: str = Field(
        "us-east-1",
        validation_alias=AliasChoices("FLEET_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region (`AWS_REGION` / `AWS_DEFAULT_REGION` also accepted).",
    )
    endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL", "FLEET_ENDPOINT_URL"),
        description="Custom AWS endpoint for every service (the local AWS); unset means real AWS.",
    )
    kinesis_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL_KINESIS", "FLEET_KINESIS_ENDPOINT_URL"),
        description="Kinesis only, instead of `AWS_ENDPOINT_URL` (`AWS_ENDPOINT_URL_KINESIS` also "
        "accepted, botocore's name): a local Kinesis of its own, such as kinesis-local for `FANOUT`.",
    )

    # --- pseudonymization ---------------------------------------------------------------------------
    pseudonym_secret_id: str = Field(
        "fleet-ingest/pseudonym-key", description="Secrets Manager id of the HMAC key for pseudoVins."
    )
    pseudonym_key: SecretStr | None = Field(
        None, description="Local use only: the HMAC key itself, bypassing Secrets Manager."
    )
    vin_key_alias: str = Field(
        "alias/fleet-ingest-vin", description="KMS key encrypting VINs and dead letters."
    )

    # --- processing -----------------------------------------------------------------------------------
    checkpoint_every_seconds: float = Field(
        60.0,
        description="Checkpoint this often (and at shutdown and shard end), after writing everything "
        "pending; at the position just before the oldest record the trip machine has not consumed yet.",
    )
    state_max_delay_ms: int = Field(
        1800,
        ge=0,
        description="Freshness budget B: a record's `vehicle-state` effect is written at most this long "
        "after its arrival in the stream (or its receipt + B when received later), at most one write per "
        "vehicle per B.",
    )
    liveness_seconds: int = Field(
        60,
        ge=0,
        description="A record that changes no `vehicle-state` value, only moves its `ts` (a parked vehicle "
        "repeating itself), is written at most this often per vehicle, and at the checkpoint flush; a "
        "changed value is written within B and takes `ts` with it. `0`: every record within B.",
    )
    state_write_margin_ms: int = Field(
        100,
        ge=0,
        description="Time a buffered write is taken before its deadline on top of the poll interval, so "
        "it lands by the deadline (a write's latency).",
    )
    trail_max_delay_ms: int = Field(
        15_000,
        ge=0,
        description="A pending trail bucket merge is written at the latest this long after its first "
        "crumb (sooner once the vehicle's newest record passes the bucket's end).",
    )
    max_record_bytes: int = Field(65_536, description="Larger records are quarantined as `oversize`.")
    max_future_skew_seconds: int = Field(
        86_400, description="Event times further ahead of the stream's arrival time are rejected."
    )
    max_event_age_hours: float = Field(
        168.0, description="Event times older than this before arrival are rejected (set to the retention)."
    )
    max_signals_per_vehicle: int = Field(
        300,
        gt=0,
        description="Signals one record may write to its vehicle's `vehicle-state` item: known signals "
        "first, then unknown names in name order; the rest are dropped and counted (`signalsDropped`).",
    )
    max_signal_value_bytes: int = Field(
        4096,
        gt=0,
        description="Largest value (as JSON) of one signal in `vehicle-state`; larger ones are dropped "
        "and counted.",
    )
    write_concurrency: int = Field(16, description="Concurrent AWS writes per record processor.")
    aws_max_attempts: int = Field(
        3, description="botocore attempts per AWS call (retried further by the worker)."
    )

    # --- trips ----------------------------------------------------------------------------------------
    trip_start_speed_mph: float = Field(5.0, description="A trip starts above this speed.")
    trip_end_speed_mph: float = Field(1.0, description="A trip starts ending at or below this speed.")
    trip_gap_seconds: int = Field(300, description="Stop length that completes a trip.")
    trip_lateness_seconds: int = Field(
        30,
        ge=0,
        description="Allowed lateness L: the exact trip machine consumes a vehicle's records in event-time "
        "order, each once no earlier one can still arrive (L later in the vehicle's event time or in the "
        "stream's arrival clock); a record displaced further is counted (`LateForMachine`), never consumed. "
        "Trip archives are exact for records displaced by up to L, and come L after the gap.",
    )
    trip_progress_seconds: float = Field(
        10.0,
        ge=0,
        description="A driving vehicle's live `trip-state` progress (`lastEventTime`, `breadcrumbCount`) is "
        "written at most this often; transitions (start, stop, end) at once, except while catching up (the "
        "newest record arrived over `FLEET_TRIP_LATENESS_SECONDS` ago): then the item at most this often.",
    )
    trip_idle_seconds: int | None = Field(
        None,
        gt=0,
        description="Silence (since the newest record's arrival) after which the orphan sweep completes a "
        "trip; unset: twice `FLEET_TRIP_GAP_SECONDS`.",
    )
    trip_segment_breadcrumbs: int = Field(
        3600, description="Long trips are staged to S3 in segments of this many breadcrumbs."
    )

    # --- KCL MultiLangDaemon --------------------------------------------------------------------------
    kcl_executable: str = Field(
        "",
        description="Record processor command the daemon starts per shard; empty means this worker's "
        "(`<python> -m worker process`).",
    )
    kcl_initial_position: str = Field("TRIM_HORIZON", description="Where a new lease starts reading.")
    kcl_retrieval_mode: Literal["FANOUT", "POLLING"] = Field(
        "POLLING",
        description="How the daemon reads a shard: `FANOUT` (enhanced fan-out: the stream pushes records to "
        "a registered consumer over SubscribeToShard, 2 MB/s per shard of its own; what the stack runs) or "
        "`POLLING` (GetRecords every `FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS`, sharing the shard's "
        "5 reads a second with every other application on the stream).",
    )
    kcl_consumer_arn: str | None = Field(
        None,
        description="`FANOUT`: the ARN of a consumer registered beforehand (the stack's); the KCL then "
        "only subscribes with it. Unset: the KCL finds or registers `FLEET_KCL_CONSUMER_NAME` itself.",
    )
    kcl_consumer_name: str | None = Field(
        None,
        description="`FANOUT` without a consumer ARN: the consumer the KCL looks up, or registers, on the "
        "stream; unset: the application name (`FLEET_APPLICATION_NAME`).",
    )
    kcl_worker_id: str | None = Field(
        None,
        description="This task's name as a lease owner (e.g. the ECS task id), so `status` and the lease "
        "table say which task holds a shard; unset: one the KCL generates.",
    )
    kcl_failover_time_millis: int = Field(
        10_000, description="Lease expiry; a dead worker's shards move after it."
    )
    kcl_shard_sync_interval_millis: int = Field(60_000, description="Pause between shard syncs.")
    kcl_idle_time_between_reads_millis: int = Field(
        250, description="Pause between GetRecords calls (4 polls a second: 1 of the 5 allowed is left)."
    )
    kcl_max_records: int = Field(10_000, description="Records per GetRecords call.")
    kcl_shutdown_grace_millis: int = Field(
        30_000, description="Time the daemon gives processors to checkpoint on shutdown."
    )
    kcl_log_level: str = Field("WARN", description="Log level of the Java daemon (logs go to stderr).")
    log_level: str = Field("INFO", description="Log level of the Python worker.")
    heartbeat_path: Path = Field(
        Path("/tmp/fleet-ingest-heartbeat"),  # noqa: S108 - the container's /tmp is its own task volume
        description="Directory of heartbeat files (daemon, each shard) read by `python -m worker health`.",
    )
    heartbeat_max_age_seconds: float = Field(
        120.0, description="`health` fails when the daemon's or a shard's heartbeat is older than this."
    )
    metrics_namespace: str = Field(
        "fleet-ingest/worker",
        description="CloudWatch namespace of the worker's metrics (EMF documents in its logs); apart from "
        "the KCL's own, which go to the namespace named after the application.",
    )

    @field_validator(
        "endpoint_url", "kinesis_endpoint_url", "kcl_consumer_arn", "kcl_consumer_name", mode="before"
    )
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # `AWS_ENDPOINT_URL=`

    @field_validator("kcl_retrieval_mode", mode="before")
    @classmethod
    def _mode_in_capitals(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value  # the KCL's parser ignores case

    @model_validator(mode="after")
    def _key_only_locally(self) -> Settings:
        if self.pseudonym_key is not None and self.endpoint_url is None:
            raise ValueError(
                "FLEET_PSEUDONYM_KEY is for the local AWS only (with AWS_ENDPOINT_URL); on AWS the key "
                "is read from Secrets Manager (FLEET_PSEUDONYM_SECRET_ID)"
            )
        return self

    @model_validator(mode="after")
    def _consumer_only_with_fanout(self) -> Settings:
        # In POLLING the KCL never reads them: a stack that sets a consumer meant to fan out.
        if self.kcl_retrieval_mode == "POLLING" and (self.kcl_consumer_arn or self.kcl_consumer_name):
            raise ValueError(
                "FLEET_KCL_CONSUMER_ARN and FLEET_KCL_CONSUMER_NAME are for FLEET_KCL_RETRIEVAL_MODE=FANOUT; "
                "with POLLING the daemon would ignore them"
            )
        return self

    @property
    def kinesis_endpoint(self) -> str | None:
        """Where Kinesis is: its own endpoint if one is set, else the one of every service."""
        return self.kinesis_endpoint_url or self.endpoint_url

    @property
    def trip_lateness_ms(self) -> int:
        return self.trip_lateness_seconds * 1000

    @property
    def trip_progress_ms(self) -> int:
        return round(self.trip_progress_seconds * 1000)

    @property
    def trip_idle_ms(self) -> int:
        """The sweep's silence: ``trip_idle_seconds``, by default twice the gap."""
        seconds = 2 * self.trip_gap_seconds if self.trip_idle_seconds is None else self.trip_idle_seconds
        return seconds * 1000

    @property
    def state_flush_lead_ms(self) -> int:
        """How long before its deadline a buffered write is taken: the next poll may be that far away,
        and the write must land by the deadline."""
        return self.kcl_idle_time_between_reads_millis + self.state_write_margin_ms

    def trip_thresholds(self) -> TripThresholds:
        return TripThresholds(
            start_speed_mph=self.trip_start_speed_mph,
            end_speed_mph=self.trip_end_speed_mph,
            gap_ms=self.trip_gap_seconds * 1000,
            segment_breadcrumbs=self.trip_segment_breadcrumbs,
        )

    def table_name(self, spec: TableSpec) -> str:
        """The physical name of a data table: prefix + configured name."""
        return self.table_prefix + str(getattr(self, spec.setting))

    @cached_property
    def table_names(self) -> dict[str, str]:
        """Logical table name (e.g. ``vehicle-state``) -> physical name."""
        return {spec.name: self.table_name(spec) for spec in ALL_TABLES}
