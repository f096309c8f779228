"""Liveness through heartbeat files, for ``python -m worker health`` (the container's health check).

``FLEET_HEARTBEAT_PATH`` is a directory. While the Java daemon is alive the launcher touches ``daemon``
in it (every supervise tick, 0.5 s); each record processor creates a file named after its shard on
initialize, touches it after every batch it completed (the daemon delivers an empty batch every
``FLEET_KCL_IDLE_TIME_BETWEEN_READS_MILLIS`` even on a quiet shard) and removes it when it gives the
shard up (lease lost, shard ended, shutdown). So a task is healthy when its daemon beats and none of
its processors is stuck or crash-looping; a task that holds no lease (more tasks than shards) is
healthy too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from worker.logs import event

log = logging.getLogger(__name__)

DAEMON = "daemon"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class Heartbeat:
    """One heartbeat file. Never fails the caller: a heartbeat that cannot be written is logged once and
    shows as a stale or missing heartbeat, which is what the health check is for."""

    def __init__(self, directory: Path, name: str) -> None:
        safe = name if _SAFE_NAME.fullmatch(name) and name not in (".", "..") else "unnamed"
        self.path = directory / safe
        self._warned = False

    def start(self) -> None:
        """Create the file if it is missing, keeping the time of an existing one: a processor restarted
        for the same shard within one daemon's life that never completes a batch must go stale."""
        if not self.path.exists():
            self.beat()

    def beat(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as error:
            if not self._warned:
                self._warned = True
                event(
                    log, "heartbeat_failed", logging.WARNING, path=str(self.path), reason=type(error).__name__
                )

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def clear(directory: Path) -> None:
    """Remove heartbeats left by a previous run (a killed launcher, processors that never stopped)."""
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    reason: str


def check(directory: Path, max_age_seconds: float, now: float | None = None) -> Health:
    """Healthy iff the daemon's heartbeat is fresher than ``max_age_seconds`` and no shard's is older."""
    now = time.time() if now is None else now
    daemon = directory / DAEMON
    try:
        daemon_age = now - daemon.stat().st_mtime
    except OSError:
        return Health(
            False, f"unhealthy: no daemon heartbeat in {directory} (is `python -m worker run` running?)"
        )
    if daemon_age > max_age_seconds:
        return Health(
            False,
            f"unhealthy: the daemon's last heartbeat is {daemon_age:.0f}s old (max {max_age_seconds:g}s)",
        )
    shards: dict[str, float] = {}
    for path in directory.iterdir():
        if path.name != DAEMON:
            try:
                shards[path.name] = now - path.stat().st_mtime
            except OSError:
                continue  # removed meanwhile: that processor gave its shard up
    stuck = sorted((age, shard) for shard, age in shards.items() if age > max_age_seconds)
    if stuck:
        age, shard = stuck[-1]
        more = f" (and {len(stuck) - 1} more)" if len(stuck) > 1 else ""
        return Health(
            False,
            f"unhealthy: {shard} has completed no batch for {age:.0f}s (max {max_age_seconds:g}s): "
            f"its record processor is stuck{more}",
        )
    if not shards:
        return Health(True, f"healthy: daemon alive ({daemon_age:.1f}s ago), no shard lease held")
    oldest = max(shards.values())
    return Health(
        True,
        f"healthy: daemon alive ({daemon_age:.1f}s ago), {len(shards)} shard(s) processing, "
        f"oldest batch {oldest:.1f}s ago",
    )
