"""Planning is pure: nothing in ``processors/`` imports AWS SDKs or the worker (``schemas`` <- ``processors``
<- ``worker``). The ports (``processors/ports.py``) are how planning reaches I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FORBIDDEN = ("boto3", "botocore", "mypy_boto3", "worker")


def imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def forbidden_imports(package: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / package).glob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for name in imported(ast.parse(path.read_text(), relative)):
            sdk_or_worker = name.split(".")[0] in FORBIDDEN or name.startswith("mypy_boto3")
            if sdk_or_worker:
                found.append((relative, name))
    return found


def test_processors_import_no_aws_sdk_and_no_worker() -> None:
    assert forbidden_imports("processors") == []


def test_schemas_import_no_aws_sdk_and_no_worker() -> None:
    assert forbidden_imports("schemas") == []


def test_the_check_sees_an_import_inside_a_function() -> None:
    tree = ast.parse("def f():\n    from botocore.exceptions import ClientError\n    import boto3\n")
    assert imported(tree) == ["botocore.exceptions", "boto3"]
