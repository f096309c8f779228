"""``python -m worker``: the worker and its operator tools.

Command output goes to stdout; logs go to stderr as JSON lines. ``process`` is the exception: there,
stdout belongs to the KCL protocol and nothing else is ever written to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from worker.config import Settings

Command = Callable[[argparse.Namespace, Settings], int]


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_local_aws(args: argparse.Namespace, settings: Settings) -> int:
    from worker.local_aws import FaultPlan, LocalAws

    faults = FaultPlan.parse(args.faults, settings.table_names.values()) if args.faults else None
    with LocalAws(args.port, faults=faults) as aws:
        say(f"local AWS listening on {aws.endpoint} (HTTP/1.1 and h2c); Ctrl-C stops it")
        if faults:
            say(f"  injecting faults: {faults.rate:.0%} of {faults.scope} calls, {'/'.join(faults.kinds)}")
        say(f"  export AWS_ENDPOINT_URL={aws.endpoint}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.bootstrap import bootstrap

    report = bootstrap(settings, AwsClients(settings), shards=args.shards)
    for resource in report.created:
        say(f"created  {resource}")
    for resource in report.existing:
        say(f"exists   {resource}")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.launcher import run

    return run(settings, drain=args.drain, timeout=args.timeout)


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    from worker.record_processor import run_processor

    run_processor(settings)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.progress import Progress
    from worker.replay import read_fixture, replay

    started = time.monotonic()
    total = sum(1 for _ in read_fixture(args.file))  # a first pass: a bad line must not leave half a replay
    kinesis = AwsClients(settings).kinesis
    with Progress("replay", total) as progress:
        stats = replay(kinesis, settings.stream_name, read_fixture(args.file), args.rate, progress.advance)
    elapsed = time.monotonic() - started
    say(
        f"replayed {stats.records} records in {stats.requests} PutRecords "
        f"({stats.resent} resent) in {elapsed:.1f}s to {settings.stream_name}"
    )
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from worker.progress import Progress
    from worker.simulate import simulate

    start_ms = (
        int(args.start.timestamp() * 1000)
        if args.start
        else (int(time.time()) - int(args.minutes * 60)) * 1000
    )
    out = args.output.open("wb") if args.output else sys.stdout.buffer
    total = args.vehicles * int(args.minutes * 60)
    try:
        count = 0
        with Progress("simulate", total) as progress:
            for record in simulate(args.vehicles, args.minutes, args.seed, start_ms):
                out.write(orjson.dumps(record) + b"\n")
                count += 1
                progress.advance()
    finally:
        if args.output:
            out.close()
    if args.output:
        say(f"wrote {count} records for {args.vehicles} vehicles to {args.output}")
    return 0


def cmd_sweep_orphans(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.sweep import sweep_orphans

    idle_ms = int(args.idle_seconds * 1000) if args.idle_seconds is not None else None
    report = sweep_orphans(settings, AwsClients(settings), idle_ms=idle_ms)
    say(
        f"scanned {report.scanned} trip-state items: {len(report.orphaned)} orphaned trips archived, "
        f"{len(report.finished)} pending archives finished, {report.lost_race} left to a live processor"
    )
    for trip_id in report.orphaned:
        say(f"  orphan  {trip_id}")
    return 0


def cmd_redrive(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.redrive import redrive

    report = redrive(
        settings,
        AwsClients(settings),
        reason=args.reason,
        since=args.since,
        force=args.force,
        dry_run=args.dry_run,
    )
    verb = "would redrive" if args.dry_run else "redrove"
    total = sum(report.redriven.values())
    say(f"{verb} {total} dead letters to {settings.stream_name}; skipped {report.skipped}")
    for reason, count in sorted(report.redriven.items()):
        say(f"  {reason:<24} {count}")
    return 0


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from processors.pseudonymize import VinVault
    from worker.aws import AwsClients
    from worker.logs import event

    clients = AwsClients(settings)
    vault = VinVault(
        clients.dynamodb, clients.kms, settings.table_names["vin-mapping"], settings.vin_key_alias
    )
    vin = vault.resolve(args.pseudo_vin)
    event(
        logging.getLogger("worker.resolve"), "vin_resolved", pseudoVin=args.pseudo_vin, found=vin is not None
    )
    if vin is None:
        sys.stderr.write(f"no vin-mapping item for {args.pseudo_vin}\n")
        return 1
    say(vin)
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from worker.health import check

    health = check(settings.heartbeat_path, settings.heartbeat_max_age_seconds)
    say(health.reason)
    return 0 if health.healthy else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.status import render, shard_status

    for line in render(settings, shard_status(settings, AwsClients(settings))):
        say(line)
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.inspection import trip_report, vehicle_report

    clients = AwsClients(settings)
    if args.what == "vehicle":
        lines = vehicle_report(settings, clients, args.pseudo_vin)
    else:
        lines = trip_report(settings, clients, args.trip_id, args.vehicle)
    for line in lines:
        say(line)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from worker.demo import demo

    return demo(vehicles=args.vehicles, minutes=args.minutes, shards=args.shards)


def _iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line, like every other operator error (argparse prints its usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="python -m worker",
        description="fleet-ingest: Kinesis telemetry -> DynamoDB/S3, run under the KCL MultiLangDaemon. "
        "Configuration comes from FLEET_* environment variables (see README).",
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = command(
        "local-aws", cmd_local_aws, "Serve an embedded local AWS (moto over HTTP/1.1 + h2c) on loopback."
    )
    p.add_argument("--port", type=int, default=4566, help="port on 127.0.0.1 (default 4566)")
    p.add_argument(
        "--faults",
        metavar="SPEC",
        help="fail calls as AWS does, e.g. 'rate=0.2,scope=worker,kinds=throttle+server_error,seed=7' "
        "(scope: worker|kcl|all; kinds: throttle, server_error, unprocessed, latency; latency_ms=N; "
        "ops=PutItem+PutObject narrows it to some operations)",
    )

    p = command(
        "bootstrap", cmd_bootstrap, "Create the stream, tables, bucket, KMS key and secret (idempotent)."
    )
    p.add_argument("--shards", type=int, default=2, help="shard count of a newly created stream (default 2)")

    p = command("run", cmd_run, "Run the KCL MultiLangDaemon with this worker as its record processor.")
    p.add_argument(
        "--drain", action="store_true", help="exit 0 once everything in the stream at start is checkpointed"
    )
    p.add_argument("--timeout", type=float, help="give up (exit 124) after this many seconds")

    command(
        "process", cmd_process, "The record processor the daemon starts per shard (speaks on stdin/stdout)."
    )

    p = command(
        "replay", cmd_replay, "Put a JSONL fixture stream into Kinesis in order (partition key = VIN)."
    )
    p.add_argument("file", type=Path, help="JSONL: one record per line")
    p.add_argument("--rate", type=float, help="records per second (default: as fast as possible)")

    p = command("simulate", cmd_simulate, "Write a deterministic 1 Hz fleet stream (native JSON lines).")
    p.add_argument("--vehicles", type=int, required=True, help="number of vehicles")
    p.add_argument("--minutes", type=float, required=True, help="length of the stream in minutes")
    p.add_argument("--seed", type=int, default=7, help="same seed and start, same stream (default 7)")
    p.add_argument(
        "--start", type=_iso, help="ISO time of the first record (default: so the stream ends now)"
    )
    p.add_argument("--output", "-o", type=Path, help="file to write (default stdout)")

    p = command(
        "sweep-orphans",
        cmd_sweep_orphans,
        "Complete trips of vehicles silent for 2 x the trip gap (run on a schedule, e.g. an ECS task).",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        help="silence that makes a trip an orphan (default 2 x FLEET_TRIP_GAP_SECONDS)",
    )

    p = command(
        "redrive", cmd_redrive, "Decrypt dead letters and put them back into the stream (after a fix)."
    )
    p.add_argument("--reason", help="only dead letters quarantined for this reason code")
    p.add_argument("--since", type=lambda text: _iso(text).date(), help="only dead letters from this date on")
    p.add_argument("--force", action="store_true", help="also those already redriven")
    p.add_argument("--dry-run", action="store_true", help="count, decrypt, put nothing")

    p = command("resolve", cmd_resolve, "Admin: print the VIN behind a pseudoVin (needs kms:Decrypt).")
    p.add_argument("pseudo_vin", metavar="PSEUDO_VIN", help="the vehicle's pseudoVin (32 hex characters)")

    command(
        "status",
        cmd_status,
        "Per shard: lease owner, checkpoint, owner switches since it, and how many records (and how old "
        "the oldest) are not checkpointed yet. Reads the lease table and a few GetRecords pages a shard.",
    )

    p = command(
        "inspect", cmd_inspect, "Print what is stored about one vehicle or one trip (read-only, no VINs)."
    )
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    vehicle = what.add_parser(
        "vehicle",
        help="latest values, trip machine, live breadcrumbs and recent archived trips of a vehicle",
        description="Latest values (vehicle-state), the trip machine (trip-state), the live breadcrumb "
        "count and the most recent archived trips (trips-index) of one vehicle.",
    )
    vehicle.add_argument(
        "pseudo_vin", metavar="PSEUDO_VIN", help="the vehicle's pseudoVin (32 hex characters)"
    )
    trip = what.add_parser(
        "trip",
        help="a trip's index item and its S3 archive (or its running state)",
        description="An archived trip's trips-index item and its S3 archive (breadcrumb count, first and "
        "last points); a trip still running is shown from trip-state.",
    )
    trip.add_argument("trip_id", metavar="TRIP_ID", help="e.g. trip_20250305_143201_4f0c9a")
    trip.add_argument(
        "--vehicle",
        metavar="PSEUDO_VIN",
        help="the trip's vehicle: a direct read instead of a query by the trip's date",
    )

    command(
        "health",
        cmd_health,
        "Exit 0 if the daemon and every record processor of this task beat within "
        "FLEET_HEARTBEAT_MAX_AGE_SECONDS, else 1; prints why (the container's health check).",
    )

    p = command("demo", cmd_demo, "Local AWS + bootstrap + simulated fleet + real KCL drain + summary.")
    p.add_argument("--vehicles", type=int, default=20, help="simulated vehicles (default 20)")
    p.add_argument("--minutes", type=float, default=15, help="minutes of 1 Hz telemetry (default 15)")
    p.add_argument("--shards", type=int, default=2, help="shards of the demo stream (default 2)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # bad arguments: argparse's usage and message, exit 2
    handler: Command = args.handler
    if args.command == "process":
        # The daemon's child: an error must end it the way the protocol expects, not as a friendly line.
        return handler(args, Settings())
    try:
        settings = Settings()
        from worker.logs import configure_logging

        configure_logging(settings.log_level)
        return handler(args, settings)
    except KeyboardInterrupt:
        return fail(args.command, "interrupted", EXIT_INTERRUPTED)
    except Exception as error:
        message = explain(error)
        if message is None:
            raise
        return fail(args.command, message)


EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def fail(command: str, message: str, code: int = EXIT_FAILED) -> int:
    """One line on stderr, no traceback: an operator's mistake or an unreachable AWS is not a bug."""
    from worker.logs import redact

    sys.stderr.write(f"python -m worker {command}: error: {redact(message)}\n")
    return code


def explain(error: Exception) -> str | None:
    """A one-line explanation of an error an operator can act on; None for a bug (keep the traceback)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )
    from pydantic import ValidationError

    from processors.errors import OperatorError

    if isinstance(error, OperatorError):
        return str(error)
    if isinstance(error, EndpointConnectionError):
        return f"{error} (check AWS_ENDPOINT_URL, the region and the network)"
    if isinstance(error, NoCredentialsError | NoRegionError):
        return f"{error} (configure AWS credentials and region, e.g. a profile or the task role)"
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code, text = details.get("Code", "Error"), details.get("Message", "")
        hint = " (has `python -m worker bootstrap` run?)" if code == "ResourceNotFoundException" else ""
        return f"{error.operation_name}: {code}: {text}{hint}"
    if isinstance(error, BotoCoreError):
        return str(error)
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        if not first["loc"]:  # a rule across settings
            return f"invalid settings: {first['msg'].removeprefix('Value error, ')}"
        name = "FLEET_" + "_".join(str(part) for part in first["loc"]).upper()
        return f"invalid setting {name}: {first['msg']}"
    if isinstance(error, FileNotFoundError):
        return f"no such file: {error.filename}" if error.filename else str(error)
    if isinstance(error, OSError):
        return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    return None
