"""An operator's commands against a deployment: set it up, feed it, repair it, look into it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from worker.cli import AddCommand, iso_time, say
from worker.config import Settings


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from processors.pseudonymize import PSEUDONYM_KEY_ITEM
    from worker.aws import AwsClients
    from worker.bootstrap import BootstrapReport, bootstrap, record_pseudonym_fingerprint

    clients = AwsClients(settings)
    if args.fingerprint_only:
        report = BootstrapReport()
        report.note(f"fingerprint {PSEUDONYM_KEY_ITEM}", record_pseudonym_fingerprint(settings, clients))
    else:
        report = bootstrap(settings, clients, shards=args.shards)
    for resource in report.created:
        say(f"created  {resource}")
    for resource in report.existing:
        say(f"exists   {resource}")
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


def cmd_sweep_orphans(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.sweep import sweep_orphans

    idle_ms = int(args.idle_seconds * 1000) if args.idle_seconds is not None else None
    report = sweep_orphans(settings, AwsClients(settings), idle_ms=idle_ms)
    if report.skipped is not None:
        say(f"skipped: the consumer of {report.skipped} is more than a trip gap behind (nothing read)")
        return 0
    say(
        f"read {report.items_read} of {report.candidates} silent candidates in {report.requests} requests: "
        f"{len(report.orphaned)} orphaned trips archived, {len(report.finished)} pending archives "
        f"finished, {report.lost_race} left to a live processor"
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
    say(
        f"{verb} {total} dead letters to {settings.stream_name} in {report.requests} PutRecords; "
        f"skipped {report.already_redriven} already redriven, "
        f"{sum(report.skipped_permanent.values())} permanent (skippedPermanent; --force puts them back), "
        f"{sum(report.skipped_unverified.values())} not in the stream at their position (skippedUnverified), "
        f"{report.filtered} filtered; {report.data_keys} data keys decrypted"
    )
    for reason, count in sorted(report.redriven.items()):
        say(f"  {reason:<24} {count}")
    return 0


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.wiring import resolve_vin

    vin = resolve_vin(settings, AwsClients(settings), args.pseudo_vin)
    if vin is None:
        sys.stderr.write(f"no vin-mapping item for {args.pseudo_vin}\n")
        return 1
    say(vin)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.status import render, shard_status

    for line in render(settings, shard_status(settings, AwsClients(settings))):
        say(line)
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.inspection import trail_report, trip_report, vehicle_report

    clients = AwsClients(settings)
    if args.what == "vehicle":
        lines = vehicle_report(settings, clients, args.pseudo_vin)
    elif args.what == "trail":
        now_ms = int(time.time() * 1000)
        to_ms = int(args.to.timestamp() * 1000) if args.to else now_ms
        from_ms = int(args.since.timestamp() * 1000) if args.since else to_ms - 3600_000
        lines = trail_report(settings, clients, args.pseudo_vin, from_ms, to_ms, now_ms)
    else:
        lines = trip_report(settings, clients, args.trip_id, args.vehicle)
    for line in lines:
        say(line)
    return 0


def register(add: AddCommand) -> None:
    p = add("bootstrap", cmd_bootstrap, "Create the stream, tables, bucket, KMS key and secret (idempotent).")
    p.add_argument("--shards", type=int, default=2, help="shard count of a newly created stream (default 2)")
    p.add_argument(
        "--fingerprint-only",
        action="store_true",
        help="only record the pseudonymization key's fingerprint in vin-mapping (a stack deployed with "
        "CloudFormation: run once, with the worker's settings and role, before the first worker)",
    )

    p = add("replay", cmd_replay, "Put a JSONL fixture stream into Kinesis in order (partition key = VIN).")
    p.add_argument("file", type=Path, help="JSONL: one record per line")
    p.add_argument("--rate", type=float, help="records per second (default: as fast as possible)")

    p = add(
        "sweep-orphans",
        cmd_sweep_orphans,
        "Complete trips of vehicles silent for 2 x the trip gap (run on a schedule, e.g. an ECS task).",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        help="silence that makes a trip an orphan (default 2 x FLEET_TRIP_GAP_SECONDS)",
    )

    p = add("redrive", cmd_redrive, "Decrypt dead letters and put them back into the stream (after a fix).")
    p.add_argument("--reason", help="only dead letters quarantined for this reason code")
    p.add_argument(
        "--since", type=lambda text: iso_time(text).date(), help="only dead letters from this date on"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also those already redriven, those of a permanent reason (not internal_error, "
        "unwritable or timestamp_out_of_range: e.g. once the decoder knows a new shape), and those the "
        "stream no longer holds at their position (unverified: trimmed, or not what was read there)",
    )
    p.add_argument("--dry-run", action="store_true", help="count, decrypt, put nothing")

    p = add("resolve", cmd_resolve, "Admin: print the VIN behind a pseudoVin (needs kms:Decrypt).")
    p.add_argument("pseudo_vin", metavar="PSEUDO_VIN", help="the vehicle's pseudoVin (32 hex characters)")

    add(
        "status",
        cmd_status,
        "Per shard: lease owner, checkpoint, owner switches since it, and how many records (and how old "
        "the oldest) are not checkpointed yet. Reads the lease table and a few GetRecords pages a shard.",
    )

    p = add(
        "inspect",
        cmd_inspect,
        "Print what is stored about one vehicle, one trip or a vehicle's trail (read-only, no VINs).",
    )
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    vehicle = what.add_parser(
        "vehicle",
        help="latest values, trip machine, live trail and recent archived trips of a vehicle",
        description="Latest values (vehicle-state), the trip machine (trip-state), the live trail's "
        "bucket count and the most recent archived trips (trips-index) of one vehicle.",
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
    trip.add_argument(
        "trip_id", metavar="TRIP_ID", help="e.g. trip_20250305_143201_4f0c9a7e11b2c3d4e5f60718293a4b5c"
    )
    trip.add_argument(
        "--vehicle",
        metavar="PSEUDO_VIN",
        help="the trip's vehicle (redundant: the id names it; checked against it)",
    )
    trail = what.add_parser(
        "trail",
        help="a vehicle's trail (live-breadcrumbs) over a time range, as the live map reads it",
        description="The points of a vehicle's trail between --from and --to (default: the last hour), "
        "read as the live map reads them: eventually consistent, crumbs older than 24 h left out, speed, "
        "heading, odometer and battery filled forward within the range.",
    )
    trail.add_argument("pseudo_vin", metavar="PSEUDO_VIN", help="the vehicle's pseudoVin (32 hex characters)")
    trail.add_argument(
        "--from", dest="since", type=iso_time, help="ISO 8601 start (UTC if no zone; default --to - 1 h)"
    )
    trail.add_argument("--to", type=iso_time, help="ISO 8601 end (UTC if no zone; default now)")
