"""The full-shard scenario's arithmetic (``bench.fullshard``) and how the capacity model prices it
(``bench.capacity``): what the figures are made of, not how fast anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import capacity, fullshard, spy

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_lag_that_grows_is_not_bounded_one_that_stays_is() -> None:
    assert fullshard.bounded([200, 900, 400, 300, 1100, 600])
    assert not fullshard.bounded([200, 900, 3_000, 6_000, 9_000, 12_000])
    assert fullshard.bounded([None, 250, None, 250, 0, 0]), "bins without a batch are left out"
    assert not fullshard.bounded([]), "never seen is not bounded"


def test_lag_bins_keep_each_bins_largest_figure() -> None:
    start = 1_000.0
    seen = [(start + 1, 10, 500), (start + 9, 10, 1_500), (start + 12, 10, 100), (start + 25, 10, None)]
    assert fullshard.lag_bins(seen, start, start + 30) == [1_500, 100, None]


def test_batches_are_read_from_the_processors_log_lines_in_the_window(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    lines = [
        {"ts": "2026-12-05T09:00:00.500Z", "event": "batch", "shard": "s-0", "records": 7,
         "millisBehindLatest": 0},
        {"ts": "2026-12-05T09:00:01.250Z", "event": "batch", "shard": "s-1", "records": 9,
         "millisBehindLatest": 250},
        {"ts": "2026-12-05T09:00:02.000Z", "event": "checkpoint", "shard": "s-0"},
        {"ts": "2026-12-05T09:00:09.000Z", "event": "batch", "shard": "s-0", "records": 5,
         "millisBehindLatest": 0},
    ]  # fmt: skip
    log.write_bytes(b"not json from the JVM\n" + b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    start = fullshard._epoch("2026-12-05T09:00:00.000Z")
    found = fullshard.batches(log, start, start + 5)
    assert found == {"s-0": [(start + 0.5, 7, 0)], "s-1": [(start + 1.25, 9, 250)]}


def test_a_missed_target_says_by_how_much() -> None:
    assert fullshard.verdict(fullshard._target(0.3, 0.25)) == "missed by 0.05 (20%)"
    assert fullshard.verdict(fullshard._target(0.2, 0.25)) == "met"
    assert fullshard.verdict(fullshard._target(900.0, 950.0, ">=")) == "missed by 50 (5%)"
    assert fullshard.verdict(fullshard._target(None, 2.0)) == "missed (never seen)"


def _run(processor_cpu_s: float, jvm_cpu_s: float, consumed: int, window_s: float) -> dict[str, Any]:
    shard = {
        "shard": "shardId-000000000000",
        "records_consumed": consumed,
        "records_per_second": consumed / window_s,
        "millis_behind_max": 250,
        "lag_bounded": True,
        "lag_p50_s": 1.2,
        "lag_p99_s": 2.4,
        "processor_cpu_seconds": processor_cpu_s,
        "processor_cpu_ms_per_record": processor_cpu_s * 1000 / consumed,
        "processor_peak_rss_bytes": 100 * 2**20,
        "cpu_ms_per_record": (processor_cpu_s + jvm_cpu_s) * 1000 / consumed,
    }
    return {
        "window_s": window_s,
        "per_shard": [shard],
        "jvm_cpu_seconds": jvm_cpu_s,
        "jvm_cpu_ms_per_record": jvm_cpu_s * 1000 / consumed,
        "jvm_peak_rss_bytes": 240 * 2**20,
        "write_units_per_record": 0.3,
        "targets": {
            "shardId-000000000000:lag_p99_s": fullshard._target(2.4, 2.0),
            "write_units_per_record": fullshard._target(0.3, fullshard.TODAY_WRITE_UNITS["native"]),
        },
    }


def test_compute_per_shard_follows_the_measured_cpu_and_memory() -> None:
    # 0.10 ms processor + 0.05 ms JVM a record: 800 records/s (80 % of a shard) take 0.12 vCPU, so a
    # 1-vCPU task at 60 % serves 5 shards; its memory is a processor and a fifth of the JVM.
    results = {"fullshard": {"runs": {"native": _run(12.0, 6.0, 120_000, 120.0)}}}
    (compute,) = capacity.full_shard(results).values()
    assert compute.processor_cpu_ms == pytest.approx(0.10)
    assert compute.jvm_cpu_ms == pytest.approx(0.05)
    assert compute.vcpu_per_shard == pytest.approx(0.12)
    assert compute.shards_per_task == pytest.approx(5.0)
    assert compute.memory_mb_per_shard == pytest.approx(100 + 240 / 5)


def test_the_bills_take_their_compute_from_the_full_shard_run_when_there_is_one() -> None:
    results = orjson.loads((ROOT / "bench" / "results" / "latest.json").read_bytes())
    results.pop("fullshard", None)
    before, _ = capacity.peers(results)
    assert "## Full shard" not in capacity.render(results)
    cheap = {**results, "fullshard": {"config": {}, "runs": {"native": _run(12.0, 6.0, 120_000, 120.0)}}}
    after, _ = capacity.peers(cheap)
    assert after["native"].processor_cpu_ms == pytest.approx(0.10)
    assert after["native"].write_units == before["native"].write_units, "only compute changes"
    tasks_before = capacity.bill(1_000_000, before["native"]).tasks
    tasks_after = capacity.bill(1_000_000, after["native"]).tasks
    assert tasks_after < tasks_before, "cheaper records, fewer tasks"
    document = capacity.render(cheap)
    assert "## Full shard (issue 23)" in document
    assert "| shards per 1-vCPU task at 60% CPU | 5.00 |" in document
    assert "missed: shardId-000000000000:lag_p99_s by 0.4 (20%)." in document, "write units are met"
    assert "- Write units per record, all shards: native 0.300 (<= 0.656)." in document


def test_a_profile_shares_the_samples_by_area_and_the_aws_calls_by_store(tmp_path: Path) -> None:
    """``bench.spy`` reads py-spy's raw stacks (``thread;frame (file:line);... count``) of every processor."""
    site = "/work/.venv/lib/python3.11/site-packages"
    call = f"BaseClient._make_api_call ({site}/botocore/client.py:1082)"
    send = f"HTTPConnection.send ({site}/http/client.py:1009)"
    apply = "DynamoVehicleState._apply (/work/worker/stores/dynamo_vehicle_state.py:53)"
    merge = "DynamoTrail.merge (/work/worker/stores/dynamo_trail.py:66)"
    plan = "TripPlanner.receive (/work/processors/trip_planner.py:249)"
    (tmp_path / "processor-1.raw").write_text(
        f"thread (1): write_0;{apply};{call};{send} 6\n"
        f"thread (2): write_1;{merge};{call};{send} 2\n"
        f"thread (3): MainThread;{plan} 2\n"
        "a line that is not a stack\n"
    )
    (tmp_path / "processor-2.raw").write_text(f"thread (4): MainThread;{plan} 10\n")
    profile = spy.summary(tmp_path, processors=2, wait_s=0)
    assert profile["samples"] == 20
    assert profile["by_area"] == {
        "planning (processors/, schemas/)": 0.6,
        "AWS SDK + HTTP (botocore, urllib3, http.client)": 0.4,
    }
    assert profile["aws_calls_by_store"] == {"DynamoVehicleState": 0.3, "DynamoTrail": 0.1}
    assert "   30.0%  DynamoVehicleState" in spy.lines(profile)
    assert spy.summary(tmp_path / "none", processors=1, wait_s=0) == {"samples": 0}


def test_the_profiled_processor_is_a_script_the_daemon_can_split_on_spaces(tmp_path: Path) -> None:
    command = spy.executable(tmp_path)
    assert " " not in command and Path(command).stat().st_mode & 0o111
    script = Path(command).read_text()
    assert "record --gil --nonblocking" in script and f"--output {tmp_path}/processor-$$.raw" in script
    assert script.rstrip().endswith("-m worker process")
