"""SIGTERM to ``python -m worker run`` (what ECS sends on a stop), with the real KCL daemon.

The launcher forwards it to the daemon, whose graceful shutdown asks each record processor to
checkpoint (``shutdown_requested``); the launcher exits 0 when the daemon is done. The stop lands
while a producer is still writing, so processors hold applied-but-uncheckpointed records at that
moment. Then a restart (``run --drain``) must pick up exactly where the stop left off: every record
applied once across both runs, and the state equal to that of one uninterrupted pass.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from devtools.local_aws import LocalAws
from devtools.settings import settings_from
from tests.conftest import FIXTURES, fresh_env
from tests.fixtures.build import TRIP_GAP_SECONDS
from tests.support.cli import worker
from tests.support.digest import state_digest
from tests.support.harness import ProcessorHarness, batches, shard_records
from worker.aws import AwsClients
from worker.bootstrap import bootstrap
from worker.leases import lease_checkpoints
from worker.replay import ReplayStats, StreamEntry, read_fixture, replay

STOP_WITHIN_SECONDS = 60
PRODUCER_RATE = 100  # records/s: trips.jsonl takes ~22 s, the stop lands a few seconds in


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines (not EMF documents, not the daemon's own lines) written so far."""
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith('{"ts"'):
            lines.append(orjson.loads(raw))
    return lines


def processed(lines: list[dict[str, Any]]) -> int:
    return sum(line["records"] for line in lines if line["event"] == "batch")


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_sigterm_checkpoints_what_was_applied_and_a_restart_applies_the_rest_once(
    local_aws: LocalAws, tmp_path: Path
) -> None:
    beats = tmp_path / "heartbeats"
    env = fresh_env(
        local_aws,
        {
            "FLEET_PSEUDONYM_KEY": "stop-key",
            "FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS),
            "FLEET_TRIP_LATENESS_SECONDS": "10",  # trips.jsonl moves no record by more than a second
            "FLEET_HEARTBEAT_PATH": str(beats),
            # Only a stop checkpoints: the stop has something to checkpoint.
            "FLEET_CHECKPOINT_EVERY_SECONDS": "3600",
        },
    )
    fleet = list(read_fixture(FIXTURES / "fleet-small.jsonl"))
    trips = list(read_fixture(FIXTURES / "trips.jsonl"))
    first = replay(env.clients.kinesis, env.settings.stream_name, fleet)

    first_log = tmp_path / "first.log"
    with first_log.open("w") as stderr:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--timeout", "240"],
            env=env.environ,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        wait_for(lambda: processed(log_lines(first_log)) >= first.records, 150, "fleet-small to be processed")

        # Running: healthy, and status shows both leases held.
        health = worker("health", env=env.environ)
        assert health.returncode == 0 and "2 shard(s) processing" in health.stdout, health.stdout
        status = worker("status", env=env.environ)
        assert status.returncode == 0 and "2 lease(s)" in status.stdout, status.stdout + status.stderr

        produced: list[ReplayStats] = []
        producer = threading.Thread(
            target=lambda: produced.append(
                replay(env.clients.kinesis, env.settings.stream_name, trips, rate=PRODUCER_RATE)
            )
        )
        producer.start()
        wait_for(lambda: processed(log_lines(first_log)) >= first.records + 300, 60, "trips to flow")
        assert producer.is_alive(), "the stop must land while records are still arriving"

        launcher.send_signal(signal.SIGTERM)  # the launcher only, as ECS (through the init process) does
        stopped_at = time.monotonic()
        assert launcher.wait(STOP_WITHIN_SECONDS) == 0, first_log.read_text()[-3000:]
        stop_seconds = time.monotonic() - stopped_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    producer.join(60)
    (second,) = produced
    assert launcher.stdout is not None and launcher.stdout.read() == b""

    # Every processor was asked to stop, checkpointed what it had applied, and applied nothing after.
    lines = log_lines(first_log)
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        if "shard" in line:
            by_shard[line["shard"]].append(line)
    checkpoints = lease_checkpoints(env.settings, env.clients)
    assert set(by_shard) == set(checkpoints) and len(checkpoints) == 2
    pending_at_stop = 0
    for shard, events in by_shard.items():
        names = [e["event"] for e in events]
        assert "shutdown_requested" in names, shard
        last_batch = max(i for i, name in enumerate(names) if name == "batch")
        last_checkpoint = max(i for i, name in enumerate(names) if name == "checkpoint")
        assert last_checkpoint > last_batch, f"{shard}: records applied after its last checkpoint"
        assert checkpoints[shard] == events[last_checkpoint]["sequenceNumber"], shard
        stop = events[names.index("shutdown_requested")]
        pending_at_stop += stop["uncheckpointed"]
        if stop["uncheckpointed"]:
            assert names[names.index("shutdown_requested") + 1] == "checkpoint", shard
    assert pending_at_stop > 0, "no processor had anything to checkpoint at the stop"
    assert any(line["event"] == "daemon_stopped" for line in lines)
    assert not (beats / "daemon").exists() and not [p.name for p in beats.iterdir()]
    assert worker("health", env=env.environ).returncode == 1
    # A checkpoint stays before the records the trip machines have not consumed yet (the settle window):
    # those, and only those, are delivered again after the restart.
    after_stop = records_after(env.clients.kinesis, env.settings.stream_name, checkpoints)

    # The restart resumes at the checkpoints: the rest of the stream, applied once. It checkpoints every
    # 5 s, so that --drain sees the end of the stream checkpointed soon after it settled.
    second_log = tmp_path / "second.log"
    with second_log.open("w") as stderr:
        restart = subprocess.run(
            [sys.executable, "-m", "worker", "run", "--drain", "--timeout", "240"],
            env={**env.environ, "FLEET_CHECKPOINT_EVERY_SECONDS": "5"},
            stderr=stderr,
            timeout=300,
            check=False,
        )
    assert restart.returncode == 0, second_log.read_text()[-3000:]
    in_first, in_second = processed(lines), processed(log_lines(second_log))
    assert second.records == len(trips) and second.resent == 0
    assert in_second == after_stop and in_first + after_stop >= first.records + second.records
    redelivered = in_first + in_second - first.records - second.records
    checkpoints = lease_checkpoints(env.settings, env.clients)
    for shard, last in {**first.last_sequence, **second.last_sequence}.items():
        assert int(checkpoints[shard]) >= int(last), shard

    # Same state as one uninterrupted pass over the same records (same key, own tables and bucket).
    reference = uninterrupted(local_aws, env.environ, [*fleet, *trips])
    assert state_digest(env.settings, env.clients) == reference
    print(f"graceful stop took {stop_seconds:.1f}s; {in_first} + {in_second} records, {redelivered} twice")


def records_after(kinesis: Any, stream: str, checkpoints: dict[str, str]) -> int:
    """How many records each shard holds after its checkpoint, read to the end of the stream."""
    count = 0
    for shard, sequence in checkpoints.items():
        iterator = kinesis.get_shard_iterator(
            StreamName=stream,
            ShardId=shard,
            ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            StartingSequenceNumber=sequence,
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            count += len(page["Records"])
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return count


def uninterrupted(local_aws: LocalAws, environ: dict[str, str], entries: list[StreamEntry]) -> dict[str, Any]:
    reference_environ = {
        **environ,
        "FLEET_TABLE_PREFIX": "reference-",
        "FLEET_ARCHIVE_BUCKET": "reference-archive",
    }
    settings = settings_from(reference_environ)
    clients = AwsClients(settings)
    bootstrap(settings, clients, shards=1)
    harness = ProcessorHarness(reference_environ)
    harness.initialize()
    for batch in batches(shard_records(entries), 500):
        harness.process(batch)
    harness.process([])  # caught up: the stream clock settles what the trip machines hold
    harness.shutdown_requested()  # a graceful stop flushes everything buffered
    assert harness.close() == 0
    return state_digest(settings, clients)
