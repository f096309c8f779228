"""``python -m devtools``: the development commands, with the same parser and error lines as the worker's."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from worker.cli import AddCommand, Cli, iso_time, run_cli, say
from worker.config import Settings


def cmd_local_aws(args: argparse.Namespace, settings: Settings) -> int:
    from devtools.local_aws import FaultPlan, LocalAws

    faults = FaultPlan.parse(args.faults, settings.table_names.values()) if args.faults else None
    with LocalAws(args.port, faults=faults) as aws:
        say(f"local AWS listening on {aws.endpoint} (HTTP/1.1 and h2c); Ctrl-C stops it")
        if faults:
            say(f"  injecting faults: {faults.rate:.0%} of {faults.scope} calls, {'/'.join(faults.kinds)}")
        say(f"  export AWS_ENDPOINT_URL={aws.endpoint}")
        aws.serve_until_interrupted()
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[BinaryIO]:
    if path is None:
        yield sys.stdout.buffer
    else:
        with path.open("wb") as out:
            yield out


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from devtools.simulate import simulate, start_ms, write_jsonl
    from worker.progress import Progress

    records = simulate(args.vehicles, args.minutes, args.seed, start_ms(args.start, args.minutes))
    with (
        _output(args.output) as out,
        Progress("simulate", args.vehicles * int(args.minutes * 60)) as progress,
    ):
        count = write_jsonl(out, records, progress.advance)
    if args.output:
        say(f"wrote {count} records for {args.vehicles} vehicles to {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from devtools.demo import demo

    return demo(vehicles=args.vehicles, minutes=args.minutes, shards=args.shards)


def register(add: AddCommand) -> None:
    p = add("local-aws", cmd_local_aws, "Serve an embedded local AWS (moto over HTTP/1.1 + h2c) on loopback.")
    p.add_argument("--port", type=int, default=4566, help="port on 127.0.0.1 (default 4566)")
    p.add_argument(
        "--faults",
        metavar="SPEC",
        help="fail calls as AWS does, e.g. 'rate=0.2,scope=worker,kinds=throttle+server_error,seed=7' "
        "(scope: worker|kcl|all; kinds: throttle, server_error, unprocessed, latency; latency_ms=N; "
        "ops=PutItem+PutObject narrows it to some operations)",
    )

    p = add("simulate", cmd_simulate, "Write a deterministic 1 Hz fleet stream (native JSON lines).")
    p.add_argument("--vehicles", type=int, required=True, help="number of vehicles")
    p.add_argument("--minutes", type=float, required=True, help="length of the stream in minutes")
    p.add_argument("--seed", type=int, default=7, help="same seed and start, same stream (default 7)")
    p.add_argument(
        "--start", type=iso_time, help="ISO time of the first record (default: so the stream ends now)"
    )
    p.add_argument("--output", "-o", type=Path, help="file to write (default stdout)")

    p = add("demo", cmd_demo, "Local AWS + bootstrap + simulated fleet + real KCL drain + summary.")
    p.add_argument("--vehicles", type=int, default=20, help="simulated vehicles (default 20)")
    p.add_argument("--minutes", type=float, default=15, help="minutes of 1 Hz telemetry (default 15)")
    p.add_argument("--shards", type=int, default=2, help="shards of the demo stream (default 2)")


DEVTOOLS = Cli(
    prog="python -m devtools",
    description="fleet-ingest development tools (not shipped; run from the checkout with the dev extra): "
    "an embedded local AWS, a fleet simulator and the demo.",
    groups=(("development", register),),
)


def parser() -> argparse.ArgumentParser:
    from worker.cli import build_parser

    return build_parser(DEVTOOLS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(DEVTOOLS, argv)
