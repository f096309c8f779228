"""Where a record processor's CPU goes, all threads included: ``py-spy`` (the ``bench`` extra) around it.

pyinstrument (``bench.cpu --profile``) samples the main thread only; under the daemon most of a processor's
CPU is spent on its write threads, in botocore. ``py-spy record --gil`` samples whichever thread holds the
GIL, so its samples share out the processor's Python CPU time across every thread; ``--nonblocking``, so
the processor is not paused 200 times a second (its latency figures still move: compare them with a run
without ``--profile``).

``executable(directory)`` is a ``FLEET_KCL_EXECUTABLE`` that runs ``python -m worker process`` under
py-spy, one raw (collapsed stacks) file per processor; ``summary(directory)`` reads them back: the share
of the samples by where the leaf frame's code lives, and the share of those under an AWS API call by the
store that made it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

SAMPLES_PER_SECOND = 200

AREAS = (
    (
        "AWS SDK + HTTP (botocore, urllib3, http.client)",
        ("botocore/", "urllib3/", "http/", "email/", "socket.py"),
    ),
    ("KCL protocol (amazon_kclpy, json)", ("amazon_kclpy/", "json/")),
    ("planning (processors/, schemas/)", ("processors/", "schemas/")),
    ("worker glue (worker/)", ("worker/",)),
    ("threads (threading, concurrent.futures)", ("threading.py", "concurrent/")),
    ("retries (tenacity)", ("tenacity/",)),
    ("validation (pydantic)", ("pydantic/",)),
)
OTHER = "other"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):\d+\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None or Path(sys.executable).with_name("py-spy").exists()


def executable(directory: Path) -> str:
    """The record processor command: a script in ``directory`` that runs the processor under py-spy,
    which writes ``<directory>/processor-<pid>.raw`` when it exits. A script, because the daemon splits
    ``executableName`` on spaces and honours no quoting."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    script = directory / "processor.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(spy)} record --gil --nonblocking --rate {SAMPLES_PER_SECOND} --format raw"
        f" --output {shlex.quote(str(directory))}/processor-$$.raw"
        f" -- {shlex.quote(sys.executable)} -m worker process\n"
    )
    script.chmod(0o755)
    return str(script)


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) per frame, outermost first (the first field names the thread)."""
    out = []
    for frame in stack.split(";")[1:]:
        match = _FRAME.match(frame)
        if match:
            out.append((match["function"], match["file"]))
    return out


def _area(file: str) -> str:
    for name, markers in AREAS:
        if any(marker in file for marker in markers):
            return name
    return OTHER


def summary(directory: Path, processors: int, wait_s: float = 60.0) -> dict[str, Any]:
    """Shares of the processors' samples: by area of the leaf frame, and the AWS calls by store. py-spy
    writes its file once its processor has exited: wait up to ``wait_s`` for ``processors`` files."""
    deadline = time.monotonic() + wait_s
    while len(list(directory.glob("processor-*.raw"))) < processors and time.monotonic() < deadline:
        time.sleep(0.5)
    by_area: Counter[str] = Counter()
    by_store: Counter[str] = Counter()
    total = 0
    for path in sorted(directory.glob("processor-*.raw")):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = _frames(stack)
            if not frames:
                continue
            total += n
            by_area[_area(frames[-1][1])] += n
            calls = [i for i, (function, file) in enumerate(frames) if "botocore/client.py" in file]
            if calls:
                callers = [f for f, file in frames[: calls[0]] if "/stores/" in file]
                by_store[callers[0].split(".")[0] if callers else "other callers"] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "by_area": {area: n / total for area, n in by_area.most_common()},
        "aws_calls_by_store": {store: n / total for store, n in by_store.most_common()},
    }


def lines(profile: dict[str, Any]) -> list[str]:
    if not profile.get("samples"):
        return ["profile: no samples (py-spy wrote nothing)"]
    out = [f"where the processors' CPU went ({profile['samples']:,} samples of the GIL holder, all threads):"]
    out += [f"  {share:6.1%}  {area}" for area, share in profile["by_area"].items()]
    out.append("  under an AWS API call, by the store that made it:")
    out += [f"  {share:6.1%}  {store}" for store, share in profile["aws_calls_by_store"].items()]
    return out
