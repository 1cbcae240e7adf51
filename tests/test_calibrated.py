"""aeutils.losses.calibrated: uniform channel weights give EncodingLoss exactly; fitted weights are
non-negative, mean 1 per tap, and do not rank the training constraints worse than uniform ones."""
from __future__ import annotations

import torch

from aeutils.losses import EncodingLoss
from aeutils.losses.calibrated import CalibratedEncodingLoss, fit_channel_weights, ranking_pairs

LW = {"stage1": 1.0, "stage2": 1.0}


def _hr(n: int = 4, side: int = 32) -> torch.Tensor:
    from aeutils.sr.bench import bundled

    return bundled("train", n // 2, side)


def test_uniform_weights_are_the_encoding_loss():
    plain = EncodingLoss(tap_weights=LW)
    ones = {t: torch.ones(plain.features(torch.rand(1, 3, 16, 16))[t].shape[1]) for t in LW}
    cal = CalibratedEncodingLoss(tap_weights=LW, channel_weights=ones)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(cal(a, b), plain(a, b), rtol=1e-5)
    zero_one = {t: torch.zeros_like(w) for t, w in ones.items()}
    zero_one["stage1"][0] = len(ones["stage1"])  # all weight on one channel: a different loss
    assert not torch.allclose(CalibratedEncodingLoss(tap_weights=LW, channel_weights=zero_one)(a, b), plain(a, b))


def test_fit_gives_mean_one_non_negative_weights_and_no_worse_ranking():
    hr = _hr()
    pairs = ranking_pairs(hr)
    assert set(pairs) == {"ref", "shift1", "stain", "x2", "x4"} and all(p.shape == pairs["ref"].shape for p in pairs.values())
    cw, fit = fit_channel_weights(EncodingLoss(tap_weights=LW), hr, steps=30)
    for w in cw.values():
        assert (w >= 0).all() and abs(float(w.mean()) - 1.0) < 1e-5
    assert 0 <= fit["before"] <= 1 and fit["after"] >= fit["before"]
