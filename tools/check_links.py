#!/usr/bin/env python
"""Every relative link and `#anchor` in README.md and docs/*.md resolves (GitHub's heading slugs).

    python tools/check_links.py          # prints each broken link; exit 1 if any
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def slugs(path):
    """The anchors GitHub makes for a markdown file's headings (code fences skipped)."""
    out, seen, fence = set(), {}, False
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^(#{1,6})\s+(.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(root=ROOT):
    """[(file, link, why)] for README.md and docs/*.md under `root`."""
    root, bad = Path(root), []
    for f in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        raw = f.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", raw, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            if not dest.exists():
                bad.append((f.relative_to(root), target, "no such file"))
            elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
                bad.append((f.relative_to(root), target, "no such heading"))
        for plain in re.findall(r"(?<![\w/(\[])docs/[\w.-]+\.md", text):  # `docs/x.md` named in prose
            if not (root / plain).exists():
                bad.append((f.relative_to(root), plain, "no such file"))
    return bad


if __name__ == "__main__":
    problems = broken_links()
    for f, link, why in problems:
        print(f"{f}: {link}: {why}")
    print(f"{len(problems)} broken links")
    sys.exit(1 if problems else 0)
