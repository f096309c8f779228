"""What a scenario's writes cost, read off the local AWS and /proc: write units by table, requests by
service, the size of the ``vehicle-state`` items, a process's CPU seconds."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.stage import Stage
from devtools.local_aws.limits import item_size

SIZE_BUCKETS = (256, 512, 768, 1024, 2048, 3072, 4096)
"""Upper bounds (bytes) of the item-size histogram; 1,024 is where a second write unit starts."""


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, from ``/proc/<pid>/stat`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def logical_tables(stage: Stage) -> dict[str, str]:
    """Physical table name -> the logical one (``vehicle-state``...), for the tables of ours."""
    return {physical: logical for logical, physical in stage.settings.table_names.items()}


def written_by_table(stage: Stage) -> dict[str, dict[str, int]]:
    """``dynamodb:<logical table>`` / ``s3:<bucket>`` / ``kcl:<table>`` (the daemon's lease and
    coordinator tables) -> requests, items, bytes, units."""
    ours = logical_tables(stage)
    out: dict[str, dict[str, int]] = {}
    for (service, resource), tally in stage.aws.app.written.items():
        if service == "dynamodb":
            name = f"dynamodb:{ours[resource]}" if resource in ours else f"kcl:{resource}"
        else:
            name = f"{service}:{resource}"
        out[name] = asdict(tally)
    return dict(sorted(out.items()))


def requests_by_operation(stage: Stage, minus: Counter[str] | None = None) -> dict[str, int]:
    made = Counter(f"{s}:{o}" for (s, o), n in stage.aws.app.requests.items() for _ in range(n))
    made.subtract(minus or Counter())
    return {name: n for name, n in sorted(made.items()) if n > 0}


def per_record(written: dict[str, dict[str, int]], requests: dict[str, int], records: int) -> dict[str, Any]:
    """Write units per record by table (ours; the daemon's tables apart), requests per record by service."""
    units = {
        name.split(":", 1)[1]: w["units"] / records
        for name, w in written.items()
        if name.startswith("dynamodb:")
    }
    kcl = {
        name.split(":", 1)[1]: w["units"] / records for name, w in written.items() if name.startswith("kcl:")
    }
    by_service: Counter[str] = Counter()
    for name, n in requests.items():
        by_service[name.split(":", 1)[0]] += n
    return {
        "write_units_by_table": units,
        "write_units": sum(units.values()),
        "kcl_write_units_by_table": kcl,
        "s3_puts": sum(w["units"] for name, w in written.items() if name.startswith("s3:")) / records,
        "s3_bytes": sum(w["bytes"] for name, w in written.items() if name.startswith("s3:")) / records,
        "requests_by_service": {s: n / records for s, n in sorted(by_service.items())},
    }


def _sizes(stage: Stage, logical: str) -> list[int]:
    table = stage.settings.table_names[logical]
    sizes: list[int] = []
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = stage.clients.dynamodb.scan(**kwargs)
        sizes += [item_size(item) for item in page.get("Items", [])]
        if "LastEvaluatedKey" not in page:
            return sizes
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def stored(stage: Stage) -> dict[str, dict[str, int]]:
    """Logical table -> items and bytes stored at the end of the run (what storage is billed on, before
    DynamoDB's 100 bytes of overhead per item)."""
    out = {}
    for logical in stage.settings.table_names:
        sizes = _sizes(stage, logical)
        out[logical] = {"items": len(sizes), "bytes": sum(sizes)}
    return out


def item_sizes(stage: Stage, logical: str = "vehicle-state") -> dict[str, Any]:
    """Histogram of the table's item sizes (DynamoDB's rules) as stored at the end of the run."""
    sizes = _sizes(stage, logical)
    histogram: Counter[str] = Counter()
    for size in sizes:
        bound = next((b for b in SIZE_BUCKETS if size <= b), None)
        histogram[f"<= {bound}" if bound else f"> {SIZE_BUCKETS[-1]}"] += 1
    ordered = sorted(sizes)
    return {
        "items": len(sizes),
        "mean_bytes": sum(sizes) / len(sizes) if sizes else None,
        "p50_bytes": ordered[len(ordered) // 2] if sizes else None,
        "max_bytes": ordered[-1] if sizes else None,
        "over_1kb": sum(s > 1024 for s in sizes),
        "histogram": {
            label: histogram[label]
            for label in [*(f"<= {b}" for b in SIZE_BUCKETS), f"> {SIZE_BUCKETS[-1]}"]
            if histogram[label]
        },
    }
