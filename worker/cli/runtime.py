"""The image's commands: ``run`` (ENTRYPOINT), ``process`` (the daemon's child), ``health`` (HEALTHCHECK)."""

from __future__ import annotations

import argparse

from worker.cli import AddCommand, say
from worker.config import Settings


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.aws import AwsClients
    from worker.launcher import run
    from worker.wiring import check_pseudonym_key, pseudonymizer_for

    # Before the daemon takes a lease: a key that is not the tables' own would re-pseudonymize the fleet.
    clients = AwsClients(settings)
    check_pseudonym_key(settings, clients, pseudonymizer_for(settings, clients))  # PseudonymKeyMismatch: 6
    return run(settings, drain=args.drain, timeout=args.timeout)


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    from worker.kcl_daemon import exit_with_daemon
    from worker.record_processor import run_processor

    exit_with_daemon()  # a processor never outlives the daemon that started it
    run_processor(settings)
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from worker.health import check

    health = check(settings.heartbeat_path, settings.heartbeat_max_age_seconds)
    say(health.reason)
    return 0 if health.healthy else 1


def register(add: AddCommand) -> None:
    p = add("run", cmd_run, "Run the KCL MultiLangDaemon with this worker as its record processor.")
    p.add_argument(
        "--drain", action="store_true", help="exit 0 once everything in the stream at start is checkpointed"
    )
    p.add_argument("--timeout", type=float, help="give up (exit 124) after this many seconds")

    add("process", cmd_process, "The record processor the daemon starts per shard (speaks on stdin/stdout).")

    add(
        "health",
        cmd_health,
        "Exit 0 if the daemon and every record processor of this task beat within "
        "FLEET_HEARTBEAT_MAX_AGE_SECONDS, else 1; prints why (the container's health check).",
    )
