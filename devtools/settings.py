"""Settings for tests, benchmarks and the demo: what a process started with a given environment reads."""

from __future__ import annotations

import os
from collections.abc import Mapping

from worker.config import Settings

DEMO_ENV = {
    # Fast lease takeover and shard sync: a demo should not wait out production timeouts.
    "FLEET_KCL_FAILOVER_TIME_MILLIS": "5000",
    "FLEET_KCL_SHARD_SYNC_INTERVAL_MILLIS": "1000",
    "FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS": "250",
    "FLEET_KCL_SHUTDOWN_GRACE_MILLIS": "10000",
    # The simulator sends each vehicle's records in order: a short allowed lateness and frequent
    # checkpoints let the demo drain seconds after its last record instead of a production 30 s + 60 s.
    "FLEET_TRIP_LATENESS_SECONDS": "10",
    "FLEET_CHECKPOINT_EVERY_SECONDS": "5",
    # With metrics off locally, the KCL warns about dropping (empty) metrics at every shutdown.
    "FLEET_KCL_LOG_LEVEL": "ERROR",
}


def settings_from(environ: Mapping[str, str]) -> Settings:
    """The settings a process started with ``environ`` (on top of ours) would read: for launching
    processors, daemons and benchmarks against the same local AWS."""
    saved = dict(os.environ)
    os.environ.update(environ)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
