"""``make demo``: the whole pipeline on an embedded local AWS, start to summary, then clean up."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from devtools.local_aws import LocalAws
from devtools.settings import DEMO_ENV
from devtools.simulate import simulate, start_ms, write_jsonl
from schemas.dynamo import from_item
from worker.aws import AwsClients
from worker.bootstrap import bootstrap
from worker.config import Settings
from worker.launcher import run
from worker.leases import lease_checkpoints
from worker.replay import read_fixture, replay
from worker.shards import shards_of


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the demo's output is for the person who ran it


def demo(vehicles: int, minutes: float, shards: int) -> int:
    started = time.monotonic()
    with LocalAws() as aws, tempfile.TemporaryDirectory(prefix="fleet-demo-") as tmp:
        os.environ.update(DEMO_ENV)
        os.environ["AWS_ENDPOINT_URL"] = aws.endpoint
        settings = Settings()
        clients = AwsClients(settings)
        say(f"[1/5] local AWS on {aws.endpoint}")

        bootstrap(settings, clients, shards=shards)
        say(
            f"[2/5] bootstrapped stream '{settings.stream_name}' ({shards} shards), "
            "5 tables, bucket, key, secret"
        )

        fixture = Path(tmp) / "fleet.jsonl"
        with fixture.open("wb") as out:
            write_jsonl(out, simulate(vehicles, minutes, seed=7, start_ms=start_ms(None, minutes)))
        say(f"[3/5] simulated {vehicles} vehicles x {minutes:g} min at 1 Hz")

        stats = replay(clients.kinesis, settings.stream_name, read_fixture(fixture))
        say(f"[4/5] replayed {stats.records} records in {stats.requests} PutRecords calls")

        processing_started = time.monotonic()
        code = run(settings, drain=True, timeout=240)  # 67-140 s here, by load: the budget is 4 minutes
        processing = time.monotonic() - processing_started
        if code != 0:
            say(f"the KCL did not drain the stream (exit {code})")
            return code
        say(f"[5/5] the KCL MultiLangDaemon drained the stream in {processing:.1f}s")

        summary(settings, clients, stats.records, time.monotonic() - started)
    return 0


def summary(settings: Settings, clients: AwsClients, records: int, elapsed: float) -> None:
    vehicles = clients.dynamodb.scan(
        TableName=settings.table_names["vehicle-state"], Select="COUNT", ConsistentRead=True
    )["Count"]
    leases = lease_checkpoints(settings, clients)
    say("")
    say("fleet-ingest demo summary")
    say(f"  records replayed       {records}")
    say(f"  vehicles in state      {vehicles}")
    say(f"  shards / leases        {len(shards_of(settings, clients))} / {len(leases)}")
    for shard, checkpoint in sorted(leases.items()):
        say(f"    {shard}  checkpoint {checkpoint[:24]}{'...' if len(checkpoint) > 24 else ''}")
    trips = [
        from_item(i) for i in clients.dynamodb.scan(TableName=settings.table_names["trips-index"])["Items"]
    ]
    say(f"  trips archived         {len(trips)} (S3 trips/ + trips-index)")
    say(f"  elapsed                {elapsed:.1f}s")
    if trips:
        trip = max(trips, key=lambda t: t["distanceMiles"])
        say("")
        say("example trip (the longest)")
        say(f"  {trip['tripId']}  vehicle {trip['pseudoVin'][:12]}...  ended by {trip['endReason']}")
        minutes, seconds = divmod(trip["durationSeconds"], 60)
        say(f"  {trip['startTime']} -> {trip['endTime']}  ({minutes} min {seconds} s)")
        say(
            f"  {trip['distanceMiles']:.2f} mi, max {trip['maxSpeedMph']} mph, "
            f"avg {trip['avgSpeedMph']} mph, "
            f"battery {trip.get('startBattery')} -> {trip.get('endBattery')} %"
        )
        say(f"  {trip['breadcrumbCount']} breadcrumbs in s3://{settings.archive_bucket}/{trip['s3Key']}")
