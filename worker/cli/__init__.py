"""``python -m worker``: the worker and its operator tools, one module per audience.

``worker.cli.runtime`` holds what the image runs (``run``, ``process``, ``health``), ``worker.cli.operator``
what an operator runs against a deployment. The development commands (local AWS, simulator, demo) are not
shipped: they live in ``devtools.cli`` (``python -m devtools``) and are built with the same parser and error
lines as these.

Command output goes to stdout; logs go to stderr as JSON lines. ``process`` is the exception: there,
stdout belongs to the KCL protocol and nothing else is ever written to it. Handlers only parse, call and
print; an error an operator can act on is one line on stderr (``explain``), a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from worker.config import Settings

Command = Callable[[argparse.Namespace, Settings], int]
AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]
"""Adds a command to a parser: name, handler, help. Returns the command's parser for its arguments."""
Register = Callable[[AddCommand], None]
"""An audience's commands: ``register(add)`` adds each of them."""

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Cli:
    prog: str
    description: str
    groups: Sequence[tuple[str, Register]]
    """(audience, its commands), in the order ``--help`` lists them."""
    protocol_commands: frozenset[str] = frozenset()
    """Commands whose errors must end them the way a protocol expects, not as a friendly line."""


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def iso_time(text: str) -> datetime:
    """An ISO 8601 argument; without a zone it is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line, like every other operator error (argparse prints its usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(cli: Cli) -> argparse.ArgumentParser:
    """The root parser with every group's commands; ``--help`` ends with the commands by audience."""
    root = _Parser(prog=cli.prog, description=cli.description)
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    audiences = []
    for audience, register in cli.groups:
        names: list[str] = []

        def add(name: str, handler: Command, help_: str, names: list[str] = names) -> argparse.ArgumentParser:
            parser = sub.add_parser(name, help=help_, description=help_)
            parser.set_defaults(handler=handler)
            names.append(name)
            return parser

        register(add)
        audiences.append(f"{audience}: {', '.join(names)}")
    root.epilog = f"Commands by audience. {'; '.join(audiences)}."
    return root


def run_cli(cli: Cli, argv: Sequence[str] | None) -> int:
    args = build_parser(cli).parse_args(argv)  # bad arguments: argparse's usage and message, exit 2
    handler: Command = args.handler
    if args.command in cli.protocol_commands:
        return handler(args, Settings())
    try:
        settings = Settings()
        from worker.logs import configure_logging

        configure_logging(settings.log_level)
        return handler(args, settings)
    except KeyboardInterrupt:
        return fail(f"{cli.prog} {args.command}", "interrupted", EXIT_INTERRUPTED)
    except Exception as error:
        message = explain(error)
        if message is None:
            raise
        return fail(f"{cli.prog} {args.command}", message, exit_code(error))


def worker_cli() -> Cli:
    from worker.cli import operator, runtime

    return Cli(
        prog="python -m worker",
        description="fleet-ingest: Kinesis telemetry -> DynamoDB/S3, run under the KCL MultiLangDaemon. "
        "Configuration comes from FLEET_* environment variables (see README).",
        groups=(("runtime", runtime.register), ("operator", operator.register)),
        protocol_commands=frozenset({"process"}),  # the daemon's child speaks the KCL protocol
    )


def parser() -> argparse.ArgumentParser:
    return build_parser(worker_cli())


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(worker_cli(), argv)


def fail(command: str, message: str, code: int = EXIT_FAILED) -> int:
    """One line on stderr, no traceback: an operator's mistake or an unreachable AWS is not a bug."""
    from worker.logs import redact

    sys.stderr.write(f"{command}: error: {redact(message)}\n")
    return code


def exit_code(error: Exception) -> int:
    """An ``OperatorError``'s own exit code (e.g. 6: ``PseudonymKeyMismatch``), else ``EXIT_FAILED``."""
    from processors.errors import OperatorError

    return error.exit_code if isinstance(error, OperatorError) else EXIT_FAILED


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
