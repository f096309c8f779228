"""Chaos scenarios against the real MultiLangDaemon, each judged by final-state equivalence.

Every scenario replays a fleet stream into the local AWS, runs ``python -m worker run`` (restarting it
whenever it dies, as ECS would) while something breaks, waits until every record is checkpointed, and
compares a digest of everything the worker wrote (tests/support/digest.py) with the digest of one clean pass
over the same records through the record processor.

``python -m tests.support.chaos`` (``make chaos``) runs the full suite and prints a table;
tests/e2e/test_chaos.py runs a short slice inside ``make test``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from botocore.exceptions import ClientError

from devtools.local_aws import FaultPlan, LocalAws
from devtools.simulate import simulate
from processors.dead_letter import stream_order
from processors.pseudonymize import Pseudonymizer
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from tests.conftest import AwsEnv, fresh_env
from tests.support.digest import state_digest
from tests.support.harness import ProcessorHarness, batches, shard_records
from worker.aws import aws_error_code
from worker.leases import lease_checkpoints, lease_owners
from worker.replay import ReplayStats, StreamEntry, replay
from worker.shards import drained

CHAOS_ENV = {
    "FLEET_PSEUDONYM_KEY": "chaos-key",
    "FLEET_TRIP_GAP_SECONDS": "60",
    "FLEET_TRIP_LATENESS_SECONDS": "10",  # the simulator sends each vehicle in order: drains 10 s after
    "FLEET_TRIP_SEGMENT_BREADCRUMBS": "200",
    "FLEET_CHECKPOINT_EVERY_SECONDS": "5",
    "FLEET_KCL_FAILOVER_TIME_MILLIS": "3000",
    "FLEET_KCL_SHUTDOWN_GRACE_MILLIS": "5000",
    "FLEET_KCL_SHARD_SYNC_INTERVAL_MILLIS": "1000",
    "FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS": "250",
}
START_MS = int(datetime(2025, 3, 5, 14, 0, tzinfo=UTC).timestamp() * 1000)


@dataclass
class Result:
    scenario: str
    records: int
    faults: int = 0
    kills: int = 0
    restarts: int = 0
    elapsed: float = 0.0
    digest_equal: bool | None = None
    notes: list[str] = field(default_factory=list)
    healthy: bool = True
    """Checks other than the digest held (bounded memory, flat per-record CPU)."""

    def conclude(self, fleet_: Fleet, started: float, env: AwsEnv, expected: dict[str, Any]) -> Result:
        """Restarts, elapsed time and whether the stored state equals one clean pass."""
        self.restarts = fleet_.restarts
        self.elapsed = time.monotonic() - started
        digest = state_digest(env.settings, env.clients)
        self.digest_equal = digest == expected
        if not self.digest_equal and (where := os.environ.get("FLEET_CHAOS_DIFF_DIR")):
            for name, value in (("expected", expected), ("got", digest)):
                Path(where, f"{self.scenario}-{name}.json").write_bytes(
                    orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)
                )
        return self

    def row(self) -> str:
        digest = {True: "digest equal", False: "DIGEST DIFFERS", None: "-"}[self.digest_equal]
        return (
            f"{self.scenario:<12} {self.records:>8} {self.faults:>7} {self.kills:>6} {self.restarts:>9} "
            f"{self.elapsed:>8.1f}s  {digest}  {'; '.join(self.notes)}"
        )


HEADER = f"{'scenario':<12} {'records':>8} {'faults':>7} {'kills':>6} {'restarts':>9} {'elapsed':>9}  result"


# --- streams ----------------------------------------------------------------------------------------


def fleet(vehicles: int, minutes: float, seed: int = 3) -> list[StreamEntry]:
    return [
        StreamEntry(orjson.dumps(record), record["vin"])
        for record in simulate(vehicles, minutes, seed=seed, start_ms=START_MS)
    ]


BAD_RECORDS: dict[str, Callable[[str], bytes]] = {
    "not_utf8": lambda vin: b'{"vin": "' + vin.encode() + b'\xff"}',
    "malformed_json": lambda vin: b'{"vin": "' + vin.encode() + b'", "timestamp": ',
    "unknown_format": lambda vin: b"\x00\x01 garbage for " + vin.encode(),
    "schema_violation": lambda vin: orjson.dumps(
        {"vin": vin, "timestamp": "2025-03-05T14:00:00Z", "signals": 3}
    ),
    "invalid_vin": lambda vin: orjson.dumps(
        {"vin": vin[:16], "timestamp": "2025-03-05T14:00:00Z", "signals": {}}
    ),
    "timestamp_out_of_range": lambda vin: orjson.dumps(
        {"vin": vin, "timestamp": "2031-01-01T00:00:00Z", "signals": {"vehicleSpeed": 1.0}}
    ),
    "oversize": lambda vin: orjson.dumps({"vin": vin, "timestamp": 1, "signals": {"pad": "x" * 70_000}}),
    "unsupported_record_type": lambda vin: orjson.dumps({"alerts": [{"name": "x"}], "vin": vin}),
}


def poisoned(
    entries: Sequence[StreamEntry], share: float, seed: int
) -> tuple[list[StreamEntry], dict[str, int]]:
    """``entries`` with ``share`` bad records of every kind mixed in (on the vehicles' own shards)."""
    rng = random.Random(seed)
    out: list[StreamEntry] = []
    injected: dict[str, int] = dict.fromkeys(BAD_RECORDS, 0)
    kinds = list(BAD_RECORDS)
    for entry in entries:
        out.append(entry)
        if rng.random() < share:
            kind = kinds[len(out) % len(kinds)]
            out.append(StreamEntry(BAD_RECORDS[kind](entry.partition_key), entry.partition_key))
            injected[kind] += 1
    return out, injected


def reference(local_aws: LocalAws, entries: Sequence[StreamEntry]) -> dict[str, Any]:
    """The digest of one clean pass through the record processor."""
    env = fresh_env(local_aws, CHAOS_ENV)
    harness = ProcessorHarness(env.environ, timeout=300)
    harness.initialize()
    for batch in batches(shard_records(entries), 1000):
        harness.process(batch)
    harness.process([])  # caught up: the stream clock settles what the trip machines still hold
    harness.shutdown_requested()  # flushes everything buffered, as a task's stop does
    assert harness.close() == 0
    return state_digest(env.settings, env.clients)


# --- the daemon, as ECS runs it ----------------------------------------------------------------------


class Daemon:
    """One task: ``python -m worker run`` -> java MultiLangDaemon -> one processor per shard lease."""

    def __init__(self, env: AwsEnv, log: Path, worker_id: str) -> None:
        self.worker_id = worker_id
        """Its lease-owner name (``FLEET_KCL_WORKER_ID``)."""
        self._log = log.open("ab")  # append mode: launcher, daemon and processors all write to it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env={**env.environ, "FLEET_KCL_WORKER_ID": worker_id},
            stdout=self._log,
            stderr=self._log,
        )

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def processors(self) -> list[psutil.Process]:
        return [p for p in self._tree()[1:] if "worker" in " ".join(_cmdline(p)) and "process" in _cmdline(p)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exited(self) -> bool:
        return not self.alive()

    def kill_processor(self, rng: random.Random) -> bool:
        """kill -9 one record processor (the daemon then stops itself: the whole task restarts)."""
        children = self.processors()
        if not children:
            return False
        rng.choice(children).kill()
        return True

    def kill(self) -> None:
        """kill -9 the whole task, mid-whatever."""
        for process in reversed(self._tree()):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.proc.wait(30)

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def rss_bytes(self) -> int:
        total = 0
        for process in self.processors():
            with contextlib.suppress(psutil.NoSuchProcess):
                total = max(total, process.memory_info().rss)
        return total


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


@dataclass
class Fleet:
    """The tasks of the service; a dead task is replaced, as an ECS service does."""

    env: AwsEnv
    log: Path
    size: int = 1
    daemons: list[Daemon] = field(default_factory=list)
    restarts: int = 0
    started: int = 0

    def start(self) -> Fleet:
        self.daemons = [self._task() for _ in range(self.size)]
        return self

    def replace_dead(self) -> None:
        for i, daemon in enumerate(self.daemons):
            if not daemon.alive():
                self.daemons[i] = self._task()
                self.restarts += 1

    def _task(self) -> Daemon:
        """A new task with a name of its own, as ECS gives each a task id."""
        self.started += 1
        return Daemon(self.env, self.log, f"task-{self.started}")

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


def wait_drained(
    fleet_: Fleet, targets: dict[str, str], timeout: float, chaos: Callable[[], None] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not drained(fleet_.env.settings, fleet_.env.clients, targets):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not drained after {timeout}s; see {fleet_.log}")
        if chaos is not None:
            chaos()
        fleet_.replace_dead()
        time.sleep(0.5)


def replay_all(env: AwsEnv, entries: Sequence[StreamEntry], rate: float | None = None) -> ReplayStats:
    return replay(env.clients.kinesis, env.settings.stream_name, entries, rate)


def in_background(work: Callable[[], ReplayStats]) -> tuple[threading.Thread, list[ReplayStats]]:
    out: list[ReplayStats] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    return thread, out


# --- scenarios -----------------------------------------------------------------------------------------


def throttling(
    local_aws: LocalAws,
    entries: Sequence[StreamEntry],
    rate: float = 0.2,
    seed: int = 7,
    scope: str = "worker",
) -> Result:
    """20 % of the worker's DynamoDB, S3 and KMS calls throttled or failing with 5xx (and partial batch
    writes): retries ride it out, nothing is lost or applied twice. With ``scope="kcl"``, the KCL's
    own calls fail instead (Kinesis, the lease table): the daemon rides it out the same way."""
    expected = reference(local_aws, entries)
    env = fresh_env(local_aws, CHAOS_ENV)
    started = time.monotonic()
    stats = replay_all(env, entries)
    faults = FaultPlan(
        rate=rate,
        scope=scope,
        kinds=("throttle", "server_error", "unprocessed"),
        seed=seed,
        worker_tables=frozenset(env.settings.table_names.values()),
    )
    local_aws.app.inject(faults)
    with tempfile.TemporaryDirectory() as tmp:
        fleet_ = Fleet(env, Path(tmp) / "daemon.log").start()
        try:
            wait_drained(fleet_, stats.last_sequence, timeout=600)
        finally:
            local_aws.app.inject(None)
            fleet_.stop()
    name = "throttling" if scope == "worker" else f"{scope}-faults"
    result = Result(name, len(entries), faults=sum(local_aws.app.faults.values()))
    return result.conclude(fleet_, started, env, expected)


def kills(
    local_aws: LocalAws, entries: Sequence[StreamEntry], kill_count: int, seed: int = 11, tasks: int = 1
) -> Result:
    """kill -9 of a record processor, or of the whole task, at random points during a replay; the task is
    restarted each time, and resumes from the last checkpoint.

    With one task, every kill takes the KCL 3 leader with it, and its replacement waits for the leader's
    lock to run out (about 150 s). With more, the task killed is one that is not the leader, as in a
    service where one task of many dies."""
    expected = reference(local_aws, entries)
    env = fresh_env(local_aws, CHAOS_ENV)
    rng = random.Random(seed)
    started = time.monotonic()
    # Paced so that the replay is still going when the last kill lands (a kill cycle takes ~10 s).
    rate = max(20.0, len(entries) / (kill_count * 10 + 10))
    replaying, stats = in_background(lambda: replay_all(env, entries, rate=rate))
    result = Result("kills", len(entries))
    with tempfile.TemporaryDirectory() as tmp:
        fleet_ = Fleet(env, Path(tmp) / "daemon.log", size=tasks).start()
        try:
            while result.kills < kill_count:
                daemon = fleet_.daemons[0]
                if tasks > 1:
                    _wait_for(lambda: kcl_leader(env), 120, "a KCL leader")
                    daemon = next(d for d in fleet_.daemons if d.worker_id != kcl_leader(env))
                _wait_for(daemon.processors, 120, "processors to start")
                time.sleep(rng.uniform(1, 4))
                if not (rng.random() < 0.5 and daemon.kill_processor(rng)):
                    daemon.kill()
                result.kills += 1
                # Killing a processor makes the daemon exit (after its shutdown grace): either way the
                # task is dead now, and is replaced as ECS would replace it.
                _wait_for(daemon.exited, 60, "the killed task to exit")
                fleet_.replace_dead()
            replaying.join()
            wait_drained(fleet_, stats[0].last_sequence, timeout=600)
        finally:
            fleet_.stop()
    return result.conclude(fleet_, started, env, expected)


def _wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.25)


def kcl_leader(env: AwsEnv) -> str | None:
    """The worker holding KCL 3's leader lock (an item of ``<app>-CoordinatorState`` with an owner)."""
    table = f"{env.settings.application_name}-CoordinatorState"
    try:
        items = env.clients.dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    except ClientError as error:
        if aws_error_code(error) == "ResourceNotFoundException":
            return None
        raise
    return next((i["ownerName"]["S"] for i in items if "ownerName" in i), None)


def failover(local_aws: LocalAws, entries: Sequence[StreamEntry], kill_leader: bool = True) -> Result:
    """Two tasks on a 4-shard stream split the leases; one is killed (the KCL 3 leader, or the other
    one); the other takes all its shards. A dead leader's lock must run out first: up to ~150 s more."""
    expected = reference(local_aws, entries)
    env = fresh_env(local_aws, CHAOS_ENV, shards=4)
    started = time.monotonic()
    replaying, stats = in_background(lambda: replay_all(env, entries, rate=300))
    result = Result("failover", len(entries))
    with tempfile.TemporaryDirectory() as tmp:
        fleet_ = Fleet(env, Path(tmp) / "daemon.log", size=2).start()
        try:
            deadline = time.monotonic() + 180
            while len({owner for owner in lease_owners(env.settings, env.clients).values() if owner}) < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the two tasks never split the leases")
                time.sleep(0.5)
            owners = lease_owners(env.settings, env.clients)
            split = sorted(sum(1 for o in owners.values() if o == w) for w in set(owners.values()))
            while (leader := kcl_leader(env)) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("no KCL leader")
                time.sleep(0.5)
            victim = next(d for d in fleet_.daemons if (d.worker_id == leader) == kill_leader)
            victim.kill()
            killed_at = time.monotonic()
            result.kills = 1
            fleet_.daemons = [d for d in fleet_.daemons if d is not victim]  # the survivor must take over
            # KCL 3: only the leader reassigns leases. A dead leader's lock (in -CoordinatorState) is taken
            # over once its 2-minute lease has run out unrenewed, checked every 30 s: up to ~150 s.
            while len(set(lease_owners(env.settings, env.clients).values())) != 1:
                if time.monotonic() - killed_at > 210:
                    raise TimeoutError("the survivor did not take the dead task's leases")
                time.sleep(0.25)
            takeover = time.monotonic() - killed_at
            (survivor,) = set(lease_owners(env.settings, env.clients).values())
            killed_leader = victim.worker_id == leader
            result.notes += [
                f"leases split {split[0]}/{split[1]}",
                f"takeover {takeover:.1f}s",
                f"the killed {victim.worker_id} {'was' if killed_leader else 'was not'} the KCL leader;"
                f" {survivor} holds every lease",
            ]
            replaying.join()
            wait_drained(fleet_, stats[0].last_sequence, timeout=600)
        finally:
            fleet_.stop()
    return result.conclude(fleet_, started, env, expected)


def reshard(local_aws: LocalAws, entries: Sequence[StreamEntry]) -> Result:
    """A shard is split mid-replay, while its processor is still working through it: the parent is
    finished before its children start, so every vehicle's records are still applied in order."""
    expected = reference(local_aws, entries)
    env = fresh_env(local_aws, CHAOS_ENV)
    started = time.monotonic()
    half = len(entries) // 2
    first = replay_all(env, entries[:half])
    result = Result("reshard", len(entries))
    with tempfile.TemporaryDirectory() as tmp:
        fleet_ = Fleet(env, Path(tmp) / "daemon.log").start()
        try:
            _wait_for(fleet_.daemons[0].processors, 120, "processors to start")
            kinesis, stream = env.clients.kinesis, env.settings.stream_name
            parent = kinesis.list_shards(StreamName=stream)["Shards"][0]
            at_split = lease_checkpoints(env.settings, env.clients).get(parent["ShardId"], "")
            pending = not at_split.isdigit() or int(at_split) < int(first.last_sequence[parent["ShardId"]])
            low, high = (int(parent["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
            kinesis.split_shard(
                StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str((low + high) // 2)
            )
            second = replay_all(env, entries[half:])
            wait_drained(fleet_, {**first.last_sequence, **second.last_sequence}, timeout=300)
            checkpoints = lease_checkpoints(env.settings, env.clients)
            children = sorted(k for k in checkpoints if k not in first.last_sequence)
            result.notes.append(
                f"parent {parent['ShardId'][-2:]} split with records pending: {pending}; then "
                f"{checkpoints.get(parent['ShardId'], 'lease cleaned up')}, "
                f"children {', '.join(c[-2:] for c in children)} checkpointed"
            )
        finally:
            fleet_.stop()
    return result.conclude(fleet_, started, env, expected)


def poison(local_aws: LocalAws, entries: Sequence[StreamEntry], share: float = 0.10) -> Result:
    """10 % bad records of every kind among good ones: every good record applied, every bad one
    quarantined exactly once, no shard stalls."""
    mixed, injected = poisoned(entries, share, seed=5)
    expected = reference(local_aws, mixed)
    env = fresh_env(local_aws, CHAOS_ENV)
    started = time.monotonic()
    stats = replay_all(env, mixed)
    with tempfile.TemporaryDirectory() as tmp:
        fleet_ = Fleet(env, Path(tmp) / "daemon.log").start()
        try:
            wait_drained(fleet_, stats.last_sequence, timeout=600)
        finally:
            fleet_.stop()
    digest = state_digest(env.settings, env.clients)
    quarantined = dict(digest["dead-letter/"])
    once = quarantined == {kind: count for kind, count in injected.items() if count}
    result = Result("poison", len(mixed), restarts=fleet_.restarts)
    result.elapsed = time.monotonic() - started
    result.digest_equal = digest == expected and once
    result.notes.append(
        f"{sum(injected.values())} bad records ({len(quarantined)} kinds), each quarantined once: {once}"
    )
    return result


def nested_record(vin: str, timestamp: str, depth: int) -> bytes:
    """A record whose JSON is ``depth`` containers deep: the record, its signals, then one signal's value
    nested in maps. Built as text: serializers refuse such depths (orjson stops at 255)."""
    inner = depth - 2
    value = '{"n": ' * inner + "1.5" + "}" * inner
    return f'{{"vin": "{vin}", "timestamp": "{timestamp}", "signals": {{"deep": {value}}}}}'.encode()


PILL_SIGNALS = 300
PILL_VALUE_BYTES = 2048


def poison_pills(vin: str, timestamp: str) -> dict[str, bytes]:
    """The records of the poison-pill scenario, all on one vehicle (so one shard). The deep ones must
    become one dead letter each; the wide and the large one are good records that must land."""
    blob = base64.b64encode(random.Random(vin).randbytes(PILL_VALUE_BYTES * 3 // 4)).decode()
    assert len(blob) == PILL_VALUE_BYTES
    return {
        "nested_400": nested_record(vin, timestamp, 400),  # deeper than any recursive walk should go
        "nested_40": nested_record(vin, timestamp, 40),  # deeper than DynamoDB's 32 levels
        "signals_300": orjson.dumps(
            {"vin": vin, "timestamp": timestamp, "signals": {f"probe{i:03d}": i + 0.5 for i in range(300)}}
        ),  # one UpdateItem for all of them would pass DynamoDB's expression limits
        "value_2kb": orjson.dumps({"vin": vin, "timestamp": timestamp, "signals": {"firmwareImage": blob}}),
    }


DEAD_LETTER_PILLS = ("nested_400", "nested_40")
FAILURE_EVENTS = frozenset({"initialize_failed", "batch_failed", "checkpoint_failed"})


def poison_pill(local_aws: LocalAws, entries: Sequence[StreamEntry]) -> Result:
    """Two tasks on a 4-shard stream; one shard carries a 400-deep and a 40-deep record, a 300-signal
    record and a 2 KB base64 value among good records. No task stops, no processor exits, each deep
    record is one dead letter, and everything else lands as in one clean pass (300 signals, and the
    2 KB value whole: a long Tesla RouteLine is that size)."""
    vin = entries[0].partition_key
    own = [orjson.loads(e.data) for e in entries if e.partition_key == vin]
    timestamp = str(own[len(own) // 2]["timestamp"])
    pills = poison_pills(vin, timestamp)
    third = len(entries) // 3
    mixed = [*entries[:third], *(StreamEntry(data, vin) for data in pills.values()), *entries[third:]]
    expected = reference(local_aws, mixed)
    env = fresh_env(local_aws, CHAOS_ENV, shards=4)
    started = time.monotonic()
    kinesis, stream = env.clients.kinesis, env.settings.stream_name
    first = replay_all(env, entries[:third])
    placed = {}
    for kind, data in pills.items():
        put = kinesis.put_record(StreamName=stream, Data=data, PartitionKey=vin)
        placed[kind] = (put["ShardId"], put["SequenceNumber"])
    rest = replay_all(env, entries[third:])
    targets = dict(first.last_sequence)
    for shard, sequence in [*(placed.values()), *rest.last_sequence.items()]:
        if shard not in targets or int(sequence) > int(targets[shard]):
            targets[shard] = sequence
    result = Result("poison-pill", len(mixed))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "daemon.log"
        fleet_ = Fleet(env, log, size=2).start()
        try:
            wait_drained(fleet_, targets, timeout=600)
            owners = {owner for owner in lease_owners(env.settings, env.clients).values() if owner}
            alive = sum(daemon.alive() for daemon in fleet_.daemons)
        finally:
            fleet_.stop()
        lines = [_json(line) for line in log.read_text(errors="replace").splitlines()]
    failures = sorted({line["event"] for line in lines if line.get("event") in FAILURE_EVENTS})
    result.conclude(fleet_, started, env, expected)

    letters = _dead_letters(env)
    per_pill = {kind: letters.get(placed[kind], []) for kind in pills}
    one_each = all(len(per_pill[kind]) == 1 for kind in DEAD_LETTER_PILLS) and len(letters) == len(
        DEAD_LETTER_PILLS
    )
    state = _vehicle_state(env, vin)
    bound = env.settings.max_signals_per_vehicle
    landed = sum(1 for name in state if name.startswith("probe"))
    image = state.get("firmwareImage", {}).get("value")
    dropped_and_counted = any(line.get("event") == "signals_dropped" for line in lines)
    large_value = "kept" if image is not None else ("dropped, counted" if dropped_and_counted else "LOST")
    result.healthy = (
        fleet_.restarts == 0
        and alive == 2
        and not failures
        and one_each
        and landed == min(PILL_SIGNALS, bound)
        and large_value == "kept"
        and len(image or "") == PILL_VALUE_BYTES
    )
    result.notes += [
        f"{alive}/2 tasks alive, {len(owners)} held leases",
        f"processor failures: {', '.join(failures) or 'none'}",
        "dead letters: "
        + ", ".join(
            f"{kind} {len(per_pill[kind])} ({'/'.join(per_pill[kind])})" for kind in DEAD_LETTER_PILLS
        )
        + f"; {len(letters)} in all",
        f"{landed}/{PILL_SIGNALS} probe signals in vehicle-state (bound {bound})",
        f"2 KB value {large_value}",
    ]
    return result


def _dead_letters(env: AwsEnv) -> dict[tuple[str, str], list[str]]:
    """(shard, sequence number) -> reasons of the dead letters written for that record."""
    s3, bucket = env.clients.s3, env.settings.archive_bucket
    found: dict[tuple[str, str], list[str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dead-letter/"):
        for entry in page.get("Contents", []):
            *_, shard, _ = entry["Key"].split("/")
            order = stream_order(entry["Key"])
            assert order is not None, entry["Key"]
            sequence, sub = order
            body = orjson.loads(s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read())
            found.setdefault((shard, f"{sequence}-{sub}" if sub else str(sequence)), []).append(
                str(body["reason"])
            )
    return found


def _vehicle_state(env: AwsEnv, vin: str) -> dict[str, Any]:
    key = {"pseudoVin": {"S": Pseudonymizer(CHAOS_ENV["FLEET_PSEUDONYM_KEY"].encode()).pseudo_vin(vin)}}
    item = env.clients.dynamodb.get_item(
        TableName=env.settings.table_names["vehicle-state"], Key=key, ConsistentRead=True
    ).get("Item")
    return named_item(from_item(item)) if item else {}


def load(local_aws: LocalAws, entries: Sequence[StreamEntry]) -> Result:
    """A large replay through one task: bounded memory, per-batch latency flat over the run."""
    env = fresh_env(local_aws, CHAOS_ENV)
    started = time.monotonic()
    stats = replay_all(env, entries)
    peak = 0
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "daemon.log"
        fleet_ = Fleet(env, log).start()

        def sample() -> None:
            nonlocal peak
            peak = max(peak, *(d.rss_bytes() for d in fleet_.daemons))

        try:
            wait_drained(fleet_, stats.last_sequence, timeout=1800, chaos=sample)
        finally:
            fleet_.stop()
        batches_ = [
            line
            for line in map(_json, log.read_text(errors="replace").splitlines())
            if line.get("event") == "batch"
        ]
    result = Result("load", len(entries), restarts=fleet_.restarts, elapsed=time.monotonic() - started)
    cpu = [_per_record(batches_, "cpuMs", first) for first in (True, False)]
    wall = [_per_record(batches_, "durationMs", first) for first in (True, False)]
    result.notes += [
        f"processor peak RSS {peak / 2**20:.0f} MiB",
        f"{len(batches_)} batches; per record, first -> last fifth: CPU {cpu[0]:.3f} -> {cpu[1]:.3f} ms, "
        f"wall {wall[0]:.2f} -> {wall[1]:.2f} ms (wall includes moto, whose Query slows as tables grow)",
    ]
    result.digest_equal = None
    bounded, flat = peak < 512 * 2**20, cpu[1] <= 1.5 * cpu[0]
    result.notes.append("memory bounded" if bounded else "MEMORY UNBOUNDED?")
    result.notes.append("CPU per record flat" if flat else "CPU PER RECORD GROWS?")
    result.healthy = bounded and flat
    return result


def _per_record(batches_: list[dict[str, Any]], field_: str, first: bool) -> float:
    """Mean of ``field_`` per record over the first (or last) fifth of the batches."""
    fifth = max(1, len(batches_) // 5)
    chosen = batches_[:fifth] if first else batches_[-fifth:]
    total: float = sum(float(b[field_]) for b in chosen)
    records: int = sum(int(b["records"]) for b in chosen)
    return total / max(1, records)


def _json(line: str) -> dict[str, Any]:
    if not line.startswith('{"ts"'):
        return {}
    try:
        parsed: dict[str, Any] = orjson.loads(line)
        return parsed
    except orjson.JSONDecodeError:
        return {}


def main() -> int:
    results: list[Result] = []
    with LocalAws() as aws:
        small = fleet(vehicles=12, minutes=6)
        scenarios: list[Callable[[], Result]] = [
            lambda: throttling(aws, small),
            lambda: throttling(aws, small, rate=0.1, scope="kcl"),
            lambda: kills(aws, fleet(vehicles=20, minutes=8, seed=4), kill_count=10),
            lambda: failover(aws, small),
            lambda: reshard(aws, small),
            lambda: poison(aws, small),
            lambda: poison_pill(aws, fleet(vehicles=8, minutes=1, seed=5)),
            lambda: load(aws, fleet(vehicles=100, minutes=34, seed=9)),
        ]
        for run in scenarios:
            results.append(run())
            print(results[-1].row(), file=sys.stderr, flush=True)
    print(HEADER)
    for result in results:
        print(result.row())
    return 0 if all(r.digest_equal is not False and r.healthy for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
