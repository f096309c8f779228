"""``python -m worker health``: heartbeat files of the daemon and of each record processor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import AwsEnv
from tests.support.harness import ProcessorHarness, fixture, shard_records
from worker.health import DAEMON, Heartbeat, check, clear

MAX_AGE = 120.0
NOW = 1_750_000_000.0


def beat(directory: Path, name: str, age: float) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (NOW - age, NOW - age))


def test_a_beating_daemon_without_leases_is_healthy(tmp_path: Path) -> None:
    beat(tmp_path, DAEMON, 1)
    health = check(tmp_path, MAX_AGE, now=NOW)
    assert health.healthy and "no shard lease held" in health.reason


def test_fresh_processors_are_healthy(tmp_path: Path) -> None:
    beat(tmp_path, DAEMON, 0.5)
    beat(tmp_path, "shardId-000000000000", 0.4)
    beat(tmp_path, "shardId-000000000001", MAX_AGE - 1)
    health = check(tmp_path, MAX_AGE, now=NOW)
    assert health.healthy and "2 shard(s)" in health.reason


def test_no_daemon_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    assert not check(tmp_path / "missing", MAX_AGE, now=NOW).healthy
    beat(tmp_path, "shardId-000000000000", 1)
    health = check(tmp_path, MAX_AGE, now=NOW)
    assert not health.healthy and "no daemon heartbeat" in health.reason


def test_a_stale_daemon_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    beat(tmp_path, DAEMON, MAX_AGE + 5)
    health = check(tmp_path, MAX_AGE, now=NOW)
    assert not health.healthy and "125s old" in health.reason


def test_one_stuck_processor_makes_the_task_unhealthy(tmp_path: Path) -> None:
    beat(tmp_path, DAEMON, 0.5)
    beat(tmp_path, "shardId-000000000000", 0.5)
    beat(tmp_path, "shardId-000000000001", 300)
    health = check(tmp_path, MAX_AGE, now=NOW)
    assert not health.healthy
    assert "shardId-000000000001" in health.reason and "300s" in health.reason


def test_clear_and_heartbeat_files(tmp_path: Path) -> None:
    directory = tmp_path / "beats"
    shard = Heartbeat(directory, "shardId-000000000007")
    shard.start()
    assert shard.path.exists()
    os.utime(shard.path, (NOW, NOW))
    shard.start()  # a restarted processor keeps the time of the last completed batch
    assert shard.path.stat().st_mtime == NOW
    shard.beat()
    assert shard.path.stat().st_mtime > NOW
    assert Heartbeat(directory, "../escape").path.parent == directory
    clear(directory)
    assert not list(directory.iterdir())
    shard.stop()  # already gone: no error


def test_an_unwritable_directory_does_not_fail_the_caller(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    Heartbeat(blocker / "beats", "daemon").beat()  # logs heartbeat_failed, raises nothing


def test_the_command_prints_one_line_and_exits_by_health(tmp_path: Path) -> None:
    env = {**os.environ, "FLEET_HEARTBEAT_PATH": str(tmp_path), "FLEET_HEARTBEAT_MAX_AGE_SECONDS": "60"}
    command = [sys.executable, "-m", "worker", "health"]
    sick = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert sick.returncode == 1 and sick.stdout.count("\n") == 1 and sick.stdout.startswith("unhealthy")
    (tmp_path / DAEMON).touch()
    well = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert well.returncode == 0 and well.stdout.startswith("healthy"), well.stdout + well.stderr
    old = time.time() - 61
    os.utime(tmp_path / DAEMON, (old, old))
    stale = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert stale.returncode == 1, stale.stdout


def test_a_processor_beats_per_batch_and_removes_its_heartbeat_with_its_lease(
    aws_env: AwsEnv, tmp_path: Path
) -> None:
    beats = tmp_path / "beats"
    file = beats / "shardId-000000000003"
    harness = ProcessorHarness(
        {**aws_env.environ, "FLEET_HEARTBEAT_PATH": str(beats)}, shard_id="shardId-000000000003"
    )
    harness.initialize()
    assert file.exists()
    os.utime(file, (NOW, NOW))
    harness.process(shard_records(fixture("fleet-small.jsonl")[:20]))
    assert file.stat().st_mtime > NOW
    os.utime(file, (NOW, NOW))
    harness.process([])  # an empty batch is a beat too: a quiet shard is not a stuck one
    assert file.stat().st_mtime > NOW
    harness.lease_lost()
    assert not file.exists()
    assert harness.close() == 0


def test_a_processor_removes_its_heartbeat_on_shutdown(aws_env: AwsEnv, tmp_path: Path) -> None:
    harness = ProcessorHarness({**aws_env.environ, "FLEET_HEARTBEAT_PATH": str(tmp_path)})
    harness.initialize()
    harness.process(shard_records(fixture("fleet-small.jsonl")[:5]))
    assert (tmp_path / "shardId-000000000000").exists()
    harness.shutdown_requested()
    assert not (tmp_path / "shardId-000000000000").exists()
    assert harness.close() == 0
