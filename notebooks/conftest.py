"""What a reader sees, checked while nbval runs each notebook cell (``make test``).

A cell fails if it prints more than :data:`MAX_LINES` lines of text (streams plus the text form of
results; images and widgets count one line each), or writes a warning to stderr (a pink warning box in
JupyterLab). Long logs belong in files (``log.csv``), tables in a DataFrame, loops in one bar.
"""
from __future__ import annotations

import re
from typing import Any

import pytest

MAX_LINES = 40
_WARNING = re.compile(r"\b\w*Warning\b|^warning:", re.IGNORECASE | re.MULTILINE)


def _text_lines(outputs: list[Any]) -> tuple[int, str]:
    """(lines a reader sees, stderr text) of one cell's nbval outputs."""
    lines, stderr = 0, ""
    for out in outputs or ():
        kind = out.get("output_type")
        if kind == "stream":
            text = out.get("text", "")
            text = text if isinstance(text, str) else "".join(text)
            # a progress bar redraws itself with carriage returns: it is one line on screen
            lines += sum(1 for line in text.split("\n") if line.strip())
            if out.get("name") == "stderr":
                stderr += text
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "text/plain" in data and not any(k.startswith(("image/", "application/vnd.jupyter.widget")) for k in data):
                plain = data["text/plain"]
                lines += len((plain if isinstance(plain, str) else "".join(plain)).splitlines())
            else:
                lines += 1
    return lines, stderr


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    outputs = getattr(item, "test_outputs", None)
    if call.when != "call" or report.outcome != "passed" or outputs is None:
        return
    lines, stderr = _text_lines(outputs)
    problems = []
    if lines > MAX_LINES:
        problems.append(f"the cell printed {lines} lines (at most {MAX_LINES}: log to a file, use a DataFrame or one bar)")
    warning = _WARNING.search(stderr)
    if warning:
        start = stderr.rfind("\n", 0, warning.start()) + 1
        end = stderr.find("\n", warning.end())
        problems.append(f"the cell wrote a warning to stderr: {stderr[start:end if end >= 0 else None].strip()[:300]}")
    if problems:
        report.outcome = "failed"
        report.longrepr = f"{item.name}: " + "; ".join(problems)
