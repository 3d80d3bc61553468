"""Citations of the project's mathematical notes resolve: every ``docs/maths.md §X`` (or
``maths.md §X``) in the repository's .py and .md files names a numbered heading of docs/maths.md,
and no citation of the retired notes (the upper-case name with "§") remains.

A citation names a list of sections: "§3.3", "§2.2, §3.2", "§2.2–§4.2" (each end of a range is
checked), "§3.4–4.2". Files are the tracked ones (``git ls-files``), or every file under the
repository when git is unavailable, minus perf/results/ and .venv/.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATHS = ROOT / "docs" / "maths.md"
EXCLUDED = ("perf/results/", ".venv/")

_NUM = r"\d+(?:\.\d+)*"
_SECTIONS = (
    rf"§\s?{_NUM}"
    rf"(?:\s*(?:[–—]|-(?=\s*§?\s?\d))\s*§?\s?{_NUM}"
    rf"|\s*(?:,|,?\s+and)\s*§\s?{_NUM})*"
)
CITATION = re.compile(rf"(?:docs/)?maths\.md\s*(?P<sections>{_SECTIONS})")
SECTION = re.compile(rf"(?:§\s?)?(?P<num>{_NUM})")
HEADING = re.compile(rf"^#{{1,6}}\s+§?(?P<num>{_NUM})\.?\s+\S", re.MULTILINE)
# The retired notes' name, spelled so that this file does not contain it.
RETIRED = re.compile(r"\bP[A]PER\b(?:\.md)?")


def _files() -> list[Path]:
    names: list[str] = []
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--", "*.py", "*.md"],
            check=True,
            capture_output=True,
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        pass
    if not names:  # no git, or a copy without git metadata: every file outside hidden folders
        names = [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.suffix in (".py", ".md") and not any(s.startswith(".") for s in p.relative_to(ROOT).parts)
        ]
    keep = [n for n in names if not n.startswith(EXCLUDED)]
    return [ROOT / n for n in sorted(keep) if (ROOT / n).is_file()]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _headings() -> list[str]:
    return [m.group("num") for m in HEADING.finditer(_text(MATHS))]


FILES = _files()


def test_maths_notes_have_unique_numbered_sections() -> None:
    assert MATHS.is_file(), "docs/maths.md is missing"
    numbers = _headings()
    assert numbers, "docs/maths.md has no numbered headings"
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"section numbers used twice in docs/maths.md: {duplicates}"


def test_every_maths_citation_names_a_heading() -> None:
    known = set(_headings())
    bad = []
    for path in FILES:
        text = _text(path)
        for match in CITATION.finditer(text):
            for sec in SECTION.finditer(match.group("sections")):
                if sec.group("num") not in known:
                    rel = path.relative_to(ROOT)
                    bad.append(f"{rel}:{_line(text, match.start())}: §{sec.group('num')}")
    assert not bad, "citations of docs/maths.md sections that do not exist:\n" + "\n".join(bad)


def test_no_citation_of_the_retired_notes_remains() -> None:
    bad = []
    for path in FILES:
        text = _text(path)
        for match in RETIRED.finditer(text):
            line = _line(text, match.start())
            rel = path.relative_to(ROOT)
            bad.append(f"{rel}:{line}: {text.splitlines()[line - 1].strip()}")
    assert not bad, (
        f"{len(bad)} citations of the retired notes remain (cite docs/maths.md §N):\n" + "\n".join(bad)
    )


@pytest.mark.parametrize(
    ("citation", "sections"),
    [
        ("docs/maths.md §3.3", ["3.3"]),
        ("(docs/maths.md §2.2, §3.2, §3.3)", ["2.2", "3.2", "3.3"]),
        ("docs/maths.md §2.2–§4.2.", ["2.2", "4.2"]),
        ("maths.md §3.4–4.2", ["3.4", "4.2"]),
        ("docs/maths.md § 8's", ["8"]),
    ],
)
def test_citation_parser(citation: str, sections: list[str]) -> None:
    (match,) = CITATION.finditer(citation)
    assert [m.group("num") for m in SECTION.finditer(match.group("sections"))] == sections
