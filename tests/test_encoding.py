"""aeutils.encoding: running a model over a batch (encode_batch -> EncodedBatch), its shapes, metrics
and speed choices. A small randomly initialised autoencoder stands in for the shipped model."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from aeutils.encoding import EncodedBatch, encode_batch, rgb_batch
from aeutils.model import Autoencoder

from tinymodels import tiny_model as _tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model() -> Autoencoder:
    return _tiny_model()


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    low = torch.rand(5, 3, 12, 12, generator=g)
    return torch.nn.functional.interpolate(low, size=(181, 181), mode="bilinear", align_corners=True).clamp(0, 1)


def test_encode_batch_shapes_and_metrics(tiny_model: Autoencoder, patches: torch.Tensor) -> None:
    from aeutils.metrics import psnr, ssim

    e = encode_batch(tiny_model, patches, features=True, batch_size=2)
    assert isinstance(e, EncodedBatch)
    assert tuple(e.latent.shape) == (5, 1, 46, 46)
    assert tuple(e.outputs.shape) == (5, 3, 181, 181)
    assert float(e.outputs.min()) >= 0 and float(e.outputs.max()) <= 1
    assert {k: tuple(v.shape) for k, v in e.features.items()} == {
        "stage1": (5, 8, 91, 91), "stage2": (5, 8, 46, 46), "stage3": (5, 4, 46, 46), "latent": (5, 1, 46, 46)
    }
    torch.testing.assert_close(e.features["latent"], e.latent)
    torch.testing.assert_close(e.psnr, psnr(e.outputs, patches))
    torch.testing.assert_close(e.ssim, ssim(e.outputs, patches))
    with torch.inference_mode():
        torch.testing.assert_close(e.latent, tiny_model.encode(patches), atol=1e-5, rtol=1e-5)


def test_encode_batch_speed_choices(tiny_model: Autoencoder, patches: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    from aeutils import speed

    monkeypatch.delenv(speed.ENV, raising=False)
    speed.clear_cache()
    ref = encode_batch(tiny_model, patches, batch_size=2, speed="fp32")
    for name in speed.CANDIDATES[1:]:
        e = encode_batch(tiny_model, patches, batch_size=2, speed=name)
        assert e.outputs.dtype == torch.float32 and e.outputs.is_contiguous() and e.outputs.shape == ref.outputs.shape
        tol = 0.05 if speed.Choice(name).amp else 1e-5
        assert (e.outputs - ref.outputs).abs().max() < tol and (e.latent - ref.latent).abs().max() < 10 * tol, name
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in tiny_model.parameters())  # model untouched
    with pytest.raises(ValueError, match="speed"):
        encode_batch(tiny_model, patches, speed="fast")
    # auto with a forced probe: measured once for the chunk shape, then reused, same results within bf16
    monkeypatch.setenv(speed.ENV, "probe")
    e = encode_batch(tiny_model, patches, batch_size=2)
    assert (e.outputs - ref.outputs).abs().max() < 0.05
    chosen = speed.inference_choice(tiny_model, (2, 3, 181, 181), verbose=False)
    assert chosen.source == "probe" and set(chosen.rates) == set(speed.CANDIDATES)
    speed.clear_cache()


def test_no_alias_left_in_viz() -> None:
    """Running the model lives in aeutils.encoding only: viz neither defines nor re-exports it."""
    import aeutils.viz as viz

    assert not hasattr(viz, "encode_batch") and not hasattr(viz, "Encoded") and not hasattr(viz, "EncodedBatch")


def test_rgb_batch_takes_a_read_only_slide_read_without_a_warning() -> None:
    """A slide read is read-only NumPy over PIL's bytes: rgb_batch copies it (no "not writable" warning,
    the read untouched) and converts exactly."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    read_only = np.asarray(Image.fromarray(rgb))  # what Slide.read_region returns
    assert not read_only.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning notebook 02 showed would fail here
        x = rgb_batch(read_only)
    assert x.shape == (1, 3, 7, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1))
    x.mul_(0)  # the copy is the tensor's own
    assert np.array_equal(read_only, rgb)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        rgb_batch(rgb.astype(np.float32))


def test_encode_batch_refuses_integer_and_undecodable_input(tiny_model: Autoencoder, patches: torch.Tensor) -> None:
    """A uint8 batch would otherwise be cast to float32 0-255 and encoded silently: the model's own
    check refuses it first (TypeError naming the conversion), as it refuses a side that cannot decode."""
    u8 = (patches * 255).round().to(torch.uint8)
    with pytest.raises(TypeError, match=r"uint8.*x\.float\(\) / 255"):
        encode_batch(tiny_model, u8)
    with pytest.raises(ValueError, match="Nx3xHxW"):
        encode_batch(tiny_model, patches[:, :1])
    with pytest.raises(ValueError, match="4k\\+1"):
        encode_batch(tiny_model, patches[..., :180, :180])
    e = encode_batch(tiny_model, u8.float() / 255, batch_size=5, speed="fp32")  # the named conversion works
    assert tuple(e.latent.shape) == (5, 1, 46, 46)
