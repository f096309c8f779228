"""The daemon's properties and the drain criterion, without starting Java."""

from __future__ import annotations

from pathlib import Path

import pytest

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
