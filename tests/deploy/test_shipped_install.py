"""What ships is the worker alone: ``worker``, ``processors`` and ``schemas`` import and run without the
``dev`` extra, and none of them imports the development tools, the tests or the benchmarks.

Three checks, cheapest first: the imports of every shipped module, read from its source (AST); every
shipped module imported in a subprocess where the development packages cannot be imported; and (marked
``slow``) a fresh virtualenv with ``pip install .[kcl-local]`` alone.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
SHIPPED = ("worker", "processors", "schemas")
DEVELOPMENT = (
    "devtools",
    "tests",
    "bench",
    "moto",
    "hypercorn",
    "pytest",
    "hypothesis",
    "psutil",
    "matplotlib",
)
"""The checkout's own development packages and what only the dev and bench extras install."""


def shipped_sources() -> list[Path]:
    return sorted(path for package in SHIPPED for path in (ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (a lazy import in a function counts)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_nothing_shipped_imports_development_code() -> None:
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in shipped_sources()
        for module in imported_modules(path)
        if module.split(".")[0] in DEVELOPMENT
    }
    assert not offending


def test_the_layers_point_one_way() -> None:
    """``schemas`` <- ``processors`` <- ``worker``."""
    below = {"schemas": {"processors", "worker"}, "processors": {"worker"}}
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in shipped_sources()
        for module in imported_modules(path)
        if module.split(".")[0] in below.get(path.relative_to(ROOT).parts[0], set())
    }
    assert not offending


def test_every_package_is_shipped_and_nothing_else() -> None:
    """The wheel's packages are found by pattern, not listed: a new subpackage (e.g. worker.cli) ships too."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for init in ROOT.glob("**/__init__.py")
        if not init.relative_to(ROOT).parts[0].startswith(".")
    }
    shipped = {name for name in packages if any(fnmatch.fnmatchcase(name, pattern) for pattern in include)}
    assert {"worker", "worker.cli", "processors", "schemas"} <= shipped
    assert {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in shipped_sources()} == shipped
    assert not {name for name in shipped if name.split(".")[0] not in SHIPPED}


# Imports every shipped module, then runs ``python -m worker --help``, with DEVELOPMENT unimportable.
WITHOUT_DEVELOPMENT = textwrap.dedent(
    """
    import importlib, pkgutil, runpy, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is not installed in the image", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    count = 0
    for package in ("worker", "processors", "schemas"):
        importlib.import_module(package)
        for module in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
            if not module.name.endswith(".__main__"):  # that one runs: it is the last step
                importlib.import_module(module.name)
                count += 1
    print("imported", count, "modules", file=sys.stderr)
    sys.argv = ["python -m worker", "--help"]
    runpy.run_module("worker", run_name="__main__", alter_sys=True)
    """
)


def run_without_development(python: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-c", WITHOUT_DEVELOPMENT, ",".join(DEVELOPMENT)],
        cwd=cwd,  # not the checkout: its devtools/, tests/ and bench/ must not be on the path
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def assert_runs(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: python -m worker"), result.stdout
    assert "Commands by audience. runtime: run, process, health; operator:" in " ".join(result.stdout.split())


def test_every_shipped_module_imports_and_the_worker_runs_without_the_development_packages(
    tmp_path: Path,
) -> None:
    result = run_without_development(sys.executable, tmp_path)
    assert_runs(result)
    assert "imported" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fresh_install_without_the_dev_extra_imports_and_runs(tmp_path: Path) -> None:
    """What the image does, minus Docker: a virtualenv with ``pip install .[kcl-local]`` and nothing else."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # The image's build context (.dockerignore): a clean copy, so no stale build/ of the checkout ships.
    source = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        copy = source / name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, copy)
    for package in SHIPPED:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{source}[kcl-local]"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=780,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert not any(f"\n{name}==" in f"\n{listed}" for name in ("moto", "hypercorn", "pytest", "hypothesis"))
    assert_runs(run_without_development(python, tmp_path))
    assert (
        subprocess.run(
            [python, "-c", "import devtools"], cwd=tmp_path, capture_output=True, check=False
        ).returncode
        != 0
    ), "devtools must not be installed"
