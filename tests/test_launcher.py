"""The daemon's properties, the drain criterion and the stop bound, without starting Java."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from worker import launcher
from worker.config import Settings
from worker.launcher import daemon_properties, kcl_jar_dir, kcl_version, render_properties


def test_the_installed_jars_are_found_and_their_version_read() -> None:
    jars = kcl_jar_dir()
    assert any(jars.glob("amazon-kinesis-client-multilang-*.jar"))
    assert kcl_version(jars) >= (2, 0, 0)


def test_kcl_version_comes_from_the_multilang_jar_name(tmp_path: Path) -> None:
    (tmp_path / "amazon-kinesis-client-multilang-3.5.3.jar").touch()
    (tmp_path / "amazon-kinesis-client-2.5.8.jar").touch()
    assert kcl_version(tmp_path) == (3, 5, 3)


@pytest.mark.parametrize(
    ("version", "provider_key", "provider"),
    [
        ((2, 5, 8), "AWSCredentialsProvider", "DefaultAWSCredentialsProviderChain"),  # AWS SDK v1 names
        ((2, 7, 0), "AwsCredentialsProvider", "DefaultCredentialsProvider"),  # SDK v2 from KCL 2.7
        ((3, 5, 3), "AwsCredentialsProvider", "DefaultCredentialsProvider"),
    ],
)
def test_properties_name_the_credentials_provider_as_each_kcl_version_expects(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, int, int], provider_key: str, provider: str
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    props = daemon_properties(Settings(), version)
    assert props[provider_key] == provider
    (other_key,) = {"AWSCredentialsProvider", "AwsCredentialsProvider"} - {provider_key}
    assert other_key not in props
    assert props["retrievalMode"] == "POLLING"
    assert props["metricsLevel"] == "SUMMARY"  # on AWS the KCL's own metrics are worth having
    assert "kinesisEndpoint" not in props


def test_a_local_endpoint_points_both_kcl_clients_at_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    props = daemon_properties(Settings(), (2, 5, 8))
    assert props["kinesisEndpoint"] == props["dynamoDBEndpoint"] == "http://127.0.0.1:4566"
    assert props["metricsLevel"] == "NONE"
    assert props["callProcessRecordsEvenForEmptyRecordList"] == "true"
    assert "kinesisEndpoint = http://127.0.0.1:4566\n" in render_properties(props)


def test_a_daemon_hung_in_shutdown_is_killed_after_the_stop_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def stubborn(pid_file: Path) -> str:
        """A process that ignores SIGTERM, records its pid and sleeps."""
        return (
            f"{sys.executable} -c 'import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f'open("{pid_file}", "w").write(str(os.getpid())); time.sleep(60)\''
        )

    jvm, child = tmp_path / "jvm.pid", tmp_path / "processor.pid"
    java = tmp_path / "java"  # a "JVM" hung in shutdown, with a record processor of its own
    java.write_text(f"#!/bin/sh\n{stubborn(child)} &\nexec {stubborn(jvm)}\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA", str(java))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FLEET_KCL_SHUTDOWN_GRACE_MILLIS", "200")
    monkeypatch.setenv("FLEET_HEARTBEAT_PATH", str(tmp_path / "heartbeats"))
    monkeypatch.setattr(launcher, "JVM_SHUTDOWN_MARGIN_SECONDS", 1.0)
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()  # ECS stops the task

    started = time.monotonic()
    code = launcher.run(Settings())

    assert code == launcher.KILLED == 137
    assert time.monotonic() - started < 10
    for pid_file in (jvm, child):
        pid = int(pid_file.read_text())
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # not ours to reap: the processor was the JVM's child
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (
            pid_file.name
        )
