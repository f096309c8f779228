"""Create every resource the worker needs, idempotently: running it twice changes nothing."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from processors.errors import PseudonymKeyMismatch
from processors.pseudonymize import PSEUDONYM_KEY_ITEM
from schemas.tables import ALL_TABLES
from worker.aws import AwsClients, aws_error_code
from worker.config import Settings
from worker.logs import event

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

LIFECYCLE_RULES: tuple[dict[str, Any], ...] = (
    # The data model: archives 90 days in S3 Standard (while their trips-index item lives), then a year in
    # Glacier Instant Retrieval, then gone (docs/deploying.md).
    {
        "ID": "archive-trips",
        "Filter": {"Prefix": "trips/"},
        "Status": "Enabled",
        "Transitions": [{"Days": 90, "StorageClass": "GLACIER_IR"}],
        "Expiration": {"Days": 90 + 365},
    },
    # Segments of running long trips are staging data, read once when the trip is archived: kept well past
    # a trip plus the stream's retention of backlog plus the orphan sweep's delay.
    {
        "ID": "expire-trip-segments",
        "Filter": {"Prefix": "trip-segments/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    },
    # On-time archives: an index item points at one only until the final archive replaces it, L later.
    {
        "ID": "expire-provisional-trips",
        "Filter": {"Prefix": "trips-provisional/"},
        "Status": "Enabled",
        "Expiration": {"Days": 2},
    },
    # Dead letters: a quarter to find the cause, fix it and redrive.
    {
        "ID": "expire-dead-letters",
        "Filter": {"Prefix": "dead-letter/"},
        "Status": "Enabled",
        "Expiration": {"Days": 90},
    },
    {
        "ID": "abort-incomplete-uploads",
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    },
)
"""The archive bucket's lifecycle, as deploy/fleet-ingest.yaml declares it with its default parameters
(tests/deploy/test_stack.py checks they agree). Bootstrap merges these by ID into the bucket's rules: an
operator's own rules stay."""


@dataclass
class BootstrapReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)

    def note(self, resource: str, created: bool) -> None:
        (self.created if created else self.existing).append(resource)


def bootstrap(settings: Settings, clients: AwsClients, shards: int = 2) -> BootstrapReport:
    report = BootstrapReport()
    report.note(f"stream {settings.stream_name}", _stream(settings, clients, shards))
    for spec in ALL_TABLES:
        name = settings.table_name(spec)
        report.note(f"table {name}", _table(clients, spec.create_table_request(name), spec.ttl_attribute))
    report.note(f"bucket {settings.archive_bucket}", _bucket(settings, clients))
    report.note(f"kms {settings.vin_key_alias}", _kms_key(settings, clients))
    report.note(f"secret {settings.pseudonym_secret_id}", _secret(settings, clients))
    report.note(f"fingerprint {PSEUDONYM_KEY_ITEM}", record_pseudonym_fingerprint(settings, clients))
    event(log, "bootstrap", created=report.created, existing=report.existing)
    return report


def record_pseudonym_fingerprint(settings: Settings, clients: AwsClients) -> bool:
    """Record the pseudonymization key's fingerprint in ``vin-mapping`` (first one wins). Returns whether
    it was recorded now; raises ``PseudonymKeyMismatch`` if another key's is recorded."""
    from worker.wiring import pseudonymizer_for, vin_vault

    loaded = pseudonymizer_for(settings, clients).fingerprint()
    vault = vin_vault(settings, clients)
    recorded = vault.fingerprint()
    if recorded is None:
        recorded = vault.record_fingerprint(loaded)
        if recorded == loaded:
            return True
    if recorded != loaded:
        raise PseudonymKeyMismatch(
            "vin-mapping records another pseudonym key (fingerprint "
            f"{recorded[:8]}… recorded, {loaded[:8]}… loaded); refusing to change it: "
            "see README, Rotating the pseudonymization key"
        )
    return False


def _stream(settings: Settings, clients: AwsClients, shards: int) -> bool:
    kinesis = clients.kinesis
    try:
        kinesis.create_stream(StreamName=settings.stream_name, ShardCount=shards)
        created = True
    except ClientError as error:
        if aws_error_code(error) != "ResourceInUseException":
            raise
        created = False
    kinesis.get_waiter("stream_exists").wait(
        StreamName=settings.stream_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    return created


def _table(clients: AwsClients, request: dict[str, object], ttl_attribute: str | None) -> bool:
    dynamodb = clients.dynamodb
    name = str(request["TableName"])
    try:
        dynamodb.create_table(**request)  # type: ignore[arg-type]
        created = True
    except ClientError as error:
        if aws_error_code(error) != "ResourceInUseException":
            raise
        created = False
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    if ttl_attribute:
        ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute}
            )
    return created


def _bucket(settings: Settings, clients: AwsClients) -> bool:
    s3 = clients.s3
    # us-east-1 answers 200 to re-creating one's own bucket, so ask first.
    try:
        s3.head_bucket(Bucket=settings.archive_bucket)
        created = False
    except ClientError:
        if settings.region == "us-east-1":
            s3.create_bucket(Bucket=settings.archive_bucket)
        else:
            s3.create_bucket(
                Bucket=settings.archive_bucket,
                CreateBucketConfiguration={"LocationConstraint": settings.region},  # type: ignore[typeddict-item]
            )
        created = True
    s3.put_public_access_block(
        Bucket=settings.archive_bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    _merge_lifecycle(s3, settings.archive_bucket)
    return created


def _merge_lifecycle(s3: S3Client, bucket: str) -> None:
    """Put LIFECYCLE_RULES, replacing only rules with their IDs: PutBucketLifecycleConfiguration replaces
    the whole configuration, so the others are read first and put back."""
    try:
        existing = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as error:
        if aws_error_code(error) != "NoSuchLifecycleConfiguration":
            raise
        existing = []
    ours = {rule["ID"] for rule in LIFECYCLE_RULES}
    kept = [rule for rule in existing if rule.get("ID") not in ours]
    rules: list[Any] = [*kept, *LIFECYCLE_RULES]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})


def _kms_key(settings: Settings, clients: AwsClients) -> bool:
    kms = clients.kms
    try:
        kms.describe_key(KeyId=settings.vin_key_alias)
        return False
    except ClientError as error:
        if aws_error_code(error) != "NotFoundException":
            raise
    key_id = kms.create_key(Description="fleet-ingest: VINs and dead letters")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=settings.vin_key_alias, TargetKeyId=key_id)
    return True


def _secret(settings: Settings, clients: AwsClients) -> bool:
    client = clients.secretsmanager
    try:
        client.create_secret(Name=settings.pseudonym_secret_id, SecretString=secrets.token_hex(32))
        return True
    except ClientError as error:
        if aws_error_code(error) != "ResourceExistsException":
            raise
        return False
