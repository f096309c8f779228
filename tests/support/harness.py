"""Drives ``python -m worker process`` through the MultiLangDaemon's JSON-line protocol, as the daemon does.

Every message the processor sends is answered the way the KCL 3.x MultiLangDaemon answers it; the checkpoints
it asks for are recorded, and a checkpoint can be made to fail with a KCL exception name.
"""

from __future__ import annotations

import base64
import gc
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from worker.config import Settings
from worker.pipeline import Pipeline
from worker.record_processor import FleetRecordProcessor
from worker.replay import StreamEntry, read_fixture

SEQUENCE_BASE = 49_000_000_000_000_000_000
ARRIVED_AGO_MS = 310_000


@dataclass(frozen=True)
class ShardRecord:
    data: bytes
    partition_key: str
    sequence_number: str
    arrival_ms: int
    sub_sequence_number: int = 0
    """Non-zero for the sub-records of a KPL aggregate, which share the aggregate's sequence number."""

    def message(self) -> dict[str, Any]:
        return {
            "action": "record",
            "data": base64.b64encode(self.data).decode(),
            "partitionKey": self.partition_key,
            "sequenceNumber": self.sequence_number,
            "subSequenceNumber": self.sub_sequence_number,
            "approximateArrivalTimestamp": self.arrival_ms,
        }


def shard_records(
    entries: Iterable[StreamEntry], first: int = 1, arrival_ms: int | None = None
) -> list[ShardRecord]:
    """Number fixture entries as one shard would (increasing sequence numbers). Arrival: 310 s ago by
    default, past the default settle window D (300 s), so an empty, caught-up poll (the stream clock moves
    to now - 1 s) lets the trip machine consume every record (``processors.settle``). Not further back:
    an event time after its arrival is clamped to the arrival."""
    arrival = arrival_ms if arrival_ms is not None else int(time.time() * 1000) - ARRIVED_AGO_MS
    return [
        ShardRecord(e.data, e.partition_key, str(SEQUENCE_BASE + first + i), arrival)
        for i, e in enumerate(entries)
    ]


def fixture(name: str) -> list[StreamEntry]:
    return list(read_fixture(Path(__file__).parent.parent / "fixtures" / name))


def batches(records: Sequence[ShardRecord], size: int) -> Iterator[Sequence[ShardRecord]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


class ProcessExited(Exception):
    def __init__(self, code: int | None, last_lines: list[str] | None = None) -> None:
        tail = "\n".join((last_lines or [])[-5:])
        super().__init__(f"record processor exited with {code}; its last log lines:\n{tail}")
        self.code = code


@dataclass
class Checkpoint:
    sequence_number: str | None
    sub_sequence_number: int | None
    error: str | None


@dataclass
class ProcessorHarness:
    environ: dict[str, str]
    shard_id: str = "shardId-000000000000"
    command: Sequence[str] = (sys.executable, "-m", "worker", "process")
    """The record processor to drive (the benchmark also drives its naive peer)."""
    timeout: float = 60.0
    checkpoints: list[Checkpoint] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    _messages: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            list(self.command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environ,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    # --- the daemon's side of the protocol -----------------------------------------------------------

    def initialize(self, sequence_number: str | None = None) -> None:
        self._call(
            {
                "action": "initialize",
                "shardId": self.shard_id,
                "sequenceNumber": sequence_number or "TRIM_HORIZON",
                "subSequenceNumber": 0,
            }
        )

    def process(
        self, records: Sequence[ShardRecord], millis_behind: int = 0, checkpoint_errors: Iterable[str] = ()
    ) -> list[Checkpoint]:
        """Deliver one batch; returns the checkpoints the processor asked for while handling it."""
        message = {
            "action": "processRecords",
            "records": [r.message() for r in records],
            "millisBehindLatest": millis_behind,
        }
        return self._call(message, list(checkpoint_errors))

    def shard_ended(self, checkpoint_errors: Iterable[str] = ()) -> list[Checkpoint]:
        return self._call({"action": "shardEnded"}, list(checkpoint_errors))

    def shutdown_requested(self, checkpoint_errors: Iterable[str] = ()) -> list[Checkpoint]:
        return self._call({"action": "shutdownRequested"}, list(checkpoint_errors))

    def lease_lost(self) -> list[Checkpoint]:
        return self._call({"action": "leaseLost"})

    def close(self) -> int:
        """Close stdin (what the daemon does when it is done with the child) and wait for the exit code."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(self.timeout)

    def logs(self) -> list[dict[str, Any]]:
        """The processor's log lines (JSON with an ``event``)."""
        return [line for line in self._json_lines() if "event" in line]

    def metrics(self) -> list[dict[str, Any]]:
        """The processor's EMF documents (JSON with an ``_aws`` member)."""
        return [line for line in self._json_lines() if "_aws" in line]

    def _json_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stderr_lines if line.startswith("{")]

    # --- plumbing -------------------------------------------------------------------------------------

    def _call(self, message: dict[str, Any], checkpoint_errors: list[str] | None = None) -> list[Checkpoint]:
        errors = list(checkpoint_errors or [])
        made: list[Checkpoint] = []
        self._send(message)
        while True:
            reply = self._next()
            if reply["action"] == "checkpoint":
                error = errors.pop(0) if errors else None
                seq, sub = reply.get("sequenceNumber"), reply.get("subSequenceNumber")
                made.append(Checkpoint(seq, sub, error))
                self.checkpoints.append(made[-1])
                response: dict[str, Any] = {
                    "action": "checkpoint",
                    "sequenceNumber": seq,
                    "subSequenceNumber": sub,
                }
                if error:
                    response["error"] = error
                self._send(response)
            elif reply["action"] == "status":
                assert reply["responseFor"] == message["action"], reply
                return made
            else:
                raise AssertionError(f"unexpected message {reply}")

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(orjson.dumps(message) + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ProcessExited(self.proc.wait(self.timeout), self.stderr_lines) from None

    def _next(self) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=self.timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from the processor within {self.timeout}s") from None
        if message is None:
            code = self.proc.wait(self.timeout)
            time.sleep(0.1)  # let the stderr reader catch the last lines
            raise ProcessExited(code, self.stderr_lines)
        return message

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                try:
                    self._messages.put(orjson.loads(line))
                except orjson.JSONDecodeError:
                    # Anything on stdout that is not a protocol message would break the real daemon.
                    self._messages.put(
                        {"action": "__not_protocol__", "line": line.decode("utf-8", "replace")}
                    )
        self._messages.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode("utf-8", "replace").rstrip("\n"))


def deliver(environ: dict[str, str], records: Sequence[ShardRecord], size: int) -> ProcessorHarness:
    """One processor's whole life over ``records``: initialize, batches of ``size``, an empty caught-up
    batch (everything settles), a graceful shutdown (flush everything, checkpoint), then a lost lease;
    it must exit 0."""
    harness = ProcessorHarness(environ)
    harness.initialize()
    for batch in batches(records, size):
        harness.process(batch)
    harness.process([])
    harness.shutdown_requested()
    harness.lease_lost()
    assert harness.close() == 0
    return harness


def process_records_input(records: Sequence[ShardRecord], checkpointer: Any, millis_behind: int = 0) -> Any:
    """What amazon-kclpy hands ``process_records`` for ``records`` (the daemon saying the poll is
    ``millis_behind`` behind the stream's tip), for calling a processor in-process."""
    delivered = [
        SimpleNamespace(
            binary_data=r.data,
            partition_key=r.partition_key,
            sequence_number=r.sequence_number,
            sub_sequence_number=r.sub_sequence_number,
            timestamp_millis=r.arrival_ms,
        )
        for r in records
    ]
    return SimpleNamespace(records=delivered, millis_behind_latest=millis_behind, checkpointer=checkpointer)


class RecordingCheckpointer:
    """amazon-kclpy's checkpointer, as a processor called in-process (``process_records_input``) uses it:
    each checkpoint's position, in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, int | None]] = []

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        self.calls.append((sequence_number, sub_sequence_number))


StartProcessor = Callable[[Settings, Callable[[], Pipeline], Callable[[], float], str], FleetRecordProcessor]


@contextmanager
def in_process_processors() -> Iterator[StartProcessor]:
    """Record processors driven in this process (no daemon): ``start(settings, pipeline_factory,
    wall_clock, shard_id)`` initializes one; all lose their lease at the end."""
    made: list[FleetRecordProcessor] = []

    def start(
        settings: Settings,
        pipeline_factory: Callable[[], Pipeline],
        wall_clock: Callable[[], float],
        shard_id: str,
    ) -> FleetRecordProcessor:
        processor = FleetRecordProcessor(settings, pipeline_factory=pipeline_factory, wall_clock=wall_clock)
        processor.initialize(SimpleNamespace(shard_id=shard_id, sequence_number="TRIM_HORIZON"))
        made.append(processor)
        return processor

    try:
        yield start
    finally:
        gc.unfreeze()  # initialize freezes what exists; undo it for the rest of the test session
        for processor in made:
            processor.lease_lost(None)


def run_daemon(environ: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m worker run --drain`` (the real MultiLangDaemon) under ``environ``, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "worker", "run", "--drain", "--timeout", str(timeout)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
