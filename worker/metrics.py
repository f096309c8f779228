"""Metrics as CloudWatch Embedded Metric Format (EMF) documents, one per batch per shard, on the log stream.

A document is a JSON log line with an ``_aws`` member; when the line reaches CloudWatch Logs (the
task's ``awslogs`` driver) CloudWatch extracts the metrics it declares, no ``PutMetricData`` call and
no agent needed. It travels with the logs, so on stderr (or the launcher's stderr), never on stdout,
which is the KCL protocol. Spec: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.logs import METRICS_LOGGER

log = logging.getLogger(METRICS_LOGGER)

DIMENSIONS = (("Application", "Shard"), ("Application",))
"""Per shard, and rolled up over the application's shards."""

UNITS = {
    "RecordsProcessed": "Count",
    "RecordsDeadLettered": "Count",
    "TripsArchived": "Count",
    "InvalidCoordinates": "Count",
    "SignalsDropped": "Count",
    "LateForMachine": "Count",
    "LateAfterArchive": "Count",
    "WriteRequests": "Count",
    "BatchDurationMs": "Milliseconds",
    "MillisBehindLatest": "Milliseconds",
}


@dataclass(frozen=True, slots=True)
class BatchMetrics:
    """What one batch did, aggregated."""

    records: int
    dead_letters: int
    trips_archived: int
    invalid_coordinates: int
    """Records kept without their location (out of range, not finite, or no fix)."""
    signals_dropped: int
    """Signals left out of applied records by the per-record bounds (count, value size, storability)."""
    write_requests: int
    duration_ms: float
    millis_behind_latest: int | None
    """None when the daemon did not say (then the metric is left out, not reported as 0)."""
    late_for_machine: int = 0
    """Records that arrived at or below their vehicle's high-water mark (displaced beyond the settle
    window, or redelivered after a restart): they never drive the trip machine."""
    late_after_archive: int = 0
    """Records whose event time falls in a recent completed trip's span that arrived after its completion
    point: on the live trail, not in that trip's archive (``late_after_archive`` log line each)."""

    def values(self) -> dict[str, float]:
        values: dict[str, float] = {
            "RecordsProcessed": self.records,
            "RecordsDeadLettered": self.dead_letters,
            "TripsArchived": self.trips_archived,
            "InvalidCoordinates": self.invalid_coordinates,
            "SignalsDropped": self.signals_dropped,
            "LateForMachine": self.late_for_machine,
            "LateAfterArchive": self.late_after_archive,
            "WriteRequests": self.write_requests,
            "BatchDurationMs": self.duration_ms,
        }
        if self.millis_behind_latest is not None:
            values["MillisBehindLatest"] = self.millis_behind_latest
        return values


def emf_document(
    namespace: str, application: str, shard_id: str, metrics: BatchMetrics, timestamp_ms: int
) -> dict[str, Any]:
    """One EMF document: the metric values and dimension values at top level, declared under ``_aws``."""
    values = metrics.values()
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions) for dimensions in DIMENSIONS],
                    "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in values],
                }
            ],
        },
        "Application": application,
        "Shard": shard_id,
        **values,
    }


class MetricsPublisher:
    """Writes EMF documents through the ``worker.metrics`` logger: the same handler, stream and lock as
    the log lines (so lines never interleave), at a level that ``FLEET_LOG_LEVEL`` does not silence."""

    def __init__(self, namespace: str, application: str, clock: Callable[[], float] = time.time) -> None:
        self._namespace = namespace
        self._application = application
        self._clock = clock

    def batch(self, shard_id: str, metrics: BatchMetrics) -> None:
        document = emf_document(
            self._namespace, self._application, shard_id, metrics, int(self._clock() * 1000)
        )
        log.info("metrics", extra={"emf": document})
