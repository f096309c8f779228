from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.tables import ALL_TABLES
from worker.config import Settings

OPERATING = Path(__file__).parent.parent.parent / "docs" / "operating.md"


def test_defaults_match_the_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings()
    assert settings.stream_name == "vehicle-telemetry"
    assert settings.application_name == "fleet-ingest"
    assert settings.archive_bucket == "fleet-telemetry-archive"
    assert settings.endpoint_url is None
    assert settings.table_names == {
        "vehicle-state": "vehicle-state",
        "trip-state": "trip-state",
        "trips-index": "trips-index",
        "live-breadcrumbs": "live-breadcrumbs-v2",  # its key changed: a new table beside the old one
        "vin-mapping": "vin-mapping",
    }


def test_prefix_and_overrides_come_from_fleet_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_TABLE_PREFIX", "prod-")
    monkeypatch.setenv("FLEET_TRIP_STATE_TABLE", "trips-live")
    monkeypatch.setenv("FLEET_CHECKPOINT_EVERY_SECONDS", "30")
    settings = Settings()
    assert settings.table_names["vehicle-state"] == "prod-vehicle-state"
    assert settings.table_names["trip-state"] == "prod-trips-live"
    assert settings.checkpoint_every_seconds == 30


def test_endpoint_and_region_come_from_the_standard_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = Settings()
    assert settings.endpoint_url == "http://127.0.0.1:4566"
    assert settings.region == "eu-west-1"


def test_an_empty_endpoint_means_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    assert Settings().endpoint_url is None


def test_the_pseudonym_key_is_refused_outside_the_local_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("FLEET_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("FLEET_PSEUDONYM_KEY", "super-secret-key")
    with pytest.raises(ValidationError, match="local AWS only") as refused:
        Settings()
    assert "super-secret-key" not in str(refused.value)


def test_the_pseudonym_key_is_never_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("FLEET_PSEUDONYM_KEY", "super-secret-key")
    settings = Settings()
    assert "super-secret-key" not in repr(settings)
    assert "super-secret-key" not in str(settings.model_dump())


def test_lateness_progress_idle_and_the_flush_lead_default_as_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in (
        "FLEET_TRIP_LATENESS_SECONDS",
        "FLEET_TRIP_PROGRESS_SECONDS",
        "FLEET_TRIP_IDLE_SECONDS",
        "FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FLEET_TRIP_GAP_SECONDS", "420")
    settings = Settings()
    assert settings.trip_lateness_ms == 30_000 and settings.trip_progress_ms == 10_000
    assert settings.trip_idle_ms == 840_000  # twice the gap
    assert settings.state_max_delay_ms == 1800 and settings.trail_max_delay_ms == 15_000
    assert settings.state_flush_lead_ms == 250 + settings.state_write_margin_ms
    monkeypatch.setenv("FLEET_TRIP_LATENESS_SECONDS", "60")
    monkeypatch.setenv("FLEET_TRIP_IDLE_SECONDS", "900")
    assert Settings().trip_lateness_ms == 60_000 and Settings().trip_idle_ms == 900_000


def test_every_table_has_a_setting() -> None:
    assert {spec.setting for spec in ALL_TABLES} <= set(Settings.model_fields)


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = OPERATING.read_text()
    for name, info in Settings.model_fields.items():
        variable = f"FLEET_{name.upper()}"
        if name == "endpoint_url":
            variable = "AWS_ENDPOINT_URL"
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{variable}` |")), None)
        assert row is not None, f"docs/operating.md does not document {variable}"
        default = info.default
        if default not in (None, ""):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"| `{shown}` |" in row, f"{variable}: default {default!r} not in docs/operating.md"


def test_fixtures_are_reproducible() -> None:
    from tests.fixtures.build import FIXTURES, HERE, render

    for name in FIXTURES:
        assert (HERE / name).read_bytes() == render(name), f"{name} differs from tests/fixtures/build.py"


def test_the_daemon_starts_this_worker_unless_another_processor_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.kcl_daemon import daemon_properties

    assert daemon_properties(Settings())["executableName"].endswith(" -m worker process")
    monkeypatch.setenv("FLEET_KCL_EXECUTABLE", "/usr/bin/python3 -m bench.naive_processor")
    props = daemon_properties(Settings())
    assert props["executableName"] == "/usr/bin/python3 -m bench.naive_processor"
