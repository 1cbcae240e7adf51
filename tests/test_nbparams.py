"""aeutils.nbparams: the one rule by which values reach a notebook (literal < CI size < MSCOPY_<NAME>)."""
from __future__ import annotations

from pathlib import Path

import pytest

from aeutils.nbparams import settle


def _params() -> dict:
    return {"EPOCHS": 130, "LR": 3e-3, "TIME_BUDGET": "15m", "WIDTHS": (32, 32, 8), "CHECKPOINT": None, "lower": 1}


def test_literals_stay_without_ci_or_overrides(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ns = _params()
    smoke, work = settle(ns, smoke={"EPOCHS": 2}, environ={"MSCOPY_WORK": str(tmp_path)})
    assert (smoke, work, ns) == (False, tmp_path / "full", _params())
    assert capsys.readouterr().out == f"parameters: as in the cell above; outputs under {tmp_path / 'full'}\n"


def test_ci_sizes_then_environment_overrides_typed_by_the_literal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ns = _params()
    env = {"CI": "true", "MSCOPY_WORK": str(tmp_path), "MSCOPY_EPOCHS": "5", "MSCOPY_LR": "1", "MSCOPY_TIME_BUDGET": "1h",
           "MSCOPY_WIDTHS": "(8, 8, 4)", "MSCOPY_CHECKPOINT": "/x/best.pt", "MSCOPY_lower": "9", "MSCOPY_DEVICE": "cpu"}
    smoke, work = settle(ns, smoke={"EPOCHS": 2, "TIME_BUDGET": None}, environ=env)
    assert smoke and work == tmp_path / "smoke"
    assert ns == {"EPOCHS": 5, "LR": 1.0, "TIME_BUDGET": "1h", "WIDTHS": (8, 8, 4), "CHECKPOINT": "/x/best.pt", "lower": 1}
    assert isinstance(ns["LR"], float)
    out = capsys.readouterr().out
    assert out.startswith("parameters: CI sizes EPOCHS=2, TIME_BUDGET=None; from the environment ") and "EPOCHS=5" in out


def test_mistakes_are_named() -> None:
    with pytest.raises(ValueError, match="smoke sizes for EPOCS, which the parameters cell does not define"):
        settle(_params(), smoke={"EPOCS": 2}, environ={"CI": "1"}, quiet=True)
    with pytest.raises(ValueError, match=r"MSCOPY_EPOCHS='ten': parameter EPOCHS is a int \(130\)"):
        settle(_params(), environ={"MSCOPY_EPOCHS": "ten"}, quiet=True)
