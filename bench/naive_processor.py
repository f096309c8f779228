"""``python -m bench.naive_processor``: the naive peer as an amazon-kclpy v3 record processor.

What a team's first KCL consumer looks like: handle each record, checkpoint after every batch. (Unlike
``worker process`` it would also checkpoint past a failed batch's exception if it swallowed one; it
does not catch any, so a failure ends the process, which is what the benchmark wants to notice.)
"""

from __future__ import annotations

from typing import Any

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

from bench.naive import NaiveHandler, pseudonym_key
from worker.aws import AwsClients
from worker.config import Settings
from worker.record_processor import kinesis_record


class NaiveRecordProcessor(processor.RecordProcessorBase):  # type: ignore[misc]
    def __init__(self) -> None:
        self._handler: NaiveHandler | None = None
        self._shard_id = "unknown"

    def initialize(self, initialize_input: Any) -> None:
        self._shard_id = initialize_input.shard_id
        settings = Settings()
        clients = AwsClients(settings)
        self._handler = NaiveHandler(settings, clients, pseudonym_key(settings, clients))

    def process_records(self, process_records_input: Any) -> None:
        assert self._handler is not None
        records = process_records_input.records
        for record in records:
            # The same position the trip machine gets in ours: it is how a redelivery is recognised.
            self._handler.handle(record.binary_data, kinesis_record(record, self._shard_id).position)
        if records:
            process_records_input.checkpointer.checkpoint()

    def lease_lost(self, lease_lost_input: Any) -> None:
        pass

    def shard_ended(self, shard_ended_input: Any) -> None:
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        shutdown_requested_input.checkpointer.checkpoint()


if __name__ == "__main__":
    kcl.KCLProcess(NaiveRecordProcessor()).run()
