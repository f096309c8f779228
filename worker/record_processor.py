"""The amazon-kclpy record processor: one process per shard lease, driven by the MultiLangDaemon.

Contract with the daemon:
- a checkpoint goes just before the oldest record the trip machine had not consumed when it was called
  for, once everything pending then (vehicle state, trail, the trip-state exactly-once needs) is written:
  every ``FLEET_CHECKPOINT_EVERY_SECONDS``, spread over the flushes of the next sixth of that interval
  (``Pipeline.begin_checkpoint``); at ``shutdown_requested`` and at ``shard_ended``, at once;
- a batch or flush that fails (retries exhausted, or any unexpected error) ends the process with a
  non-zero exit *before* anything else is checkpointed, so the KCL restarts the shard from the last
  checkpoint. (amazon-kclpy would log a plain exception and answer the daemon as if all went well.);
- ``shard_ended`` drains the settle buffer into the machine, flushes and checkpoints SHARD_END (children
  wait on it); ``lease_lost`` never flushes nor checkpoints and drops every buffer;
- between each checkpoint's writes and the checkpoint itself (at shard end too), the shard's progress is
  reported to ``vin-mapping`` (``processors.frontier``: the newest arrival received, when the daemon last
  said the shard was caught up, both as of when the checkpoint was called for): the orphan sweep reads it
  to know the consumer keeps up, instead of reading the stream. One write per checkpoint, even when the
  checkpoint does not move.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, NoReturn

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

from processors.errors import PseudonymKeyMismatch
from processors.frontier import ConsumerPosition
from schemas.records import KinesisRecord, StreamPosition
from worker.checkpoint import CheckpointPolicy, LeaseLost, checkpoint
from worker.config import Settings
from worker.health import Heartbeat
from worker.logs import configure_logging, event
from worker.metrics import BatchMetrics, MetricsPublisher
from worker.pipeline import BatchOutcome, Pipeline
from worker.wiring import pipeline_for

log = logging.getLogger("worker.processor")

EXIT_BATCH_FAILED = 3
EXIT_INIT_FAILED = 4
EXIT_CHECKPOINT_FAILED = 5
EXIT_PSEUDONYM_KEY_MISMATCH = PseudonymKeyMismatch.exit_code
"""6: the pseudonymization key is not the one the tables were built with; no record is consumed."""


def kinesis_record(record: Any, shard_id: str) -> KinesisRecord:
    """amazon_kclpy ``Record`` -> our ``KinesisRecord``."""
    return KinesisRecord(
        data=record.binary_data,
        partition_key=record.partition_key,
        position=StreamPosition(
            shard_id, record.sequence_number, int(record.sub_sequence_number or 0), record.timestamp_millis
        ),
    )


class FleetRecordProcessor(processor.RecordProcessorBase):  # type: ignore[misc]
    """The MultiLangDaemon's record processor for one shard lease: feeds each batch (empty ones too)
    through a ``Pipeline`` and checkpoints at its watermark.

    Guarantees: a position is checkpointed only after every write the records up to it need succeeded
    (``Pipeline.end_checkpoint``, or ``Pipeline.checkpoint`` at once); any failure of a batch or flush
    ends the process (exit 3) before a later checkpoint could skip it; a lost lease never flushes nor
    checkpoints.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline_factory: Callable[[], Pipeline] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._pipeline_factory = pipeline_factory or partial(pipeline_for, settings)
        self._pipeline: Pipeline | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._policy = CheckpointPolicy(settings.checkpoint_every_seconds)
        self._position = ConsumerPosition()
        self._called_at: ConsumerPosition | None = None
        """The shard's position when the checkpoint under way was called for."""
        self._shard_id = "unknown"
        self._checkpointed: StreamPosition | None = None
        self._pending = 0
        self._metrics = MetricsPublisher(settings.metrics_namespace, settings.application_name)
        self._heartbeat: Heartbeat | None = None

    # --- daemon callbacks -------------------------------------------------------------------------

    def initialize(self, initialize_input: Any) -> None:
        self._shard_id = initialize_input.shard_id
        # The pid ties a shard to its process (one per lease): per-shard CPU and memory come from /proc.
        event(
            log,
            "initialize",
            shard=self._shard_id,
            startingAt=initialize_input.sequence_number,
            pid=os.getpid(),
        )
        self._heartbeat = Heartbeat(self._settings.heartbeat_path, self._shard_id)
        self._heartbeat.start()
        try:
            self._pipeline = self._pipeline_factory()
        except PseudonymKeyMismatch as refused:
            # An operator's error, not a bug: one line, no traceback; the daemon retries the lease in
            # vain until the key is fixed (``worker run`` refuses to start in the first place).
            event(log, "pseudonym_key_mismatch", logging.ERROR, shard=self._shard_id, error=str(refused))
            raise SystemExit(EXIT_PSEUDONYM_KEY_MISMATCH) from None
        except Exception as error:
            self._exit(EXIT_INIT_FAILED, "initialize_failed", error)
        # What exists now (boto3's service models, the pydantic and protobuf schemas) lives as long as the
        # process: keep the collector from rescanning it on every full collection. 12% of the CPU a record.
        gc.freeze()
        self._policy.done(self._clock())

    def process_records(self, process_records_input: Any) -> None:
        started, cpu_started = self._clock(), time.process_time()
        lag = process_records_input.millis_behind_latest
        now_ms = self._now_ms()
        try:
            pipeline = self._require_pipeline()
            records = [kinesis_record(r, self._shard_id) for r in process_records_input.records]
            outcome = pipeline.process(records, now_ms, caught_up=not records and lag == 0)
        except Exception as error:
            self._exit(EXIT_BATCH_FAILED, "batch_failed", error)
        self._position.polled((r.position.arrival_ms for r in records), lag, now_ms)
        self._pending += outcome.records
        if records or outcome.writes:
            duration_ms = round((self._clock() - started) * 1000, 1)
            cpu_ms = round((time.process_time() - cpu_started) * 1000, 1)
            self._report(outcome, lag, duration_ms, cpu_ms)
        if not pipeline.checkpointing and self._policy.due(self._clock()):
            self._begin_checkpoint(now_ms)
        if pipeline.checkpointing:
            self._end_checkpoint(process_records_input.checkpointer, now_ms)
        if self._heartbeat is not None:
            self._heartbeat.beat()

    def lease_lost(self, lease_lost_input: Any) -> None:
        # Nothing is flushed: what is buffered is the next owner's to replay from our last checkpoint.
        event(log, "lease_lost", shard=self._shard_id, uncheckpointed=self._pending)
        self._close()

    def shard_ended(self, shard_ended_input: Any) -> None:
        event(log, "shard_ended", shard=self._shard_id)
        try:
            pipeline = self._require_pipeline()
            ended = partial(self._commit, shard_ended_input.checkpointer, ended=True)
            pipeline.end_of_shard(self._now_ms(), ended)
        except SystemExit:
            raise
        except Exception as error:
            self._exit(EXIT_BATCH_FAILED, "flush_failed", error)
        self._close()

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        event(log, "shutdown_requested", shard=self._shard_id, uncheckpointed=self._pending)
        self._flush_and_checkpoint(shutdown_requested_input.checkpointer)
        self._stop_heartbeat()

    # --- internals ----------------------------------------------------------------------------------

    def _report(self, outcome: BatchOutcome, lag: int | None, duration_ms: float, cpu_ms: float) -> None:
        """The ``batch`` log line and the batch metrics, both from the one outcome."""
        event(
            log,
            "batch",
            shard=self._shard_id,
            records=outcome.records,
            applied=outcome.applied,
            deadLetters=outcome.dead_letters,
            lateForMachine=outcome.late_for_machine,
            lateAfterArchive=outcome.late_after_archive,
            vehicles=outcome.vehicles,
            writes=outcome.writes,
            breadcrumbs=outcome.breadcrumbs,
            tripsArchived=outcome.trips_archived,
            invalidCoordinates=outcome.invalid_coordinates,
            signalsDropped=outcome.signals_dropped,
            millisBehindLatest=lag,
            durationMs=duration_ms,
            # The worker's own CPU (all threads): duration minus this is waiting on AWS.
            cpuMs=cpu_ms,
        )
        self._metrics.batch(
            self._shard_id,
            BatchMetrics(
                records=outcome.records,
                dead_letters=outcome.dead_letters,
                trips_archived=outcome.trips_archived,
                invalid_coordinates=outcome.invalid_coordinates,
                signals_dropped=outcome.signals_dropped,
                late_for_machine=outcome.late_for_machine,
                late_after_archive=outcome.late_after_archive,
                write_requests=outcome.writes,
                duration_ms=duration_ms,
                millis_behind_latest=lag,
            ),
        )

    def _require_pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise RuntimeError("a daemon message before a successful initialize")
        return self._pipeline

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _begin_checkpoint(self, now_ms: int) -> None:
        """``Pipeline.begin_checkpoint``: what is pending now is written over the next flushes. The progress
        the checkpoint reports is this moment's. A failed flush ends the process."""
        try:
            self._require_pipeline().begin_checkpoint(now_ms)
        except Exception as error:
            self._exit(EXIT_BATCH_FAILED, "flush_failed", error)
        self._called_at = replace(self._position)
        self._policy.done(self._clock())

    def _end_checkpoint(self, checkpointer: Any, now_ms: int) -> None:
        """``Pipeline.end_checkpoint``: once the called-for checkpoint's writes are all written, report the
        progress of the moment it was called for, then checkpoint its watermark."""
        commit = partial(self._commit, checkpointer, consumer=self._called_at)
        try:
            self._require_pipeline().end_checkpoint(now_ms, commit)
        except SystemExit:
            raise
        except Exception as error:
            self._exit(EXIT_BATCH_FAILED, "flush_failed", error)

    def _flush_and_checkpoint(self, checkpointer: Any) -> None:
        """``Pipeline.checkpoint``: write everything pending, report the shard's progress, then checkpoint
        at the watermark if it moved. A failed flush or report ends the process: nothing after it is
        checkpointed."""
        try:
            self._require_pipeline().checkpoint(self._now_ms(), partial(self._commit, checkpointer))
        except SystemExit:
            raise
        except Exception as error:
            self._exit(EXIT_BATCH_FAILED, "flush_failed", error)
        self._policy.done(self._clock())

    def _commit(
        self,
        checkpointer: Any,
        position: StreamPosition | None,
        *,
        ended: bool = False,
        consumer: ConsumerPosition | None = None,
    ) -> None:
        """After the flush: report the shard's progress (``consumer``, by default now's: everything received
        by then is written now), then checkpoint, at SHARD_END when ``ended``, else only if the watermark
        moved. A failed report raises before the checkpoint, like a failed flush."""
        reported = self._position if consumer is None else consumer
        progress = reported.progress(self._shard_id, self._now_ms(), ended=ended)
        if progress is not None:
            self._require_pipeline().record_progress(progress)
        if ended:
            self._checkpoint(checkpointer, None)
        elif position is not None and position != self._checkpointed:
            self._checkpoint(checkpointer, position)

    def _checkpoint(self, checkpointer: Any, position: StreamPosition | None) -> None:
        try:
            checkpoint(checkpointer, position, self._shard_id)
        except LeaseLost:
            return
        except Exception as error:
            self._exit(EXIT_CHECKPOINT_FAILED, "checkpoint_failed", error)
        event(
            log,
            "checkpoint",
            shard=self._shard_id,
            sequenceNumber=position.sequence_number if position else "SHARD_END",
            records=self._pending,
        )
        self._pending = 0
        self._checkpointed = position

    def _close(self) -> None:
        self._stop_heartbeat()
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None

    def _stop_heartbeat(self) -> None:
        """This processor gives its shard up: the health check must not wait for it any more."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _exit(self, code: int, name: str, error: BaseException) -> NoReturn:
        """Stop the process: amazon-kclpy re-raises SystemExit, the daemon restarts from the checkpoint."""
        reason = getattr(error, "reason", type(error).__name__)
        log.error(name, exc_info=error, extra={"fields": {"shard": self._shard_id, "reason": str(reason)}})
        raise SystemExit(code)


def run_processor(settings: Settings) -> None:
    """Entry point of ``python -m worker process``: speak the MultiLangDaemon protocol on stdin/stdout."""
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # anything that would print lands on stderr, never in the protocol
    # The daemon decides when we stop (it closes stdin); a signal sent to the whole process group
    # (Ctrl-C, `timeout`) must not kill us before we get shutdownRequested.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level)
    kcl.KCLProcess(FleetRecordProcessor(settings), output_file=protocol_out).run()
