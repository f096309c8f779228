"""The README stays an introduction, and no link in it or in docs/ points nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from bench import capacity, report

ROOT = Path(__file__).parent.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text())
    slugs = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", text, re.M):
        slugs.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return slugs


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_readme_is_an_introduction_not_a_manual() -> None:
    assert len((ROOT / "README.md").read_text()) <= 15_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} points to no file"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: {link}: no such heading"


def test_the_capacity_model_is_what_the_committed_results_give() -> None:
    """docs/capacity.md is generated: hand edits, or results committed without regenerating it, fail here."""
    results = orjson.loads((ROOT / "bench" / "results" / "latest.json").read_bytes())
    assert (ROOT / "docs" / "capacity.md").read_text() == capacity.render(results)


def test_the_committed_results_carry_every_issue_target_with_a_true_verdict() -> None:
    results = orjson.loads((ROOT / "bench" / "results" / "latest.json").read_bytes())
    assert set(results["targets"]) == set(report.TARGETS)
    assert results["targets"] == report.targets(results)
    for name in (
        "live_write_units_native",
        "live_write_units_tesla",
        "live_p99_s_native",
        "live_p99_s_tesla",
    ):
        assert results["live"][name.rsplit("_", 1)[1]]["ours"]["settings"], (
            f"{name}: not at recorded settings"
        )


def test_the_readme_states_the_cost_capacity_md_gives() -> None:
    """The README's `make bench` item quotes the committed results as capacity.md prices them."""
    results = orjson.loads((ROOT / "bench" / "results" / "latest.json").read_bytes())
    ours, naive = capacity.peers(results)
    readme = (ROOT / "README.md").read_text()
    start = readme.index("- `make bench`")
    item = " ".join(readme[start : readme.index("\n- ", start)].split())
    assert f"{ours['native'].write_units:.2f} DynamoDB write units per record" in item
    assert capacity.usd(capacity.bill(1_000_000, ours["native"]).total) in item
    assert capacity.usd(capacity.bill(1_000_000, naive).total) in item
