"""Shared fixtures: one embedded local AWS per test session, reset and bootstrapped per test."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from devtools.local_aws import LocalAws
from devtools.settings import settings_from
from processors.pseudonymize import PSEUDONYM_KEY_ITEM
from worker.aws import AwsClients
from worker.bootstrap import bootstrap, record_pseudonym_fingerprint
from worker.config import Settings

FIXTURES = Path(__file__).parent / "fixtures"

# Properties assert behaviour, never wall-clock speed: hypothesis's per-example deadline (200 ms) fails
# examples on a loaded 2-core machine that pass alone.
hypothesis_settings.register_profile("fleet", deadline=None)
hypothesis_settings.load_profile("fleet")

# Fixture streams carry fixed 2025 event times; the stream's clock is "now". Widen the age window so
# they decode, except in the tests of that very check.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_REGION": "us-east-1",
    "FLEET_MAX_EVENT_AGE_HOURS": "100000",
    "FLEET_KCL_FAILOVER_TIME_MILLIS": "4000",
    "FLEET_KCL_SHARD_SYNC_INTERVAL_MILLIS": "1000",
    "FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS": "250",
    "FLEET_KCL_SHUTDOWN_GRACE_MILLIS": "10000",
}


TIERS = ("unit", "integration", "e2e", "deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test's tier is the directory it lives in (tests/unit, tests/integration, ...): marked from there,
    so ``pytest -m unit`` selects a tier and no test can sit outside one."""
    for item in items:
        tier = item.path.relative_to(Path(__file__).parent).parts[0]
        assert tier in TIERS, f"{item.nodeid}: tests live in one of {', '.join(f'tests/{t}/' for t in TIERS)}"
        item.add_marker(tier)


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAws]:
    with LocalAws() as aws:
        yield aws


@dataclass
class AwsEnv:
    aws: LocalAws
    settings: Settings
    clients: AwsClients
    environ: dict[str, str]
    """Environment for subprocesses (record processor, daemon) pointed at the same local AWS."""

    def with_settings(self, **overrides: str) -> AwsEnv:
        """The same local AWS under other settings. Another ``FLEET_PSEUDONYM_KEY`` re-records the key
        fingerprint in ``vin-mapping`` (as a fresh bootstrap with that key would) and restarts the counts."""
        environ = {**self.environ, **overrides}
        env = AwsEnv(self.aws, settings_from(environ), AwsClients(settings_from(environ)), environ)
        if "FLEET_PSEUDONYM_KEY" in overrides:
            env.clients.dynamodb.delete_item(
                TableName=env.settings.table_names["vin-mapping"],
                Key={"pseudoVin": {"S": PSEUDONYM_KEY_ITEM}},
            )
            record_pseudonym_fingerprint(env.settings, env.clients)
            env.aws.app.reset_counts()
        return env


def fresh_env(local_aws: LocalAws, overrides: Mapping[str, str] | None = None, shards: int = 2) -> AwsEnv:
    """Reset the local AWS and bootstrap every resource; settings from ``TEST_ENV`` + ``overrides``."""
    local_aws.reset()
    environ = {**os.environ, **TEST_ENV, "AWS_ENDPOINT_URL": local_aws.endpoint, **(overrides or {})}
    settings = settings_from(environ)
    clients = AwsClients(settings)
    bootstrap(settings, clients, shards=shards)
    local_aws.app.reset_counts()
    return AwsEnv(local_aws, settings, clients, environ)


@pytest.fixture
def aws_env(local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> AwsEnv:
    """A clean local AWS with every resource bootstrapped (2 shards)."""
    env = fresh_env(local_aws)
    for key, value in env.environ.items():
        monkeypatch.setenv(key, value)
    return env


def create_lease_table(env: AwsEnv) -> None:
    """The KCL's lease table as the KCL creates it (key ``leaseKey``), for tests that write leases."""
    env.clients.dynamodb.create_table(
        TableName=env.settings.application_name,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
