"""Structured logs: JSON lines, never a VIN-shaped string, whatever carries it."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import AwsEnv
from tests.support.harness import ProcessorHarness, fixture, shard_records
from worker.logs import REDACTED, configure_logging, event, redact

VIN = "5YJ3E1EA7KF317000"
PSEUDO_VIN = "4f0c9a1e2b3c4d5e6f708192a3b4c5d6"
SEQUENCE = "49658342385740139468462399383740982335410028945127276546"
VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """Logging configured as the worker does it, into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer)
    yield buffer
    root.handlers[:], root.level = saved


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines()]


log = logging.getLogger("tests.logs")


def test_a_vin_in_the_message_is_redacted(logged: io.StringIO) -> None:
    log.warning("vehicle %s misbehaves; vin=%s, trip_%s", VIN, VIN.lower(), VIN)
    (line,) = lines(logged)
    assert VIN not in logged.getvalue().upper()
    assert line["event"] == f"vehicle {REDACTED} misbehaves; vin={REDACTED}, trip_{REDACTED}"
    assert line["level"] == "WARNING" and line["logger"] == "tests.logs"


def test_a_vin_in_fields_at_any_depth_and_in_keys_is_redacted(logged: io.StringIO) -> None:
    event(
        log,
        "nested",
        detail={"vehicles": [{"id": VIN}, (VIN.lower(), 1)], VIN: "as a key"},
        tags={f" {VIN} "},
        path=Path(f"/tmp/{VIN}.json"),
        error=ValueError(f"bad vin {VIN}"),
        payload=f"{VIN}".encode(),
        digits=12345678901234567,
    )
    (line,) = lines(logged)
    assert VIN not in logged.getvalue().upper() and "12345678901234567" not in logged.getvalue()
    assert line["detail"] == {"vehicles": [{"id": REDACTED}, [REDACTED, 1]], REDACTED: "as a key"}
    assert line["tags"] == [f" {REDACTED} "]
    assert line["path"] == f"/tmp/{REDACTED}.json"
    assert line["error"] == f"bad vin {REDACTED}"
    assert line["payload"] == f"b'{REDACTED}'"
    assert line["digits"] == REDACTED


def test_a_vin_in_an_exception_and_its_traceback_is_redacted(logged: io.StringIO) -> None:
    try:
        raise KeyError(f"no vehicle {VIN.lower()}")
    except KeyError:
        log.exception("lookup_failed", extra={"fields": {"reason": "missing"}})
    (line,) = lines(logged)
    assert "Traceback" in line["exception"] and REDACTED in line["exception"]
    assert VIN not in logged.getvalue().upper()
    assert line["reason"] == "missing"


def test_pseudo_vins_shard_ids_sequence_numbers_and_trip_ids_pass(logged: io.StringIO) -> None:
    passing: dict[str, Any] = {
        "pseudoVin": PSEUDO_VIN,
        "shard": "shardId-000000000001",
        "sequenceNumber": SEQUENCE,
        "tripId": "trip_20250305_143201_4f0c9a",
        "at": "2025-03-05T14:32:01.000Z",
        "eighteen": "ABCDEFGH123456789J",
        "sixteen": "ABCDEFGH12345678",
        "millisBehindLatest": 1234567,
        "bigNumber": 123456789012345678,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
    }
    event(log, "batch", **passing)
    (line,) = lines(logged)
    assert {key: line[key] for key in passing} == passing
    assert REDACTED not in logged.getvalue()


@given(
    vin=st.text(VIN_ALPHABET + VIN_ALPHABET.lower(), min_size=17, max_size=17),
    before=st.text(min_size=0, max_size=8).map(lambda s: s + " "),
    after=st.text(min_size=0, max_size=8).map(lambda s: "/" + s),
)
def test_any_standalone_vin_shaped_token_is_redacted(vin: str, before: str, after: str) -> None:
    redacted = redact(before + vin + after)
    assert vin not in redacted and REDACTED in redacted


def test_logs_never_reach_stdout(logged: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    event(log, "somewhere", shard="shardId-000000000000")
    assert capsys.readouterr().out == ""
    assert lines(logged)[0]["event"] == "somewhere"


def test_the_batch_line_carries_what_an_operator_needs(aws_env: AwsEnv) -> None:
    records = shard_records(fixture("fleet-small.jsonl")[:200])
    harness = ProcessorHarness(aws_env.environ)
    harness.initialize()
    harness.process(records, millis_behind=4200)
    harness.process([])  # caught up: every record settles, so the stop has something to checkpoint
    harness.shutdown_requested()
    assert harness.close() == 0
    logs = harness.logs()
    # A second line, if any, is the empty poll's flush (what the exact machine completed): records 0.
    batch, *flushes = [line for line in logs if line["event"] == "batch"]
    assert all(f["records"] == 0 and f["writes"] > 0 for f in flushes)
    assert batch["level"] == "INFO" and batch["shard"] == "shardId-000000000000"
    assert batch["records"] == 200 and batch["applied"] + batch["deadLetters"] == 200
    assert batch["vehicles"] > 0 and batch["writes"] > 0
    assert batch["millisBehindLatest"] == 4200 and batch["durationMs"] > 0
    assert {"breadcrumbs", "tripsArchived", "invalidCoordinates"} <= set(batch)
    events = [line["event"] for line in logs]
    assert events.index("initialize") < events.index("batch") < events.index("shutdown_requested")
    assert "checkpoint" in events
