"""The README and docs/ hold together: every relative link (images included) reaches a file, every `#anchor`
names a heading of its target (GitHub's slugs), every page opens with a title and is listed in the README,
and the README stays a front door. External links are not fetched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 160

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) and ![alt](target), with an optional "title"; link text holds no closing bracket.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose(text: str) -> str:
    """The text outside code: links shown inside code blocks and spans are examples, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its visible text lowercased, everything but letters, digits,
    spaces, hyphens and underscores dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", page.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text()))


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_are_found() -> None:
    assert README.exists() and len(DOCS) >= 10, [name(p) for p in DOCS]


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # external (http, https, mailto): not fetched
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {name(file)}")
    assert not broken, f"{name(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", DOCS, ids=name)
def test_every_page_opens_with_a_title_and_is_listed_in_the_readme(page: Path) -> None:
    first = page.read_text().lstrip().splitlines()[0]
    assert first.startswith("# "), f"{name(page)} starts with {first!r}, not an H1"
    assert f"docs/{page.name}" in links(README), f"the README's Documentation does not link {name(page)}"


def test_the_readme_stays_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it under {README_MAX_LINES}"


def test_the_checks_catch_what_they_should() -> None:
    """The helpers against GitHub's behaviour on known cases, so the checks above cannot pass vacuously."""
    assert slug("Policies (`policies.yml`)") == "policies-policiesyml"
    assert slug("The auditor's report") == "the-auditors-report"
    assert slug("Never lost, never doubled") == "never-lost-never-doubled"
    assert slug("`bench/audit.py`: the log") == "benchauditpy-the-log"
    assert slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"
    text = "[a](x.md#y) ![i](img.png) `[no](code.md)`\n```\n[no](fence.md)\n```\n[ext](https://e.com)"
    assert LINK.findall(prose(text)) == ["x.md#y", "img.png", "https://e.com"]
