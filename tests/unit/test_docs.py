"""The docs stay a newcomer's hour: README plus docs prose within a word budget, every relative
link pointing at a file that exists and, for a Markdown page, at a heading it has.

docs/results.md is left out of the budget: it is the table bench/results_table.py generates from
bench/results/*.csv, not prose.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATED = {DOCS / "results.md"}
WORD_BUDGET = 15_000  # an hour at 250 words a minute (issue 21, item 9)

# [text](target) and ![alt](target); a target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose_pages() -> list[Path]:
    return [p for p in pages() if p not in GENERATED]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\W)|(?<=\W)_", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto: ... are not files of this repository
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: {dest.name} has no heading '#{anchor}'")
    return problems


def test_readme_and_docs_prose_fit_an_hours_read() -> None:
    counts = {
        p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").split())
        for p in prose_pages()
    }
    total = sum(counts.values())
    assert total <= WORD_BUDGET, (
        f"README + docs prose is {total} words, over the {WORD_BUDGET} budget: {counts}"
    )


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_checker_catches_a_missing_page_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n\n## Past one machine: Milvus\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md) [ok](a.md#past-one-machine-milvus) [ok](#here) [web](https://x.org/y.md)\n"
        "## Here\n[gone](missing.md) [bad](a.md#nowhere)\n```\n[in code](nope.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "a.md#nowhere: a.md has no heading '#nowhere'",
    ]


def test_architecture_links_every_page() -> None:
    linked = {Path(t.partition("#")[0]).name for t in links(DOCS / "architecture.md")}
    missing = {p.name for p in DOCS.glob("*.md")} - linked - {"architecture.md"}
    assert not missing, f"docs/architecture.md does not link {sorted(missing)}"
