"""docs/reliability.md makes claims; each must name a test that exists (and so runs in CI)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
REF = re.compile(r"`(?:(?P<path>[\w/]+\.py))?::(?P<name>test_\w+)`")


def _rows() -> list[str]:
    return [line for line in DOC.read_text().splitlines()
            if re.match(r"^\| \d+ \|", line)]


def test_at_least_25_rows_each_naming_a_test() -> None:
    rows = _rows()
    assert len(rows) >= 25
    for row in rows:
        assert REF.search(row), f"row names no test: {row[:80]}"


def test_every_named_test_exists() -> None:
    missing = []
    for row in _rows():
        current: Path | None = None
        for match in REF.finditer(row):
            if match["path"]:
                current = REPO / "tests" / match["path"]
            assert current is not None, f"'::{match['name']}' without a file before it"
            source = current.read_text() if current.exists() else ""
            if not re.search(rf"^def {match['name']}\(", source, re.M):
                missing.append(f"{current.relative_to(REPO)}::{match['name']}")
    assert missing == []


def test_test_modules_have_unique_basenames() -> None:
    # tests/unit and tests/integration are rootdir-relative (no __init__.py): two modules of
    # one basename fail collection of the whole suite ("import file mismatch").
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
