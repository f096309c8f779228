"""What the KCL MultiLangDaemon is and how it is started: its jars, their version, its properties.

The daemon is a Java program shipped as jars inside the installed ``amazon_kclpy`` package (upstream
amazon-kclpy or kclpy-ext). This module finds them, refuses any KCL but 3.x, renders the properties and
logback configuration from our settings, and builds the ``java`` command line. Running and supervising
the daemon is ``worker.launcher``'s.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from processors.errors import OperatorError
from worker.config import Settings
from worker.logs import event

log = logging.getLogger(__name__)

MULTILANG_DAEMON = "software.amazon.kinesis.multilang.MultiLangDaemon"
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
    """MultiLangDaemon properties for KCL 3.x (``MultiLangDaemonConfiguration``'s setter names; the
    fan-out consumer's are its ``FanoutConfigBean``'s, reached as ``fanoutConfig.<name>``).

    The daemon's property loader ignores a key it has no setter for, silently: tests/unit/test_launcher.py
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
        # Always explicit: the KCL's DEFAULT is fan-out, unless a polling property is set, when it polls.
        "retrievalMode": settings.kcl_retrieval_mode,
        **_retrieval_properties(settings),
        # process_records after every poll or pushed event, empty or not: it flushes the freshness buffers
        # by deadline and moves the settle clock on a quiet shard (worker.freshness, processors.settle).
        "callProcessRecordsEvenForEmptyRecordList": "true",
        "failoverTimeMillis": str(settings.kcl_failover_time_millis),
        "shardSyncIntervalMillis": str(settings.kcl_shard_sync_interval_millis),
        "shutdownGraceMillis": str(settings.kcl_shutdown_grace_millis),
        "cleanupLeasesUponShardCompletion": "true",
        # On AWS the KCL's own metrics are worth having; locally there is no CloudWatch to send them to.
        "metricsLevel": "NONE" if endpoint else "SUMMARY",
    }
    if settings.kcl_worker_id:
        props["workerId"] = settings.kcl_worker_id
    if settings.kinesis_endpoint:
        props["kinesisEndpoint"] = settings.kinesis_endpoint
    if endpoint:
        props["dynamoDBEndpoint"] = endpoint
        # KCL 3 picks the CPU metric it balances leases by from the platform it detects: ECS (from the
        # task's metadata variables), EKS, else EC2, by calling the instance metadata address
        # 169.254.169.254. Off AWS that call must never be made; leases are then balanced by throughput.
        props["disableWorkerMetrics"] = "true"
    return props


def _retrieval_properties(settings: Settings) -> dict[str, str]:
    """The settings of the one retrieval mode in use; the other mode's would only be ignored."""
    if settings.kcl_retrieval_mode == "POLLING":
        return {
            "maxRecords": str(settings.kcl_max_records),
            "idleTimeBetweenReadsInMillis": str(settings.kcl_idle_time_between_reads_millis),
        }
    # With an ARN the KCL subscribes with it and calls nothing else about the consumer (the stack
    # registers it, and the task's role may only SubscribeToShard on it). With neither, the KCL looks up,
    # or registers, a consumer named after the application.
    if settings.kcl_consumer_arn:
        return {"fanoutConfig.consumerArn": settings.kcl_consumer_arn}
    if settings.kcl_consumer_name:
        return {"fanoutConfig.consumerName": settings.kcl_consumer_name}
    return {}


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


DAEMON_GONE = 70
"""A record processor's exit status once its daemon died under it (EX_SOFTWARE: nobody is left to read it)."""


def exit_with_daemon(interval_seconds: float = 0.5) -> threading.Thread:
    """Exit the record processor when the daemon that started it dies (``worker run`` or the JVM killed).

    A processor is the JVM's child, in the JVM's session. A processor between batches sees its stdin close
    and ends, but one inside a batch (retrying writes) would carry on without anyone to answer, and one whose
    stdin someone else holds open would never end. So a thread watches the parent: once it is not the one
    we started under (we were re-parented), exit at once. Nothing is lost: what was not checkpointed is
    redelivered to whoever takes the lease.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_seconds)
            if os.getppid() != parent:
                event(log, "daemon_gone", logging.ERROR, parent=parent)
                os._exit(DAEMON_GONE)

    thread = threading.Thread(target=watch, name="daemon-watch", daemon=True)
    thread.start()
    return thread
