"""``kill -9`` of ``python -m worker run`` ends the daemon and its record processors: nothing keeps
consuming leases unsupervised.

The daemon is a stand-in for the JVM (``JAVA`` names the binary ``worker run`` starts): it starts the real
``python -m worker process`` as the MultiLangDaemon does, as its own child, and holds nothing but the
processor's stdin, which it passes on from ``worker run`` (held open by the test), so that only the
processor's own watch of its parent can end it. The real JVM gets the same parent-death signal: it is
set between fork and exec and survives the exec, whatever the binary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import AwsEnv
from tests.support.cli import ROOT

FAKE_DAEMON = """#!{python}
import os, shlex, subprocess, sys, time

path = sys.argv[sys.argv.index("--properties-file") + 1]
properties = dict(line.split(" = ", 1) for line in open(path).read().splitlines())
processor = subprocess.Popen(shlex.split(properties["executableName"]), stdout=subprocess.DEVNULL)
with open(os.environ["FAKE_DAEMON_PIDS"] + ".tmp", "w") as pids:
    pids.write(f"{{os.getpid()}} {{processor.pid}}")
os.rename(os.environ["FAKE_DAEMON_PIDS"] + ".tmp", os.environ["FAKE_DAEMON_PIDS"])
while True:
    time.sleep(1)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.1)
    return False


def test_kill_9_of_worker_run_ends_the_daemon_and_its_record_processors(
    aws_env: AwsEnv, tmp_path: Path
) -> None:
    daemon = tmp_path / "java"
    daemon.write_text(FAKE_DAEMON.format(python=sys.executable))
    daemon.chmod(0o755)
    pids_file = tmp_path / "pids"
    env = {**aws_env.environ, "JAVA": str(daemon), "FAKE_DAEMON_PIDS": str(pids_file)}
    env["FLEET_HEARTBEAT_PATH"] = str(tmp_path / "heartbeat")
    env.pop("FLEET_KCL_EXECUTABLE", None)  # the real record processor
    run = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,  # held open: the processor's stdin never closes by itself
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    daemon_pid = processor_pid = 0
    try:
        assert wait_for(pids_file.exists, 60), "worker run never started the daemon"
        daemon_pid, processor_pid = (int(pid) for pid in pids_file.read_text().split())
        processor = psutil.Process(processor_pid)
        # Started, and past the import of the worker (its watch starts before it reads stdin).
        assert wait_for(lambda: any("worker" in part for part in processor.cmdline()), 10)
        assert wait_for(lambda: processor.num_threads() >= 2, 30), "the processor's watch thread"
        assert alive(daemon_pid) and alive(processor_pid)

        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)

        assert wait_for(lambda: not alive(daemon_pid), 5), "the daemon outlived worker run"
        assert wait_for(lambda: not alive(processor_pid), 5), "a record processor outlived its daemon"
    finally:
        for pid in (run.pid, daemon_pid, processor_pid):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert run.stdin is not None
        run.stdin.close()
