"""Running ``python -m worker`` (or ``devtools``) as an operator would, from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def worker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, package: str = "worker"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", package, *args],
        env=env if env is not None else dict(os.environ),
        cwd=ROOT,  # devtools runs from the checkout only
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
