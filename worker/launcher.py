"""Runs and supervises the KCL MultiLangDaemon (Java); what it runs is ``worker.kcl_daemon``'s.

The daemon owns leases, balancing and checkpoints; it starts one ``python -m worker process`` child per
shard it holds. We forward SIGTERM/SIGINT to it for a graceful KCL shutdown (each processor checkpoints
what it applied) and exit 0 once it is done: a stop we were asked for is a success. In ``--drain`` mode we
stop it once every record that was in the stream at start has been processed and checkpointed
(``worker.shards``). A daemon hung in shutdown is killed with its record processors.

However we die, the daemon dies with us: it runs in a session of its own (so a terminal's Ctrl-C reaches
only us), which a SIGKILL of ``worker run`` (OOM killer, ``kill -9``, an orchestrator's timeout) would
otherwise leave running, consuming leases nobody supervises. So the JVM is started with Linux's
parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` between fork and exec; it survives the exec).
Its record processors cannot be given one (the JVM forks them from pool threads, and the signal follows
the thread that forked, not the process): each watches its parent itself
(``worker.kcl_daemon.exit_with_daemon``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from worker.aws import AwsClients, local_credentials_env
from worker.config import Settings
from worker.health import DAEMON, Heartbeat, clear
from worker.kcl_daemon import daemon_command, write_daemon_files
from worker.logs import LOG_PATH_ENV, event
from worker.shards import drain_targets, drained

log = logging.getLogger(__name__)

STOPPED_BY_SIGTERM = frozenset({0, 143, -signal.SIGTERM})
"""How the JVM exits after SIGTERM (its shutdown hook ran the KCL's graceful shutdown): 128 + 15."""


def share_stderr() -> Path | None:
    """Let the record processors write their log lines straight to our stderr.

    When stderr is a plain file, switch it to append mode first: otherwise each writer keeps its own
    offset and lines overwrite each other.
    """
    own_stderr = Path(f"/proc/{os.getpid()}/fd/2")
    if not own_stderr.exists():
        return None
    if stat.S_ISREG(os.fstat(2).st_mode):
        fcntl.fcntl(2, fcntl.F_SETFL, fcntl.fcntl(2, fcntl.F_GETFL) | os.O_APPEND)
    return own_stderr


PR_SET_PDEATHSIG = 1
"""``<linux/prctl.h>``: the signal a process gets when the thread that forked it dies."""


def die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child SIGKILL when we die (Linux; None elsewhere, where the daemon is
    left to its own shutdown). Everything it needs is looked up before the fork: between fork and exec
    the child only makes the two system calls."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)  # the daemon would outlive us: better not to start it
        if os.getppid() != parent:
            os._exit(126)  # we died between the fork and the prctl: no signal will come

    return preexec


def daemon_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(local_credentials_env(settings))
    env.setdefault("AWS_REGION", settings.region)
    shared = share_stderr()
    if shared is not None:
        env[LOG_PATH_ENV] = str(shared)
    return env


def run(settings: Settings, drain: bool = False, timeout: float | None = None) -> int:
    """Run the daemon until it exits, a signal arrives, the drain completes or the timeout passes."""
    clients = AwsClients(settings)
    targets = drain_targets(settings, clients) if drain else {}
    clear(settings.heartbeat_path)
    heartbeat = Heartbeat(settings.heartbeat_path, DAEMON)
    with tempfile.TemporaryDirectory(prefix="fleet-ingest-kcl-") as tmp:
        files = write_daemon_files(settings, Path(tmp))
        started = time.monotonic()
        stopping = threading.Event()
        daemon: subprocess.Popen[bytes] | None = None

        def forward(signum: int, _frame: FrameType | None) -> None:
            event(log, "daemon_stopping", signal=signal.Signals(signum).name)
            stopping.set()
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)

        # Handlers first: a SIGTERM while the daemon starts must still stop it, not orphan it.
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            # A session of its own: a terminal's Ctrl-C reaches only us, and we stop the daemon gracefully.
            # Popen from this (the main) thread: the parent-death signal follows the forking thread.
            daemon = subprocess.Popen(
                daemon_command(files),
                env=daemon_environment(settings),
                stdout=sys.stderr,
                start_new_session=True,
                preexec_fn=die_with_this_process(),  # noqa: PLW1509 - only prctl and getppid run in it
            )
            event(log, "daemon_started", pid=daemon.pid, drain=drain, shards=len(targets))
            if stopping.is_set():
                daemon.send_signal(signal.SIGTERM)
            code = _supervise(
                settings, clients, daemon, heartbeat, targets if drain else None, started, timeout, stopping
            )
            if stopping.is_set() and code in STOPPED_BY_SIGTERM:
                event(log, "daemon_stopped", code=code)
                return 0  # a stop we were asked for, done: success (ECS, systemd and shells expect 0)
            return code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if daemon is not None:
                _stop(daemon, settings)
            heartbeat.stop()


JVM_SHUTDOWN_MARGIN_SECONDS = 15.0


def stop_bound_seconds(settings: Settings) -> float:
    """How long a stopping daemon may take: the processors' grace, plus the JVM's own shutdown."""
    return settings.kcl_shutdown_grace_millis / 1000 + JVM_SHUTDOWN_MARGIN_SECONDS


def _supervise(
    settings: Settings,
    clients: AwsClients,
    daemon: subprocess.Popen[bytes],
    heartbeat: Heartbeat,
    targets: dict[str, str] | None,
    started: float,
    timeout: float | None,
    stopping: threading.Event,
) -> int:
    stop_started: float | None = None
    while True:
        code = daemon.poll()
        if code is not None:
            event(log, "daemon_exited", code=code)
            return code
        heartbeat.beat()
        if targets is not None and drained(settings, clients, targets):
            event(log, "drained", seconds=round(time.monotonic() - started, 1))
            return 0
        if timeout is not None and time.monotonic() - started > timeout:
            event(log, "timeout", logging.ERROR, seconds=timeout)
            return 124
        if stopping.is_set():
            stop_started = stop_started or time.monotonic()
            if time.monotonic() - stop_started > stop_bound_seconds(settings):
                # A JVM hung in shutdown: end it, and the processors it started, before the
                # orchestrator's SIGKILL takes us all.
                event(log, "daemon_killed", logging.ERROR, seconds=stop_bound_seconds(settings))
                _kill_session(daemon)
                return KILLED
        time.sleep(0.5)


KILLED = 128 + signal.SIGKILL
"""Exit status after the daemon had to be killed (as a shell reports a SIGKILL)."""


def _kill_session(daemon: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemon's session: the JVM and its record processors (they ignore SIGTERM)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGKILL)
    daemon.wait()


def _stop(daemon: subprocess.Popen[bytes], settings: Settings) -> None:
    if daemon.poll() is not None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(stop_bound_seconds(settings))
    except subprocess.TimeoutExpired:
        _kill_session(daemon)
