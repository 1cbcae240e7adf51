"""The notebooks as a reader (and papermill) meets them: the house layout, checked on the stored files.

What they print when run is checked while nbval runs them (``notebooks/conftest.py``).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("0*.ipynb"))
#: notebooks still on the older parameter layout (environment read in the cell after the parameters) until
#: their owner moves them to aeutils.nbparams.settle; empty this set when notebook 05 follows the rule
PARAMETERS_RULE_PENDING: set[str] = set()
#: a code cell longer than this is library code in disguise (or several steps in one)
MAX_SOURCE_LINES = 30


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _python(cell: dict) -> ast.Module:
    """The cell's code with IPython magics (``%matplotlib inline``) blanked out."""
    return ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in _source(cell).splitlines()))


def test_the_six_numbered_notebooks_are_there_and_indexed() -> None:
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]
    index = (NOTEBOOKS[0].parent / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"({path.name})" in index, f"notebooks/README.md does not link {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped_in_git(path: Path) -> None:
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} cell {i} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_title_then_a_tagged_parameters_cell_of_literals(path: Path) -> None:
    """papermill-compatible: the first code cell is tagged ``parameters`` and holds only ``NAME = literal``
    lines (so ``-p NAME value`` can replace them); environment overrides (``make demo``, ``CI``) come right after."""
    cells = _cells(path)
    assert cells[0]["cell_type"] == "markdown" and re.match(rf"# {path.name[:2]} · \S", _source(cells[0])), (
        f"{path.name}: the first cell is not the title '# {path.name[:2]} · ...'"
    )
    code = [c for c in cells if c["cell_type"] == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [0], f"{path.name}: expected the first code cell (only) to be tagged 'parameters', got {tagged}"
    for node in _python(code[0]).body:
        assert isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets), (
            f"{path.name}: parameters cell line {node.lineno} is not 'NAME = literal'"
        )
        ast.literal_eval(node.value)  # raises on anything but a literal
    if path.stem in PARAMETERS_RULE_PENDING:
        later = "\n".join(_source(c) for c in code[1:3])
        assert "os.environ" in later, f"{path.name}: no environment overrides right after the parameters cell"
        return
    # the one rule (notebooks/README.md, aeutils.nbparams): CI sizes and MSCOPY_<NAME> overrides come from one
    # settle(globals(), ...) call in the cell right after the parameters; no other cell reads the environment
    assert "settle(globals()" in _source(code[1]), f"{path.name}: the cell after the parameters does not call settle(globals(), ...)"
    readers = [i for i, c in enumerate(code) if re.search(r"os\.environ|getenv|\bSMOKE\s*=\s*[^,]", _source(c)) and i != 1]
    assert not readers, f"{path.name}: code cells {readers} read the environment or set SMOKE themselves (use settle)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_are_short_calls_not_library_code(path: Path) -> None:
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code":
            continue
        n = len(_source(cell).splitlines())
        assert n <= MAX_SOURCE_LINES, f"{path.name} cell {i}: {n} lines (at most {MAX_SOURCE_LINES})"
        defined = [node.name for node in ast.walk(_python(cell)) if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{path.name} cell {i} defines {defined}: that code belongs in aeutils"
