"""The benchmark's results: one JSON document (tracked over time), a table, and a PNG chart."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

TARGETS = {
    "cpu_records_per_second": 100_000,
    "cpu_ratio": 10.0,
    "requests_per_record": 0.35,
    "e2e_ratio": 5.0,
}


def environment() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit or None,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def _ratio(ours: float, naive: float) -> float | None:
    return ours / naive if naive else None


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cpu, replay, e2e = results["cpu"], results["replay"], results["e2e"]
    reached = {
        "cpu_records_per_second": cpu["ours_records_per_second"],
        "cpu_ratio": cpu["ratio"],
        "requests_per_record": replay["ours"]["per_record"]["requests"],
        "e2e_ratio": e2e["ratio"],
    }
    return {
        name: {
            "goal": goal,
            "reached": reached[name],
            "met": reached[name] is not None
            and (reached[name] <= goal if name == "requests_per_record" else reached[name] >= goal),
        }
        for name, goal in TARGETS.items()
    }


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _lag(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.1f} s"


def table(results: dict[str, Any]) -> str:
    env, config = results["environment"], results["config"]
    cpu, replay, e2e, met = results["cpu"], results["replay"], results["e2e"], results["targets"]
    ours, naive = replay["ours"], replay["naive"]
    po, pn = ours["per_record"], naive["per_record"]
    eo, en = e2e["ours"], e2e["naive"]

    def verdict(name: str) -> str:
        target = met[name]
        sense = "<=" if name == "requests_per_record" else ">="
        return f"{'met' if target['met'] else 'MISSED'} (goal {sense} {target['goal']:g})"

    rows: list[tuple[str, str, str, str, str]] = [
        ("", "ours", "naive", "ratio", "target (issue)"),
        (f"CPU path, records/s on one core ({config['cpu_fleet']})", "", "", "", ""),
        (
            "  decode -> pseudonymize -> plan -> request payloads",
            _num(cpu["ours_records_per_second"]),
            _num(cpu["naive_records_per_second"]),
            f"{cpu['ratio']:.1f}x",
            f"{verdict('cpu_records_per_second')}; ratio {verdict('cpu_ratio')}",
        ),
        (
            "  us/record (ours: decode+pseudonymize+coalesce / trips / payloads)",
            " / ".join(f"{cpu['ours_us_per_record'][k]:.1f}" for k in ("decode", "trips", "serialize")),
            f"{cpu['naive_us']:.1f} us",
            "",
            "",
        ),
        (
            f"1 Hz replay through the record processor ({config['replay_fleet']}, "
            f"{config['batch_seconds']:g} s batches)",
            "",
            "",
            "",
            "",
        ),
        (
            "  DynamoDB + S3 requests / record",
            f"{po['requests']:.3f}",
            f"{pn['requests']:.3f}",
            f"{pn['requests'] / po['requests']:.1f}x fewer",
            verdict("requests_per_record"),
        ),
        ("  KMS requests / record", f"{po['kms_requests']:.4f}", f"{pn['kms_requests']:.3f}", "", ""),
        (
            "  written bytes / record (DynamoDB items + S3 bodies)",
            f"{po['write_bytes']:.0f}",
            f"{pn['write_bytes']:.0f}",
            f"{pn['write_bytes'] / po['write_bytes']:.1f}x less",
            "",
        ),
        (
            "  DynamoDB write units / record",
            f"{po['dynamodb_write_units']:.3f}",
            f"{pn['dynamodb_write_units']:.3f}",
            f"{pn['dynamodb_write_units'] / po['dynamodb_write_units']:.1f}x fewer",
            "",
        ),
        ("  S3 PUTs / 1,000 records", f"{po['s3_puts'] * 1000:.2f}", f"{pn['s3_puts'] * 1000:.2f}", "", ""),
        (
            "  processor CPU seconds / 1,000 records (incl. boto3)",
            f"{po['cpu_ms']:.2f}",
            f"{pn['cpu_ms']:.2f}",
            f"{pn['cpu_ms'] / po['cpu_ms']:.1f}x less",
            "",
        ),
        (
            "  processor peak RSS",
            f"{ours['peak_rss_bytes'] / 2**20:.0f} MB",
            f"{naive['peak_rss_bytes'] / 2**20:.0f} MB",
            "",
            "",
        ),
        (f"End to end, real MultiLangDaemon ({config['e2e']})", "", "", "", ""),
        (
            "  records/s applied (vehicle-state visible)",
            _num(eo["records_per_second"]),
            _num(en["records_per_second"]),
            f"{e2e['ratio']:.1f}x" if e2e["ratio"] else "-",
            verdict("e2e_ratio"),
        ),
        ("  lag PutRecords -> visible, p50", _lag(eo["lag_p50_s"]), _lag(en["lag_p50_s"]), "", ""),
        ("  lag PutRecords -> visible, p99", _lag(eo["lag_p99_s"]), _lag(en["lag_p99_s"]), "", ""),
        (
            "  records seen within the run",
            f"{eo['visible_share']:.0%}",
            f"{en['visible_share']:.0%}",
            "",
            "",
        ),
        (
            "  processor CPU seconds / 1,000 records",
            f"{eo['processor_cpu_ms_per_record']:.2f}",
            f"{en['processor_cpu_ms_per_record']:.2f}",
            "",
            "",
        ),
    ]
    data = [row for row in rows if any(row[1:])]
    widths = [max(len(row[i]) for row in data) for i in range(5)]
    lines = [
        f"fleet-ingest benchmark  {env['generated_at']}  commit {env['commit']}  "
        f"{env['cpus']} CPUs, load {env['load_average'][0]:.1f}",
    ]
    for label, *cells, target in rows:
        if not any(cells) and not target:
            lines.append(label)  # a section heading
            continue
        figures = "  ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths[1:4], strict=True))
        lines.append(f"{label:<{widths[0]}}  {figures}  {target}".rstrip())
    sweep = results["window_model"]
    lines.append(
        "our requests/record by batch window (modelled from the plans; "
        f"matches the replay at {config['batch_seconds']:g} s: {results['model_check']['matches']}): "
        + ", ".join(f"{w:g} s: {v:.2f}" for w, v in sorted((float(w), v) for w, v in sweep.items()))
    )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu, replay, e2e = results["cpu"], results["replay"], results["e2e"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    colours = ["#2b6cb0", "#c05621"]
    panels = [
        (
            axes[0],
            "CPU path, records/s on one core",
            [cpu["ours_records_per_second"], cpu["naive_records_per_second"]],
            "{:,.0f}",
        ),
        (
            axes[1],
            "End to end, records/s (real daemon)",
            [e2e["ours"]["records_per_second"], e2e["naive"]["records_per_second"]],
            "{:,.0f}",
        ),
        (
            axes[2],
            "DynamoDB + S3 requests / record (1 Hz replay)",
            [replay["ours"]["per_record"]["requests"], replay["naive"]["per_record"]["requests"]],
            "{:.2f}",
        ),
    ]
    for axis, title, values, label in panels:
        bars = axis.bar(["ours", "naive"], values, color=colours)
        axis.set_title(title, fontsize=10)
        axis.bar_label(bars, labels=[label.format(v) for v in values], fontsize=9)
        axis.margins(y=0.15)
        axis.spines[["top", "right"]].set_visible(False)
    env = results["environment"]
    fig.suptitle(
        f"fleet-ingest vs the naive peer  ({env['generated_at']}, commit {env['commit']})", fontsize=11
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
