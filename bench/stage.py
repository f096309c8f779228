"""A clean local AWS for each measurement, and the environment the processors run with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from devtools.local_aws import LocalAws
from devtools.settings import settings_from
from worker.aws import AwsClients
from worker.bootstrap import bootstrap
from worker.config import Settings

BENCH_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_REGION": "us-east-1",
    "FLEET_PSEUDONYM_KEY": "bench-key",
    "FLEET_KCL_FAILOVER_TIME_MILLIS": "5000",
    "FLEET_KCL_SHARD_SYNC_INTERVAL_MILLIS": "1000",
    "FLEET_KCL_SHUTDOWN_GRACE_MILLIS": "5000",
}


@dataclass
class Stage:
    aws: LocalAws
    settings: Settings
    clients: AwsClients
    environ: dict[str, str]


def fresh_stage(aws: LocalAws, shards: int = 1, **overrides: str) -> Stage:
    """Forget everything, bootstrap every resource, zero the request counts."""
    aws.reset()
    environ = {**os.environ, **BENCH_ENV, "AWS_ENDPOINT_URL": aws.endpoint, **overrides}
    settings = settings_from(environ)
    clients = AwsClients(settings)
    bootstrap(settings, clients, shards=shards)
    aws.app.reset_counts()
    return Stage(aws, settings, clients, environ)


def peak_rss(pid: int) -> int:
    """Peak resident set size of a live process (Linux VmHWM; else its current RSS)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(psutil.Process(pid).memory_info().rss)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
