"""Runs the KCL MultiLangDaemon (Java) with properties generated from our settings.

The daemon owns leases, balancing and checkpoints; it starts one ``python -m worker process`` child per
shard it holds. We forward SIGTERM/SIGINT to it for a graceful KCL shutdown (each processor checkpoints
what it applied) and exit 0 once it is done: a stop we were asked for is a success. In ``--drain`` mode we
stop it once every record that was in the stream at start has been processed and checkpointed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from processors.errors import OperatorError
from worker.aws import AwsClients, local_credentials_env
from worker.config import Settings
from worker.health import DAEMON, Heartbeat, clear
from worker.logs import LOG_PATH_ENV, event

if TYPE_CHECKING:
    from mypy_boto3_kinesis.type_defs import ShardTypeDef

log = logging.getLogger(__name__)

MULTILANG_DAEMON = "software.amazon.kinesis.multilang.MultiLangDaemon"
STOPPED_BY_SIGTERM = frozenset({0, 143, -signal.SIGTERM})
"""How the JVM exits after SIGTERM (its shutdown hook ran the KCL's graceful shutdown): 128 + 15."""
_MULTILANG_JAR = re.compile(r"amazon-kinesis-client-multilang-(\d+)\.(\d+)\.(\d+)\.jar")


KCL_MAJOR = 3
"""The KCL major version production runs (Dockerfile) and every local run installs (``kcl-local``)."""


class UnsupportedKcl(OperatorError):
    """The installed jars are not one KCL 3.x: the properties we write, and the tables, index and lease
    assignment the rest of the worker expects, are KCL 3's."""


def kcl_jar_dir() -> Path:
    """The KCL jars inside the installed ``amazon_kclpy`` package (upstream amazon-kclpy or kclpy-ext)."""
    import amazon_kclpy

    jars = Path(amazon_kclpy.__file__).parent / "jars"
    if not any(jars.glob("*.jar")):
        raise FileNotFoundError(f"no KCL jars in {jars}: is amazon-kclpy installed with its jars?")
    return jars


def kcl_version(jar_dir: Path) -> tuple[int, int, int]:
    """The KCL version of the multilang jar in ``jar_dir``.

    Two of them mean two ``amazon_kclpy`` distributions were installed into one environment (each brings
    its own jars into the same folder): the JVM would load classes of both, so that is refused.
    """
    versions = set()
    for jar in jar_dir.glob("amazon-kinesis-client-multilang-*.jar"):
        match = _MULTILANG_JAR.fullmatch(jar.name)
        if match:
            major, minor, patch = (int(part) for part in match.groups())
            versions.add((major, minor, patch))
    if not versions:
        raise FileNotFoundError(f"no amazon-kinesis-client-multilang jar in {jar_dir}")
    if len(versions) > 1:
        found = ", ".join(".".join(map(str, v)) for v in sorted(versions))
        raise UnsupportedKcl(
            f"KCL jars of several versions ({found}) in {jar_dir}: two amazon_kclpy distributions are "
            "installed into one environment; recreate it (make clean venv)"
        )
    (version,) = versions
    return version


def require_kcl3(version: tuple[int, int, int]) -> None:
    if version[0] != KCL_MAJOR:
        raise UnsupportedKcl(
            f"KCL {'.'.join(map(str, version))} is installed; fleet-ingest runs KCL {KCL_MAJOR}.x "
            "(install the `kcl` extra, or `kcl-local` where Maven Central is out of reach)"
        )


def daemon_properties(settings: Settings) -> dict[str, str]:
    """MultiLangDaemon properties for KCL 3.x (``MultiLangDaemonConfiguration``'s setter names).

    The daemon's property loader ignores a key it has no setter for, silently: tests/test_launcher.py
    checks every key against the installed multilang jar.
    """
    endpoint = settings.endpoint_url
    props = {
        "executableName": settings.kcl_executable or f"{sys.executable} -m worker process",
        "streamName": settings.stream_name,
        "applicationName": settings.application_name,
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
        "regionName": settings.region,
        # AWS SDK v2 class names (software.amazon.awssdk.auth.credentials): environment, then web identity,
        # profile, the ECS container endpoint. A v1 name would build an empty chain, with only a warning.
        "AwsCredentialsProvider": "DefaultCredentialsProvider",
        "initialPositionInStream": settings.kcl_initial_position,
        # Polling, not enhanced fan-out: no SubscribeToShard/consumer registration, and the local AWS
        # cannot serve HTTP/2 event streams.
        "retrievalMode": "POLLING",
        "maxRecords": str(settings.kcl_max_records),
        "idleTimeBetweenReadsInMillis": str(settings.kcl_idle_time_between_reads_millis),
        # Empty batches let an idle shard checkpoint what it applied (see CheckpointPolicy).
        "callProcessRecordsEvenForEmptyRecordList": "true",
        "failoverTimeMillis": str(settings.kcl_failover_time_millis),
        "shardSyncIntervalMillis": str(settings.kcl_shard_sync_interval_millis),
        "shutdownGraceMillis": str(settings.kcl_shutdown_grace_millis),
        "cleanupLeasesUponShardCompletion": "true",
        # On AWS the KCL's own metrics are worth having; locally there is no CloudWatch to send them to.
        "metricsLevel": "NONE" if endpoint else "SUMMARY",
    }
    if endpoint:
        props["kinesisEndpoint"] = endpoint
        props["dynamoDBEndpoint"] = endpoint
        # KCL 3 picks the CPU metric it balances leases by from the platform it detects: ECS (from the
        # task's metadata variables), EKS, else EC2, by calling the instance metadata address
        # 169.254.169.254. Off AWS that call must never be made; leases are then balanced by throughput.
        props["disableWorkerMetrics"] = "true"
    return props


def render_properties(props: Mapping[str, str]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in props.items())


LOGBACK = """<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%d{{ISO8601}} [%thread] %-5level %logger{{36}} - %msg%n</pattern></encoder>
  </appender>
  <root level="{level}"><appender-ref ref="STDERR"/></root>
</configuration>
"""


@dataclass(frozen=True)
class DaemonFiles:
    properties: Path
    logback: Path


def write_daemon_files(settings: Settings, directory: Path) -> DaemonFiles:
    require_kcl3(kcl_version(kcl_jar_dir()))
    files = DaemonFiles(directory / "fleet-ingest.properties", directory / "logback.xml")
    files.properties.write_text(render_properties(daemon_properties(settings)))
    files.logback.write_text(LOGBACK.format(level=settings.kcl_log_level))
    return files


def daemon_command(files: DaemonFiles) -> list[str]:
    return [
        os.environ.get("JAVA", "java"),
        "-Daws.cborEnabled=false",  # the local AWS speaks JSON; on AWS this only costs a little bandwidth
        f"-Dlogback.configurationFile={files.logback}",
        "-cp",
        f"{kcl_jar_dir()}/*",
        MULTILANG_DAEMON,
        "--properties-file",
        str(files.properties),
    ]


def share_stderr() -> Path | None:
    """Let the record processors write their log lines straight to our stderr.

    When stderr is a plain file, switch it to append mode first: otherwise each writer keeps its own
    offset and lines overwrite each other.
    """
    own_stderr = Path(f"/proc/{os.getpid()}/fd/2")
    if not own_stderr.exists():
        return None
    if stat.S_ISREG(os.fstat(2).st_mode):
        fcntl.fcntl(2, fcntl.F_SETFL, fcntl.fcntl(2, fcntl.F_GETFL) | os.O_APPEND)
    return own_stderr


def daemon_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(local_credentials_env(settings))
    env.setdefault("AWS_REGION", settings.region)
    shared = share_stderr()
    if shared is not None:
        env[LOG_PATH_ENV] = str(shared)
    return env


def run(settings: Settings, drain: bool = False, timeout: float | None = None) -> int:
    """Run the daemon until it exits, a signal arrives, the drain completes or the timeout passes."""
    clients = AwsClients(settings)
    targets = drain_targets(settings, clients) if drain else {}
    clear(settings.heartbeat_path)
    heartbeat = Heartbeat(settings.heartbeat_path, DAEMON)
    with tempfile.TemporaryDirectory(prefix="fleet-ingest-kcl-") as tmp:
        files = write_daemon_files(settings, Path(tmp))
        started = time.monotonic()
        stopping = threading.Event()
        daemon: subprocess.Popen[bytes] | None = None

        def forward(signum: int, _frame: FrameType | None) -> None:
            event(log, "daemon_stopping", signal=signal.Signals(signum).name)
            stopping.set()
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)

        # Handlers first: a SIGTERM while the daemon starts must still stop it, not orphan it.
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            # A session of its own: a terminal's Ctrl-C reaches only us, and we stop the daemon gracefully.
            daemon = subprocess.Popen(
                daemon_command(files),
                env=daemon_environment(settings),
                stdout=sys.stderr,
                start_new_session=True,
            )
            event(log, "daemon_started", pid=daemon.pid, drain=drain, shards=len(targets))
            if stopping.is_set():
                daemon.send_signal(signal.SIGTERM)
            code = _supervise(
                settings, clients, daemon, heartbeat, targets if drain else None, started, timeout, stopping
            )
            if stopping.is_set() and code in STOPPED_BY_SIGTERM:
                event(log, "daemon_stopped", code=code)
                return 0  # a stop we were asked for, done: success (ECS, systemd and shells expect 0)
            return code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if daemon is not None:
                _stop(daemon, settings)
            heartbeat.stop()


JVM_SHUTDOWN_MARGIN_SECONDS = 15.0


def stop_bound_seconds(settings: Settings) -> float:
    """How long a stopping daemon may take: the processors' grace, plus the JVM's own shutdown."""
    return settings.kcl_shutdown_grace_millis / 1000 + JVM_SHUTDOWN_MARGIN_SECONDS


def _supervise(
    settings: Settings,
    clients: AwsClients,
    daemon: subprocess.Popen[bytes],
    heartbeat: Heartbeat,
    targets: dict[str, str] | None,
    started: float,
    timeout: float | None,
    stopping: threading.Event,
) -> int:
    stop_started: float | None = None
    while True:
        code = daemon.poll()
        if code is not None:
            event(log, "daemon_exited", code=code)
            return code
        heartbeat.beat()
        if targets is not None and drained(settings, clients, targets):
            event(log, "drained", seconds=round(time.monotonic() - started, 1))
            return 0
        if timeout is not None and time.monotonic() - started > timeout:
            event(log, "timeout", logging.ERROR, seconds=timeout)
            return 124
        if stopping.is_set():
            stop_started = stop_started or time.monotonic()
            if time.monotonic() - stop_started > stop_bound_seconds(settings):
                # A JVM hung in shutdown: end it, and the processors it started, before the
                # orchestrator's SIGKILL takes us all.
                event(log, "daemon_killed", logging.ERROR, seconds=stop_bound_seconds(settings))
                _kill_session(daemon)
                return KILLED
        time.sleep(0.5)


KILLED = 128 + signal.SIGKILL
"""Exit status after the daemon had to be killed (as a shell reports a SIGKILL)."""


def _kill_session(daemon: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemon's session: the JVM and its record processors (they ignore SIGTERM)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGKILL)
    daemon.wait()


def _stop(daemon: subprocess.Popen[bytes], settings: Settings) -> None:
    if daemon.poll() is not None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(stop_bound_seconds(settings))
    except subprocess.TimeoutExpired:
        _kill_session(daemon)


def drain_targets(settings: Settings, clients: AwsClients) -> dict[str, str]:
    """Shard id -> sequence number of the last record currently in that shard (shards with records)."""
    kinesis = clients.kinesis
    targets: dict[str, str] = {}
    for shard in shards_of(settings, clients):
        iterator = kinesis.get_shard_iterator(
            StreamName=settings.stream_name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ).get("ShardIterator")
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if page["Records"]:
                targets[shard["ShardId"]] = page["Records"][-1]["SequenceNumber"]
            elif page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return targets


def shards_of(settings: Settings, clients: AwsClients) -> list[ShardTypeDef]:
    shards: list[ShardTypeDef] = []
    kwargs: dict[str, str] = {"StreamName": settings.stream_name}
    while True:
        page = clients.kinesis.list_shards(**kwargs)  # type: ignore[arg-type]
        shards += page["Shards"]
        if "NextToken" not in page:
            return shards
        kwargs = {"NextToken": page["NextToken"]}


def lease_checkpoints(settings: Settings, clients: AwsClients) -> dict[str, str]:
    """Shard id -> checkpoint recorded by the KCL in its lease table (empty if there is none yet)."""
    dynamodb = clients.dynamodb
    checkpoints: dict[str, str] = {}
    kwargs: dict[str, object] = {"TableName": settings.application_name, "ConsistentRead": True}
    try:
        while True:
            page = dynamodb.scan(**kwargs)  # type: ignore[arg-type]
            for item in page["Items"]:
                checkpoints[item["leaseKey"]["S"]] = item.get("checkpoint", {}).get("S", "")
            if "LastEvaluatedKey" not in page:
                return checkpoints
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    except dynamodb.exceptions.ResourceNotFoundException:
        return {}


def drained(settings: Settings, clients: AwsClients, targets: Mapping[str, str]) -> bool:
    checkpoints = lease_checkpoints(settings, clients)
    if not checkpoints:
        return False
    for shard_id, last_sequence in targets.items():
        checkpoint = checkpoints.get(shard_id)
        if checkpoint is None:
            # The KCL deletes the lease of a finished parent shard once its children have leases.
            if not any(key != shard_id for key in checkpoints):
                return False
            continue
        if checkpoint == "SHARD_END":
            continue
        if not checkpoint.isdigit() or int(checkpoint) < int(last_sequence):
            return False
    return True
