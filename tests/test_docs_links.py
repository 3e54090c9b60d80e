"""The README and the reader docs link to each other: every relative link resolves.

A link is checked against the files of the tree and against the headings of the Markdown file
it points into, with GitHub's anchor rule (lower case, punctuation dropped, spaces to hyphens,
repeats numbered), so a moved or renamed section breaks a test rather than a reader's click.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
READER_DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *READER_DOCS]

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.split("\n"), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading's text (before numbering repeats)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path):
    """(line number, target) of every link in prose (not in code blocks or code spans)."""
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for match in _LINK.finditer(_CODE_SPAN.sub("", line)):
            yield number, match.group(1)


def _broken(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with that anchor in {dest.name}")
    return problems


def test_github_anchor_drops_code_marks_and_punctuation():
    assert github_anchor("Training a LoRA (`train_lora.py`)") == "training-a-lora-train_lorapy"
    assert github_anchor("Correctness: golden cases") == "correctness-golden-cases"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n\n## Notes\n\n```\n## not a heading\n```\n\n## Notes\n", encoding="utf-8")
    assert anchors(page) == {"a", "notes", "notes-1"}


def test_a_link_to_a_missing_heading_is_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Here\n\n[ok](#here) [gone](#there) `[code](#skipped)`\n", encoding="utf-8")
    assert _broken(page, tmp_path) == ["page.md:3: #there: no heading with that anchor in page.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    assert _broken(page) == []


def test_readme_is_a_front_door_of_at_most_350_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 350


def test_readme_links_every_reader_doc():
    targets = {t.partition("#")[0] for _, t in links(README)}
    missing = [d.name for d in READER_DOCS if f"docs/{d.name}" not in targets]
    assert missing == []
