"""Every relative link in README.md, CONTRIBUTING.md and docs/*.md resolves: the file
or folder exists, and an anchor names a heading of the target page (GitHub's slugs).

Links to the web are not fetched (no network in tests).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "CONTRIBUTING.md",
    *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")),
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _outside_code(text: str) -> list[str]:
    """The page's lines outside fenced blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed
    except ``-`` and ``_``, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in _outside_code(path.read_text(encoding="utf-8")):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base, n = slug(m.group(1)), 0
            name = base
            while name in found:  # a repeated heading gets -1, -2, ...
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links(page: str) -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(_outside_code((REPO / page).read_text(encoding="utf-8")), 1):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                out.append((number, target))
    return out


LINKS = [(page, target) for page in PAGES for _, target in links(page)]


def test_the_pages_have_links():
    assert len(LINKS) >= 30 and any(page.startswith("docs/") for page, _ in LINKS)


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_every_relative_link_resolves(page, target):
    path_part, _, anchor = target.partition("#")
    source = REPO / page
    resolved = (source.parent / path_part).resolve() if path_part else source
    relative = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else None
    assert resolved.exists(), f"{page}: {target} -> {resolved} does not exist"
    if anchor:
        assert resolved.suffix == ".md", f"{page}: {target}: an anchor into a non-Markdown file"
        assert anchor in anchors(resolved), (
            f"{page}: {target}: no heading with anchor #{anchor} in {relative}"
        )


def test_slugs_follow_github():
    assert slug("Shards (`bench_shards.py`)") == "shards-bench_shardspy"
    assert slug("The test suite (README's test command)") == "the-test-suite-readmes-test-command"
    assert slug("A complete example: an objective") == "a-complete-example-an-objective"
