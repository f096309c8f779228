"""The real KCL MultiLangDaemon, end to end, against the embedded local AWS."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from schemas.dynamo import from_item
from tests.conftest import FIXTURES, AwsEnv
from tests.oracle import latest_by_vin, leaked, vins_in
from tests.test_protocol import pseudonymizer, vehicle_state
from worker.launcher import lease_checkpoints
from worker.replay import read_fixture, replay

pytestmark = pytest.mark.e2e
FLEET = FIXTURES / "fleet-small.jsonl"


def run_daemon(env: AwsEnv, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "run", "--drain", "--timeout", str(timeout)],
        env=env.environ,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )


def test_fixture_stream_through_the_real_multilang_daemon(aws_env: AwsEnv) -> None:
    stats = replay(aws_env.clients.kinesis, aws_env.settings.stream_name, read_fixture(FLEET))
    assert len(stats.last_sequence) == 2  # the fixture's vehicles spread over both shards

    daemon = run_daemon(aws_env)
    assert daemon.returncode == 0, daemon.stderr[-3000:]

    state = vehicle_state(aws_env)
    expected = latest_by_vin(FLEET)
    pseudo = pseudonymizer(aws_env)
    assert set(state) == {pseudo.pseudo_vin(vin) for vin in expected}
    for vin, latest in expected.items():
        item = state[pseudo.pseudo_vin(vin)]
        assert item["timestamp"] == latest["timestamp"]
        assert item["odometer"]["value"] == latest["odometer"]
        assert item["batteryLevel"]["value"] == latest["batteryLevel"]

    checkpoints = lease_checkpoints(aws_env.settings, aws_env.clients)
    assert set(checkpoints) == set(stats.last_sequence)
    for shard, last in stats.last_sequence.items():
        assert int(checkpoints[shard]) >= int(last)

    vins = vins_in(FLEET)
    assert not leaked(vins, orjson.dumps([from_item(i) for i in _all_items(aws_env, "vehicle-state")]))
    assert not leaked(vins, daemon.stderr)
    processor_logs = [orjson.loads(line) for line in daemon.stderr.splitlines() if line.startswith('{"ts"')]
    assert {log["event"] for log in processor_logs} >= {
        "initialize",
        "batch",
        "checkpoint",
        "shutdown_requested",
    }
    assert daemon.stdout == ""


def _all_items(env: AwsEnv, table: str) -> list[dict[str, Any]]:
    return env.clients.dynamodb.scan(TableName=env.settings.table_names[table])["Items"]
