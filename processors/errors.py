"""Typed errors, each carrying a reason code.

``FleetIngestError`` is the base of them all: ``OperatorError`` for what the CLI prints as one line,
``TransientError`` for what is worth trying again.
``InvalidRecord`` is the dead-letter path: the record is dead-lettered and the shard moves on.
``UnwritableUpdate`` is the same path found late: a store refused a decoded record's content as invalid.
``StaleTripState`` is the optimistic-concurrency path: another writer moved first, re-plan on top of it.
``WriteOnceConflict``: a write-once object (archive, segment, dead letter) is stored with other content.
``TransientError`` is the slow-down path: the call is retried (``worker.retry``) and, once retries are
exhausted, the batch fails without a checkpoint so the KCL redelivers it.

The adapters of ``processors.ports`` (in ``worker/stores/``) translate AWS outcomes into these; nothing in
``processors/`` knows an AWS error (``worker.aws.aws_error_code`` is the one way to match one).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from schemas.items import TripStateItem


class RejectReason(StrEnum):
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_FORMAT = "unknown_format"
    SCHEMA_VIOLATION = "schema_violation"
    INVALID_VIN = "invalid_vin"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    OVERSIZE = "oversize"
    UNSUPPORTED_RECORD_TYPE = "unsupported_record_type"
    UNWRITABLE = "unwritable"
    """The record decoded, but a store refused its content as invalid (e.g. a DynamoDB validation error)."""
    INTERNAL_ERROR = "internal_error"
    """Decoding or planning the record raised an exception nobody foresaw (a bug, or input it did not
    expect): the detail names the exception's type only, never its message, which may quote input."""


REDRIVABLE: frozenset[RejectReason] = frozenset(
    {RejectReason.INTERNAL_ERROR, RejectReason.UNWRITABLE, RejectReason.TIMESTAMP_OUT_OF_RANGE}
)
"""Reasons a redrive puts back by default: a bug fixed since (``internal_error``), a store's refusal whose
bound was raised or whose update was partly stored (``unwritable``), a clock or a skew/age window that was
wrong (``timestamp_out_of_range``; the redrive is the record's new arrival). The other reasons are the
record's own bytes (not UTF-8, not JSON, not a known shape, a bad VIN, too large, a record type we do not
store): the same bytes fail the same way, so a redrive would only quarantine them again. Those go back
only with ``--force`` (after a decoder learned the shape, say)."""


class FleetIngestError(Exception):
    """The base of every error this project raises on purpose. A message never holds a VIN or a payload."""


class OperatorError(FleetIngestError):
    """A mistake an operator can act on (a bad argument, a name that is not stored, an unusable install):
    the CLI prints it as one line, without a traceback, and exits with ``exit_code``."""

    exit_code: int = 1


class PseudonymKeyMismatch(OperatorError):
    """The pseudonymization key loaded is not the one ``vin-mapping`` was built with (or no fingerprint of
    one is recorded there): consuming would write every vehicle under new pseudoVins, so nothing is."""

    exit_code = 6


class TransientError(FleetIngestError):
    """Something that may succeed when tried again (throttling, 5xx, a lost optimistic-concurrency race).
    ``reason`` is a short code for logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class InvalidRecord(FleetIngestError):
    """A record that can never be applied. ``detail`` must never contain a VIN or the payload."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StaleTripState(FleetIngestError):
    """The stored trip-state item changed since we read it; ``current`` is what is stored now (None: no
    item). Raised instead of overwriting: the writer re-plans on top of ``current``."""

    def __init__(self, pseudo_vin: str, current: TripStateItem | None) -> None:
        super().__init__(f"trip-state of {pseudo_vin} changed under us")
        self.pseudo_vin = pseudo_vin
        self.current = current


class UnwritableUpdate(FleetIngestError):
    """A store refused an update's content as invalid (DynamoDB's ``ValidationException``): retrying it
    cannot help, so the records at fault are found and dead-lettered instead."""

    def __init__(self, pseudo_vin: str, detail: str) -> None:
        super().__init__(f"{pseudo_vin}: {detail}")
        self.pseudo_vin = pseudo_vin
        self.detail = detail


class ConflictReason(StrEnum):
    DIFFERENT_BYTES = "different_bytes"
    """An archive or segment key already holds other bytes: a deterministic write was not deterministic."""
    PROVISIONAL_BYTES = "provisional_bytes"
    """An on-time archive's key (a trip and its end) holds other bytes: a crumb of its span arrived after it
    was written. Expected; the final archive, written once the allowed lateness has passed, has it."""
    DIFFERENT_RECORD = "different_record"
    """A dead letter's key (its stream position) already holds the dead letter of another record."""


class WriteOnceConflict(FleetIngestError):
    """A write-once object exists with other content than the one being written. Data written once is never
    replaced: the stored object stays, and the writer must not carry on as if its own were stored.
    ``key`` names a stream position or a pseudoVin and trip, never a VIN."""

    def __init__(self, key: str, reason: ConflictReason) -> None:
        super().__init__(f"{reason}: {key}")
        self.key = key
        self.reason = reason


def schema_detail(error: ValidationError) -> str:
    """Field paths and error kinds only: pydantic's own message would echo input values (a VIN)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'record'}: {e['type']}" for e in error.errors()
    )
