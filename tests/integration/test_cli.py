"""The operator CLI: complete help, one-line errors, progress bars, ``status`` and ``inspect``."""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from devtools import cli as devtools_cli
from devtools.local_aws import LocalAws
from processors.pseudonymize import Pseudonymizer
from tests.conftest import FIXTURES, AwsEnv, create_lease_table, fresh_env
from tests.fixtures.build import TRIP_GAP_SECONDS
from tests.support.cli import worker
from tests.support.harness import ProcessorHarness, batches, fixture, shard_records
from tests.support.oracle import latest_by_vin
from worker import cli
from worker.cli import runtime
from worker.inspection import VALUE_COLUMN, row
from worker.progress import Progress
from worker.replay import read_fixture, replay

VIN = "5YJ3E1EA7KF317000"
TRIPS = FIXTURES / "trips.jsonl"


def devtools(*args: str) -> subprocess.CompletedProcess[str]:
    return worker(*args, package="devtools")


def assert_one_line_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"python -m worker {command}: error: "), lines[0]
    return lines[0]


# --- help ------------------------------------------------------------------------------------------------


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in subparsers(sub):
                    yield f"{name} {inner}", subsub


RUNTIME = ["run", "process", "health"]
OPERATOR = ["bootstrap", "replay", "sweep-orphans", "redrive", "resolve", "status", "inspect"]
DEVELOPMENT = ["local-aws", "simulate", "demo"]


def test_the_worker_has_the_runtime_and_operator_commands_and_devtools_the_development_ones() -> None:
    worker_commands = [name for name, _ in subparsers(cli.parser()) if " " not in name]
    assert worker_commands == RUNTIME + OPERATOR
    assert [name for name, _ in subparsers(devtools_cli.parser())] == DEVELOPMENT
    assert cli.parser().epilog == (
        f"Commands by audience. runtime: {', '.join(RUNTIME)}; operator: {', '.join(OPERATOR)}."
    )


@pytest.mark.parametrize("parser", [cli.parser, devtools_cli.parser], ids=["worker", "devtools"])
def test_every_command_and_argument_is_described(parser: Callable[[], argparse.ArgumentParser]) -> None:
    commands = dict(subparsers(parser()))
    for name, sub in commands.items():
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                assert action.help, f"{name} {action.dest}: no help"


def test_help_exits_zero_for_the_root_and_every_command() -> None:
    top = worker("--help")
    assert top.returncode == 0 and "status" in top.stdout and "inspect" in top.stdout
    assert "local-aws" not in top.stdout and "demo" not in top.stdout
    for name, _ in subparsers(cli.parser()):
        result = worker(*name.split(), "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: "), name
    dev = devtools("--help")
    assert dev.returncode == 0 and all(name in dev.stdout for name in DEVELOPMENT), dev.stderr
    for name in DEVELOPMENT:
        result = devtools(name, "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: python -m devtools "), name


# --- one-line errors ---------------------------------------------------------------------------------------


def offline_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "FLEET_AWS_MAX_ATTEMPTS": "1",
        **extra,
    }


def test_an_unreachable_endpoint_is_one_line() -> None:
    line = assert_one_line_error(worker("status", env=offline_env()), "status")
    assert "127.0.0.1:9" in line


def test_a_missing_file_is_one_line() -> None:
    line = assert_one_line_error(worker("replay", "/nonexistent/fleet.jsonl", env=offline_env()), "replay")
    assert line.endswith("no such file: /nonexistent/fleet.jsonl")


def test_a_bad_setting_is_one_line() -> None:
    env = offline_env(FLEET_CHECKPOINT_EVERY_SECONDS="many")
    line = assert_one_line_error(worker("status", env=env), "status")
    assert "FLEET_CHECKPOINT_EVERY_SECONDS" in line


def test_bad_arguments_are_one_line_pointing_at_help() -> None:
    result = worker("replay", "fleet.jsonl", "--rate", "fast")
    assert result.returncode == 2
    assert result.stderr == (
        "python -m worker replay: error: argument --rate: invalid float value: 'fast' (see --help)\n"
    )
    dev = devtools("simulate", "--vehicles", "two", "--minutes", "1")
    assert dev.returncode == 2
    assert dev.stderr == (
        "python -m devtools simulate: error: argument --vehicles: invalid int value: 'two' (see --help)\n"
    )
    missing = worker("frobnicate")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    assert missing.stderr.startswith("python -m worker: error: argument COMMAND: invalid choice")


def test_a_bad_fixture_line_names_the_line_and_sends_nothing(aws_env: AwsEnv, tmp_path: Path) -> None:
    fixture = tmp_path / "bad.jsonl"
    fixture.write_text('{"vin": "5YJ3E1EA7KF317000", "timestamp": 1, "signals": {}}\n{"vin": \n')
    line = assert_one_line_error(worker("replay", str(fixture), env=aws_env.environ), "replay")
    assert line.endswith(f"{fixture}:2: not a JSON line")
    bad_base64 = tmp_path / "raw.jsonl"
    for raw in ("%%%", "caf\u00e9"):
        bad_base64.write_text(orjson.dumps({"_raw_b64": raw, "_partition_key": "k"}).decode() + "\n")
        line = assert_one_line_error(worker("replay", str(bad_base64), env=aws_env.environ), "replay")
        assert line.endswith(f"{bad_base64}:1: _raw_b64 is not base64")
    kinesis, stream = aws_env.clients.kinesis, aws_env.settings.stream_name
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        assert kinesis.get_records(ShardIterator=iterator)["Records"] == []


def test_a_vin_given_for_a_pseudo_vin_is_refused_without_echoing_it() -> None:
    line = assert_one_line_error(worker("inspect", "vehicle", VIN, env=offline_env()), "inspect")
    assert VIN not in line.upper() and "pseudoVin" in line


def test_an_aws_error_names_the_call_and_the_code(aws_env: AwsEnv) -> None:
    env = {**aws_env.environ, "FLEET_VEHICLE_STATE_TABLE": "no-such-table"}
    line = assert_one_line_error(worker("inspect", "vehicle", "0" * 32, env=env), "inspect")
    assert "GetItem: ResourceNotFoundException" in line and "bootstrap" in line


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``cli.main`` configures logging onto the (captured) stderr: undo it afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], root.level = saved


@pytest.mark.usefixtures("restore_logging")
def test_interrupt_is_one_line_and_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: argparse.Namespace, settings: object) -> int:
        raise KeyboardInterrupt

    def buggy(args: argparse.Namespace, settings: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runtime, "cmd_health", interrupted)
    assert cli.main(["health"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "python -m worker health: error: interrupted\n"
    monkeypatch.setattr(runtime, "cmd_health", buggy)
    with pytest.raises(RuntimeError):
        cli.main(["health"])


# --- progress --------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_only() -> None:
    ticks = iter(float(t) for t in range(100))
    terminal = Terminal()
    with Progress("replay", 4, stream=terminal, clock=lambda: next(ticks)) as progress:
        for _ in range(4):
            progress.advance()
    frames = terminal.getvalue().split("\r")[1:]
    assert frames[-1].startswith("replay  [##############################] 100%  4/4")
    assert terminal.getvalue().endswith("\n")
    quiet = io.StringIO()
    with Progress("replay", 4, stream=quiet) as progress:
        progress.advance(4)
    assert not progress.enabled and quiet.getvalue() == ""


def test_simulate_writes_only_data_on_stdout_and_nothing_else_when_not_a_terminal() -> None:
    result = devtools("simulate", "--vehicles", "2", "--minutes", "0.5", "--seed", "3")
    assert result.returncode == 0 and result.stderr == ""
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2 * 30 and all("vin" in record for record in records)


# --- status ----------------------------------------------------------------------------------------------


def put_lease(env: AwsEnv, shard: str, owner: str, checkpoint: str, switches: int) -> None:
    env.clients.dynamodb.put_item(
        TableName=env.settings.application_name,
        Item={
            "leaseKey": {"S": shard},
            "leaseOwner": {"S": owner},
            "leaseCounter": {"N": "7"},
            "checkpoint": {"S": checkpoint},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": str(switches)},
        },
    )


def rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines() if line.startswith("shardId-")}


def test_status_shows_owner_checkpoint_and_records_behind(aws_env: AwsEnv) -> None:
    before = worker("status", env=aws_env.environ)
    assert before.returncode == 0 and "no worker has taken a lease yet" in before.stdout
    stats = replay(
        aws_env.clients.kinesis, aws_env.settings.stream_name, read_fixture(FIXTURES / "fleet-small.jsonl")
    )
    first, second = sorted(stats.last_sequence)
    create_lease_table(aws_env)
    put_lease(aws_env, first, "worker-a", stats.last_sequence[first], 0)
    put_lease(aws_env, second, "worker-b", "TRIM_HORIZON", 2)
    in_second = len(
        aws_env.clients.kinesis.get_records(
            ShardIterator=aws_env.clients.kinesis.get_shard_iterator(
                StreamName=aws_env.settings.stream_name, ShardId=second, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
        )["Records"]
    )
    result = worker("status", env=aws_env.environ)
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert result.stdout.startswith("SHARD ") and "LEASE OWNER" in result.stdout
    assert table[first][1:3] == ["open", "worker-a"] and table[first][4:6] == ["0", "0"]
    assert table[first][3].endswith(stats.last_sequence[first][-12:])
    assert table[second][1:6] == ["open", "worker-b", "TRIM_HORIZON", "2", str(in_second)]
    assert in_second > 0 and table[second][6].endswith("s")
    assert "2 lease(s)" in result.stdout


# --- inspect ---------------------------------------------------------------------------------------------


@dataclass
class Processed:
    env: AwsEnv
    pseudo: Pseudonymizer


@pytest.fixture(scope="module")
def processed(local_aws: LocalAws) -> Processed:
    """trips.jsonl applied by the record processor (no daemon needed to inspect what it wrote)."""
    env = fresh_env(
        local_aws, {"FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS), "FLEET_PSEUDONYM_KEY": "cli-key"}
    )
    harness = ProcessorHarness(env.environ)
    harness.initialize()
    for batch in batches(shard_records(fixture("trips.jsonl")), 500):
        harness.process(batch)
    harness.process([])  # caught up: what the stream clock settles is consumed
    harness.shutdown_requested()  # a graceful stop flushes everything buffered
    assert harness.close() == 0
    return Processed(env, Pseudonymizer(b"cli-key"))


def indexed_trips(processed: Processed) -> list[dict[str, str]]:
    items = processed.env.clients.dynamodb.scan(TableName=processed.env.settings.table_names["trips-index"])[
        "Items"
    ]
    return [{k: v["S"] for k, v in item.items() if "S" in v} for item in items]


def test_inspect_vehicle_prints_state_trip_machine_and_trips(processed: Processed) -> None:
    trip = indexed_trips(processed)[0]
    pseudo_vin = trip["pseudoVin"]
    result = worker("inspect", "vehicle", pseudo_vin, env=processed.env.environ)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"vehicle {pseudo_vin}\n")
    for heading in (
        "latest values (vehicle-state)",
        "trip machine (trip-state)",
        "live trail",
        "archived trips",
    ):
        assert heading in out
    assert trip["tripId"] in out and "vehicleSpeed" in out and "status" in out
    values = [
        line for line in out.splitlines() if line.startswith("    ") and not line.startswith("    trip_")
    ]
    assert values and all(line[VALUE_COLUMN - 1] == " " != line[VALUE_COLUMN] for line in values), "aligned"
    # The item stores signal codes and epoch ms; the report shows names and ISO times, as before.
    (vin,) = [vin for vin in latest_by_vin(TRIPS) if processed.pseudo.pseudo_vin(vin) == pseudo_vin]
    latest = latest_by_vin(TRIPS)[vin]
    shown = {line.split()[0]: line[VALUE_COLUMN:] for line in values if not line.startswith("    newest")}
    names = (set(latest) - {"timestamp", "lat", "lng"}) | {"location"}
    assert names <= set(shown), shown
    assert shown["location"].startswith(f"{latest['lat']:.5f}, {latest['lng']:.5f} ")
    assert shown["shiftState"].split() == [latest["shiftState"], "at", latest["timestamp"]]
    assert row("newest record", latest["timestamp"], 4) in values


def test_inspect_trip_prints_the_index_item_and_the_archive(processed: Processed) -> None:
    trip = indexed_trips(processed)[0]
    by_date = worker("inspect", "trip", trip["tripId"], env=processed.env.environ)
    by_vehicle = worker(
        "inspect", "trip", trip["tripId"], "--vehicle", trip["pseudoVin"], env=processed.env.environ
    )
    assert by_date.returncode == 0 and by_date.stdout == by_vehicle.stdout, by_date.stderr + by_vehicle.stderr
    body = processed.env.clients.s3.get_object(
        Bucket=processed.env.settings.archive_bucket, Key=trip["s3Key"]
    )
    crumbs = orjson.loads(gzip.decompress(body["Body"].read()))
    out = by_date.stdout
    assert f"archived, ended by {trip['endReason']}" in out
    assert f"{trip['s3Key']}: {len(crumbs)} breadcrumbs\n" in out
    assert crumbs[0]["timestamp"] in out and crumbs[-1]["timestamp"] in out


def test_inspect_trail_prints_the_points_the_live_map_reads(processed: Processed) -> None:
    trip = indexed_trips(processed)[0]
    body = processed.env.clients.s3.get_object(
        Bucket=processed.env.settings.archive_bucket, Key=trip["s3Key"]
    )
    rows = orjson.loads(gzip.decompress(body["Body"].read()))
    result = worker(
        "inspect", "trail", trip["pseudoVin"], "--from", trip["startTime"], "--to", trip["endTime"],
        env=processed.env.environ,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"trail of {trip['pseudoVin']}  {trip['startTime']} -> {trip['endTime']}"
    assert lines[1].split()[:2] == ["points", str(len(rows))]
    # The same rows as the archive: every located crumb of the span, in time order.
    assert [line.split()[0] for line in lines[2:]] == [r["timestamp"] for r in rows]
    assert f"{rows[-1]['lat']:.5f}, {rows[-1]['lng']:.5f}" in lines[-1]
    backwards = worker(
        "inspect", "trail", trip["pseudoVin"], "--from", trip["endTime"], "--to", trip["startTime"],
        env=processed.env.environ,
    )  # fmt: skip
    assert_one_line_error(backwards, "inspect")


def inspect_requests(
    processed: Processed, trip_id: str
) -> tuple[subprocess.CompletedProcess[str], Counter[tuple[str, str]]]:
    """``inspect trip``, and the requests the local AWS served meanwhile."""
    processed.env.aws.app.reset_counts()
    result = worker("inspect", "trip", trip_id, env=processed.env.environ)
    return result, Counter(processed.env.aws.app.requests)


def test_inspect_trip_answers_in_at_most_two_requests(processed: Processed) -> None:
    """The id names the vehicle: no index query by date, no scan of trip-state."""
    archived, made = inspect_requests(processed, indexed_trips(processed)[0]["tripId"])
    assert archived.returncode == 0 and "archived" in archived.stdout
    assert made == Counter({("dynamodb", "GetItem"): 1, ("s3", "GetObject"): 1})  # index item, archive
    table = processed.env.settings.table_names["trip-state"]
    running = [i for i in processed.env.clients.dynamodb.scan(TableName=table)["Items"] if "tripId" in i]
    result, made = inspect_requests(processed, running[0]["tripId"]["S"])
    assert result.returncode == 0 and "running, not archived yet" in result.stdout
    assert made == Counter({("dynamodb", "GetItem"): 2})  # trips-index (absent), trip-state


def test_inspect_trip_finds_a_running_trip_and_refuses_unknown_ones(processed: Processed) -> None:
    table = processed.env.settings.table_names["trip-state"]
    running = [i for i in processed.env.clients.dynamodb.scan(TableName=table)["Items"] if "tripId" in i]
    assert running
    result = worker("inspect", "trip", running[0]["tripId"]["S"], env=processed.env.environ)
    assert result.returncode == 0 and "running, not archived yet" in result.stdout
    unknown = "trip_20250101_000000_" + "ab" * 16
    missing = worker("inspect", "trip", unknown, env=processed.env.environ)
    assert f"no trip {unknown}" in assert_one_line_error(missing, "inspect")
    short = worker("inspect", "trip", "trip_20250101_000000_abcdef", env=processed.env.environ)
    assert "32 lowercase hex" in assert_one_line_error(short, "inspect")
    wrong = worker(
        "inspect", "trip", running[0]["tripId"]["S"], "--vehicle", "f" * 32, env=processed.env.environ
    )
    assert_one_line_error(wrong, "inspect")
    nobody = worker("inspect", "vehicle", "0" * 32, env=processed.env.environ)
    assert "no vehicle" in assert_one_line_error(nobody, "inspect")
