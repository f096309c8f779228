"""The Dockerfile, parsed statically: no Docker engine runs on our machines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, numbered by build stage."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        keyword = keyword.upper()
        stage += keyword == "FROM"
        instructions.append(Instruction(keyword, " ".join(args.split()), stage))
        pending = ""
    return instructions


DOCKER = parse_dockerfile(DOCKERFILE.read_text())
FINAL_STAGE = max(i.stage for i in DOCKER)
RUNTIME = [i for i in DOCKER if i.stage == FINAL_STAGE]


def only(keyword: str) -> Instruction:
    found = [i for i in RUNTIME if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {len(found)}"
    return found[0]


def healthcheck_options() -> tuple[dict[str, int], list[str]]:
    """(--interval and the like in seconds, the exec-form command) of the HEALTHCHECK."""
    options, _, command = only("HEALTHCHECK").args.partition(" CMD ")
    seconds = {
        name: int(value.rstrip("s"))
        for name, value in (option.lstrip("-").split("=") for option in options.split())
    }
    return seconds, json.loads(command)
