"""``python -m worker resolve``: the VIN behind a pseudoVin, for an admin with ``kms:Decrypt``."""

from __future__ import annotations

import logging

from processors.pseudonymize import VinVault
from worker.aws import AwsClients
from worker.config import Settings
from worker.logs import event

log = logging.getLogger(__name__)


def resolve_vin(settings: Settings, clients: AwsClients, pseudo_vin: str) -> str | None:
    """The VIN mapped to ``pseudo_vin`` (None: no mapping). Every lookup is logged, never the VIN."""
    vault = VinVault(
        clients.dynamodb, clients.kms, settings.table_names["vin-mapping"], settings.vin_key_alias
    )
    vin = vault.resolve(pseudo_vin)
    event(log, "vin_resolved", pseudoVin=pseudo_vin, found=vin is not None)
    return vin
