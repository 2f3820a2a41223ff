"""README.md and docs/ link to what exists (tools/check_links.py), and the checker catches what it must."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import check_links  # noqa: E402


def test_readme_and_docs_links_resolve():
    assert check_links.broken_links() == []


def test_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Real heading\n\n## Second one\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#second-one) [gone](docs/b.md) [bad](docs/a.md#nope) see docs/c.md\n"
        "```\n[in a fence](docs/ignored.md)\n```\n", encoding="utf-8")
    assert sorted((str(f), l, w) for f, l, w in check_links.broken_links(tmp_path)) == [
        ("README.md", "docs/a.md#nope", "no such heading"),
        ("README.md", "docs/b.md", "no such file"),
        ("README.md", "docs/c.md", "no such file")]
