"""Fixtures of the deploy tier."""

from __future__ import annotations

import pytest

from tests.support.cfn import ENVIRONMENT, settings_of
from worker.config import Settings


@pytest.fixture
def task_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a worker task of this task definition runs with."""
    return settings_of(ENVIRONMENT, monkeypatch)
