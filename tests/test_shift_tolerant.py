"""EncodingLoss(shift=s) / (pool=k): the shift-tolerant comparisons. ``shift`` makes a 1 px misalignment
cost far less than an x2 bicubic blur (the default does the opposite); both are off by default."""
from __future__ import annotations

import pytest
import torch

from aeutils.losses import EncodingLoss, random_encoding_loss
from aeutils.losses.calibrated import ranking_pairs
from aeutils.model import Autoencoder, AutoencoderConfig

LW = {"stage1": 1.0, "stage2": 1.0}


@pytest.fixture(scope="module")
def tissue() -> dict[str, torch.Tensor]:
    from aeutils.sr.bench import bundled

    return ranking_pairs(bundled("train", 2, 64))  # training-region patches only


@pytest.fixture(scope="module")
def small() -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(widths=(8, 4, 2), n_blocks=1)).eval()


def test_shift_makes_a_1px_shift_cheaper_than_an_x2_blur_and_the_default_does_not(tissue):
    v = tissue
    plain, tolerant = EncodingLoss(tap_weights=LW), EncodingLoss(tap_weights=LW, shift=1)
    assert plain(v["shift1"], v["ref"]) > plain(v["x2"], v["ref"])  # the known flaw of the default
    assert tolerant(v["shift1"], v["ref"]) < 0.25 * tolerant(v["x2"], v["ref"])
    assert tolerant(v["x2"], v["ref"]) < tolerant(v["x4"], v["ref"])  # still grades detail loss


def test_shift_is_a_min_over_shifted_targets(small):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 40, generator=g)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1).requires_grad_()
    plain = EncodingLoss(model=small, reduction="none")
    tolerant = EncodingLoss(model=small, reduction="none", shift=1)
    d = tolerant(pred, target)
    assert d.shape == (2,) and (d <= plain(pred, target) + 1e-6).all()
    # exactly the smallest per-image loss against the 9 replicate-padded shifts of the target
    padded = torch.nn.functional.pad(target, (1, 1, 1, 1), mode="replicate")
    each = torch.stack([plain(pred, padded[..., dy:dy + 32, dx:dx + 40]) for dy in range(3) for dx in range(3)])
    assert torch.allclose(d, each.amin(0), rtol=1e-4, atol=1e-6)
    d.sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert tolerant(target, target).abs().max().item() < 1e-6


def test_pool_blurs_features_and_defaults_are_unchanged(small):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 33, 33, generator=g), torch.rand(2, 3, 33, 33, generator=g)
    default = EncodingLoss(model=small)
    assert default.pool == 0 and default.shift == 0 and "pool" not in repr(default) and "shift" not in repr(default)
    assert EncodingLoss(model=small, pool=0, shift=0)(a, b) == default(a, b)
    pooled = EncodingLoss(model=small, pool=3)
    assert 0 < pooled(a, b) < default(a, b)  # averaging features shrinks unrelated differences
    assert "pool=3" in repr(pooled) and "shift=2" in repr(EncodingLoss(model=small, shift=2))
    rnd = random_encoding_loss(EncodingLoss(model=small, pool=3, shift=1))
    assert (rnd.pool, rnd.shift) == (3, 1)


@pytest.mark.parametrize("kw", [{"pool": 2}, {"pool": 1}, {"pool": -3}, {"pool": True}, {"shift": -1},
                                {"shift": 1.0}, {"shift": True}])
def test_bad_pool_or_shift_is_refused(small, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        EncodingLoss(model=small, **kw)
