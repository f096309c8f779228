"""Write-once S3 objects: ``PutObject`` with ``If-None-Match: *``, and what a refusal means.

Archives (``trips/``), sealed segments (``trip-segments/``) and dead letters (``dead-letter/``) are data: once
stored, nobody replaces them, not a retry, not a zombie, not a redelivery after a deploy. S3 refuses a
conditional put on an existing key with 412 ``PreconditionFailed``. On a retry that is the normal case
(the first attempt was stored, its answer lost; or the record was redelivered), so the refusal is looked
at: the object's ``content-sha256`` metadata (written with it) is compared with the content of this write;
equal is done, different raises ``WriteOnceConflict`` and logs ``archive_conflict`` at ERROR (a metric
filter on the event counts it). What "the same content" is, is the caller's: the bytes for archives and
segments, a keyed hash of the record for dead letters (whose ciphertext differs on every write).

409 ``ConditionalRequestConflict`` (another conditional write on the key still in flight) is retryable:
``TransientError``, so the next attempt meets the finished write and compares.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from processors.errors import ConflictReason, TransientError, WriteOnceConflict
from worker.aws import aws_error_code
from worker.logs import event

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

CONTENT_HASH = "content-sha256"
"""User metadata (``x-amz-meta-content-sha256``) holding what the writer calls its content's hash."""


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def put_once(
    s3: S3Client,
    bucket: str,
    key: str,
    body: bytes,
    content_hash: str,
    reason: ConflictReason,
    same_legacy: Callable[[bytes], bool],
    alarm: bool = True,
    **params: Any,
) -> bool:
    """Store ``body`` at ``key`` unless an object is there. True: stored now; False: an object of the same
    content was there (nothing written). Raises ``WriteOnceConflict`` if it holds other content.

    ``same_legacy`` judges an object written before its content hash was (no metadata), from its bytes.
    ``alarm``: the conflict is logged at ERROR (alarmed), else at INFO (expected).
    """
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            IfNoneMatch="*",
            Metadata={CONTENT_HASH: content_hash},
            **params,
        )
        return True
    except ClientError as error:
        code = aws_error_code(error)
        if code == "ConditionalRequestConflict":
            raise TransientError("s3_conditional_conflict", key) from error
        if code != "PreconditionFailed":
            raise
    # HEAD, not GET: the metadata is enough, and needs no KMS decrypt of an SSE-KMS object.
    stored = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get(CONTENT_HASH)
    if stored is None:
        same = same_legacy(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    else:
        same = stored == content_hash
    if same:
        return False
    event(
        log,
        "archive_conflict",
        logging.ERROR if alarm else logging.INFO,
        key=key,
        reason=str(reason),
        storedHash=(stored or "none")[:16],
        writtenHash=content_hash[:16],
    )
    raise WriteOnceConflict(key, reason)
