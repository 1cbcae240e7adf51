"""Every ```python block of README.md and docs/*.md runs as pasted (each in a fresh interpreter, from the
repository root, with ``CI=true``), so the documentation cannot drift from the code.

A block that truly cannot run here (it needs a GPU, say) starts with the visible line
``# not run by tests/test_readme.py: REASON``; it is skipped with that reason. Bash blocks are commands and
are not run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"\A# not run by tests/test_readme\.py:(.*)")
TIMEOUT = 600  # s: the slowest block trains for a few steps


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", m.group(1)))
    return found


BLOCKS = _blocks()


def test_there_are_blocks_to_run() -> None:
    pages = {where.split(":")[0] for where, _ in BLOCKS}
    assert "README.md" in pages and any(p.startswith("docs/") for p in pages), pages


@pytest.mark.slow
@pytest.mark.parametrize("where, code", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_python_block_runs_as_pasted(where: str, code: str, tmp_path: Path) -> None:
    skip = SKIP.match(code)
    if skip:
        reason = skip.group(1).strip()
        assert reason, f"{where}: a skipped block must say why"
        pytest.skip(f"{where}: {reason}")
    env = dict(os.environ, CI="true", MPLBACKEND="Agg", MSCOPY_WORK=str(tmp_path / "work"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, f"{where} failed as pasted:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("page", [*PAGES, ROOT / "notebooks" / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_and_no_tracker_numbers(page: Path) -> None:
    """Relative links point at files that exist (anchors at headings that exist); user documentation
    speaks of features, not of tracker issue numbers."""
    text = page.read_text()
    assert not re.search(r"\bissues? \d", text, re.IGNORECASE), f"{page.name} names an issue number"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.MULTILINE)}
            assert anchor in slugs, f"{page.name}: link to a missing heading {target}"
