"""The one place that builds the boto3 adapters of ``processors.ports`` from ``Settings``: for the record
processor (``pipeline_for``), the orphan sweep (``trip_stores``, ``progress_store``), redrive
(``dead_letter_archive``) and resolve (``resolve_vin``); and the pseudonymization key, checked against the
fingerprint recorded in ``vin-mapping`` (``check_pseudonym_key``). Everything else receives its stores."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from processors.dead_letter import partition_key_hasher
from processors.ports import Stores, TrailStore, TripArchive, TripStore
from processors.pseudonymize import Pseudonymizer, check_fingerprint
from worker.aws import AwsClients
from worker.config import Settings
from worker.logs import event
from worker.pipeline import Pipeline
from worker.stores.dynamo_progress import DynamoProgress
from worker.stores.dynamo_trail import DynamoTrail
from worker.stores.dynamo_trips import DynamoTripStore
from worker.stores.dynamo_vehicle_state import DynamoVehicleState
from worker.stores.s3_archive import S3TripArchive
from worker.stores.s3_dead_letters import S3DeadLetters
from worker.stores.vin_vault import KmsVinVault, load_pseudonym_key


@dataclass(frozen=True, slots=True)
class TripStores:
    """What the orphan sweep writes through: trip state, the trail it archives from, and the archive."""

    trips: TripStore
    trail: TrailStore
    archive: TripArchive


def pseudonym_key(settings: Settings, clients: AwsClients) -> bytes:
    """The HMAC key (Secrets Manager; ``FLEET_PSEUDONYM_KEY`` locally). Never logged."""
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode("utf-8")
    return load_pseudonym_key(settings.pseudonym_secret_id, clients.secretsmanager)


def pseudonymizer_for(settings: Settings, clients: AwsClients) -> Pseudonymizer:
    return Pseudonymizer(pseudonym_key(settings, clients))


def check_pseudonym_key(settings: Settings, clients: AwsClients, pseudonymizer: Pseudonymizer) -> None:
    """Raise ``PseudonymKeyMismatch`` unless ``vin-mapping`` records this key's fingerprint (one read)."""
    check_fingerprint(vin_vault(settings, clients).fingerprint(), pseudonymizer.fingerprint())


def trip_stores(settings: Settings, clients: AwsClients) -> TripStores:
    tables = settings.table_names
    return TripStores(
        trips=DynamoTripStore(clients.dynamodb, tables["trip-state"], tables["vin-mapping"]),
        trail=trail_store(settings, clients),
        archive=S3TripArchive(clients.s3, settings.archive_bucket, clients.dynamodb, tables["trips-index"]),
    )


def trail_store(settings: Settings, clients: AwsClients) -> DynamoTrail:
    return DynamoTrail(clients.dynamodb, settings.table_names["live-breadcrumbs"])


def progress_store(settings: Settings, clients: AwsClients) -> DynamoProgress:
    """The shards' progress reports, in ``vin-mapping``."""
    return DynamoProgress(clients.dynamodb, settings.table_names["vin-mapping"])


def vin_vault(settings: Settings, clients: AwsClients) -> KmsVinVault:
    return KmsVinVault(
        clients.dynamodb, clients.kms, settings.table_names["vin-mapping"], settings.vin_key_alias
    )


def dead_letter_archive(
    settings: Settings, clients: AwsClients, hash_key: Callable[[str], str] = str
) -> S3DeadLetters:
    """The dead letters in the archive bucket. ``hash_key`` only matters for writing (the processor's
    pseudonymizer); an operator reading them needs none."""
    return S3DeadLetters(clients.s3, clients.kms, settings.archive_bucket, settings.vin_key_alias, hash_key)


def aws_stores(settings: Settings, clients: AwsClients, pseudonymizer: Pseudonymizer) -> Stores:
    trips = trip_stores(settings, clients)
    return Stores(
        trips=trips.trips,
        trail=trips.trail,
        vehicle_state=DynamoVehicleState(clients.dynamodb, settings.table_names["vehicle-state"]),
        dead_letters=dead_letter_archive(settings, clients, partition_key_hasher(pseudonymizer.pseudo_vin)),
        vault=vin_vault(settings, clients),
        archive=trips.archive,
        progress=progress_store(settings, clients),
    )


def pipeline_for(settings: Settings, clients: AwsClients | None = None) -> Pipeline:
    """The record processor's pipeline on AWS (the default of ``FleetRecordProcessor``). Raises
    ``PseudonymKeyMismatch`` before anything is built if the key is not the tables' own."""
    clients = clients or AwsClients(settings)
    pseudonymizer = pseudonymizer_for(settings, clients)
    check_pseudonym_key(settings, clients, pseudonymizer)
    return Pipeline(settings, aws_stores(settings, clients, pseudonymizer), pseudonymizer)


def resolve_vin(settings: Settings, clients: AwsClients, pseudo_vin: str) -> str | None:
    """The VIN behind a pseudoVin (operators: needs kms:Decrypt). Audited by a ``vin_resolved`` event that
    names the pseudoVin only."""
    vin = vin_vault(settings, clients).resolve(pseudo_vin)
    event(logging.getLogger("worker.resolve"), "vin_resolved", pseudoVin=pseudo_vin, found=vin is not None)
    return vin
