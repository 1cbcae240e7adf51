"""EncodingLoss / VGGContentLoss behaviour: frozen, differentiable w.r.t. pred only, clear errors."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from aeutils.checkpoint import save_checkpoint
from aeutils.errors import AeutilsError, CheckpointError
from aeutils.losses import EncodingLoss, VGGContentLoss
from aeutils.sensitivity import SensitivityResult, degrade, sensitivity_table
from aeutils.model import TAPS, Autoencoder, AutoencoderConfig, Encoder

SMALL = AutoencoderConfig(widths=(8, 4, 2), n_blocks=1)


@pytest.fixture(scope="module")
def model() -> Autoencoder:
    torch.manual_seed(0)
    m = Autoencoder(SMALL)
    # non-trivial BatchNorm statistics, so "BN uses batch stats" would change the value
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture()
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 33, 33, generator=g)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return pred, target


def test_scalar_positive_and_zero_for_identical(model, pair):
    pred, target = pair
    loss = EncodingLoss(model=model)
    value = loss(pred, target)
    assert value.ndim == 0 and value.item() > 0
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_reach_pred_not_encoder(model, pair):
    pred, target = pair
    loss = EncodingLoss(model=model)
    p = pred.clone().requires_grad_(True)
    t = target.clone().requires_grad_(True)
    loss(p, t).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert t.grad is None  # target features are computed without gradients
    assert all(q.grad is None and not q.requires_grad for q in loss.parameters())
    assert sum(q.numel() for q in loss.parameters() if q.requires_grad) == 0


def test_stays_in_eval_mode_inside_a_training_parent(model, pair):
    pred, target = pair
    loss = EncodingLoss(model=model, fuse=False)  # keep the BatchNorm layers to check them
    before = loss(pred, target).item()
    parent = nn.Module()
    parent.loss = loss
    parent.train()
    assert not loss.training and not any(m.training for m in loss.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in loss.modules())
    assert loss(pred, target).item() == pytest.approx(before, rel=1e-6)
    # the user's model is untouched: not frozen, not fused
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(q.requires_grad for q in model.parameters())


def test_fused_matches_model_features(model, pair):
    _, target = pair
    with torch.no_grad():
        ours = EncodingLoss(model=model).features(target)
        ref = model.encode_features(target)
    assert set(ours) == set(TAPS)
    for k in TAPS:
        assert ours[k].shape == ref[k].shape
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-5)


def test_loss_encodes_with_the_models_own_pass_and_stops_at_its_deepest_tap(model, pair):
    """The loss has no encoder loop of its own: its encoder copy (no decoder) runs the model's pass, only
    up to the deepest tap with a weight (stage2 here: stage3 and the latent conv never run), with the
    model's values."""
    pred, target = pair
    loss = EncodingLoss(model=model, tap_weights={"stage1": 1.0, "stage2": 0.5}, fuse=False, speed="fp32")
    assert isinstance(loss.encoder, Encoder) and loss.encoder.encoder is not model.encoder
    assert not any(isinstance(m, Autoencoder) for m in loss.modules())  # the decoder is not held
    assert not any("decoder" in k for k in loss.state_dict())
    seen: list[tuple[tuple, dict]] = []
    ran: list[int] = []
    hooks = [s.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, s in enumerate(loss.encoder.encoder)]
    hooks.append(loss.encoder.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((tuple(args[1]), kwargs)), with_kwargs=True))
    try:
        value = loss(pred, target)
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(("stage1", "stage2"), {"stop_after": "stage2"})] * 2  # target, then pred
    assert sorted(set(ran)) == [0, 1]
    with torch.no_grad():
        fp = model.encoder_forward(pred, ("stage1", "stage2"))[1]
        ft = model.encoder_forward(target, ("stage1", "stage2"))[1]
    inst = lambda a: (a - a.mean((2, 3), keepdim=True)) / (a.var((2, 3), keepdim=True, unbiased=False) + 1e-8).sqrt()  # noqa: E731
    expected = sum(w * (inst(fp[k]) - inst(ft[k])).abs().mean() for k, w in (("stage1", 1.0), ("stage2", 0.5)))
    assert value.item() == pytest.approx(float(expected), rel=1e-5)


def test_invalid_sizes_and_shapes(model):
    loss = EncodingLoss(model=model)
    with pytest.raises(ValueError, match="at least 16"):
        loss(torch.rand(1, 3, 15, 32), torch.rand(1, 3, 15, 32))
    with pytest.raises(ValueError, match="differ"):
        loss(torch.rand(1, 3, 33, 33), torch.rand(1, 3, 37, 37))
    with pytest.raises(ValueError, match="Nx3xHxW"):
        loss(torch.rand(1, 1, 33, 33), torch.rand(1, 1, 33, 33))


def test_tap_weights_and_criterion(model, pair):
    pred, target = pair
    with torch.no_grad():
        fp, ft = model.encode_features(pred), model.encode_features(target)
    for crit, fn in (("l1", lambda a, b: (a - b).abs().mean()), ("l2", lambda a, b: (a - b).square().mean())):
        loss = EncodingLoss(model=model, tap_weights={"stage2": 2.0, "latent": 0.5}, criterion=crit, weight=3.0,
                            normalize=False)
        expected = 3.0 * (2.0 * fn(fp["stage2"], ft["stage2"]) + 0.5 * fn(fp["latent"], ft["latent"]))
        assert loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-4)
    per_image = EncodingLoss(model=model, reduction="none")(pred, target)
    assert per_image.shape == (2,)
    with pytest.raises(ValueError, match="taps"):
        EncodingLoss(model=model, tap_weights={"conv5": 1.0})
    with pytest.raises(ValueError, match="non-zero"):
        EncodingLoss(model=model, tap_weights={"stage1": 0.0})
    with pytest.raises(ValueError, match="criterion"):
        EncodingLoss(model=model, criterion="huber")


def test_normalize_modes(model, pair):
    pred, target = pair
    for mode in (True, "channel", "instance", False):
        loss = EncodingLoss(model=model, normalize=mode)
        assert loss(pred, target).item() > 0
        assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    # instance normalisation ignores a per-channel gain and offset of the features: an input brightness
    # change that stays linear through the first conv (no ReLU clipping: check on the pre-ReLU tap) is free
    inst = EncodingLoss(model=model, normalize="instance", tap_weights={"stage1": 1.0})
    raw = EncodingLoss(model=model, normalize="none", tap_weights={"stage1": 1.0})
    fa = {"stage1": torch.randn(2, 8, 9, 9)}
    fb = {"stage1": 3.0 * fa["stage1"] + 1.5}
    assert inst.compare(fb, fa).abs().max().item() < 1e-4 < raw.compare(fb, fa).min().item()
    with pytest.raises(ValueError, match="normalize"):
        EncodingLoss(model=model, normalize="batch")


def test_checkpoint_path_and_shipped_default(model, pair, tmp_path, monkeypatch):
    pred, target = pair
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    a = EncodingLoss(checkpoint=ckpt)(pred, target)
    b = EncodingLoss(model=model)(pred, target)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    monkeypatch.setenv("MSCOPY_PRETRAINED", str(ckpt))
    assert EncodingLoss()(pred, target).item() == pytest.approx(b.item(), rel=1e-5)
    with pytest.raises(CheckpointError, match="nope.pt"):
        EncodingLoss(checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ValueError):
        EncodingLoss(model=model, checkpoint=ckpt)


def test_vgg_needs_local_weights():
    with pytest.raises(AeutilsError, match="local VGG19 weights"):
        VGGContentLoss()


def test_vgg_missing_or_wrong_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="missing_vgg.pth"):
        VGGContentLoss(tmp_path / "missing_vgg.pth")
    bad = tmp_path / "not_vgg.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="not_vgg.pth"):
        VGGContentLoss(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        VGGContentLoss(junk)


def test_vgg_random_and_local_state_dict(tmp_path, pair):
    pred, target = pair
    rnd = VGGContentLoss(random_weights=True)
    p = pred.clone().requires_grad_(True)
    value = rnd(p, target)
    value.backward()
    assert value.ndim == 0 and value.item() > 0 and p.grad.abs().sum() > 0
    assert sum(q.numel() for q in rnd.parameters() if q.requires_grad) == 0
    assert rnd(target, target).item() == 0.0
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(5)
    features = make_layers(cfgs["E"])  # what torchvision.models.vgg19().features is
    path = tmp_path / "vgg19_local.pth"
    # torchvision's key layout (features.N.*, classifier.*), without the 500 MB classifier
    torch.save({**{f"features.{k}": v for k, v in features.state_dict().items()},
                "classifier.6.bias": torch.zeros(1000)}, path)
    loaded = VGGContentLoss(path)
    torch.testing.assert_close(loaded.features[10].weight, features[10].weight)
    assert len(loaded.features) == 12 and isinstance(loaded.features[11], nn.ReLU)  # ends at relu3_1
    feats_only = tmp_path / "vgg19_features.pth"
    torch.save(features[:12].state_dict(), feats_only)
    assert VGGContentLoss(feats_only)(pred, target).item() == pytest.approx(loaded(pred, target).item(), rel=1e-6)


def test_degradations_keep_size_and_grade():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 41, 41, generator=g)
    clean = x[:, :, 4:-4, 4:-4]
    for name, grades in (("blur", (0.5, 2.0)), ("noise", (0.01, 0.08)), ("down-up", (2.0, 4.0)), ("stain", (0.05, 0.2))):
        errs = [(degrade(x, name, gr, 4) - clean).square().mean().item() for gr in grades]
        assert degrade(x, name, grades[0], 4).shape == clean.shape
        assert 0 < errs[0] < errs[1], name
    torch.testing.assert_close(degrade(x, "shift", 1.0, 4), x[:, :, 4:-4, 3:-5])


def test_sensitivity_table_small(model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 41, 41, generator=g)
    res = sensitivity_table(x, {"trained": model}, variants={"": {}, ":latent": {"tap_weights": {"latent": 1}}},
                            detail={"blur": (0.5, 1.0, 2.0)}, nuisance={"brightness": (0.02,)})
    summ = res.summary()
    assert set(summ) == {"pixel MSE", "trained", "trained:latent"}
    assert summ["pixel MSE"]["spearman:blur"] == pytest.approx(1.0)
    for row in summ.values():
        assert row["ratio"] > 0 and 0 <= row["auc"] <= 1
    assert "trained:latent" in res.to_text()


def _result(trained_blur: float, trained_noise: float) -> SensitivityResult:
    """Hand-made responses of 2 images: nuisance "shift" costs 1 for every loss (MSE: 4, squared)."""
    a = lambda v: np.full(2, float(v))  # noqa: E731
    per = {
        "pixel MSE": {("blur", 1.0): a(9), ("noise", 1.0): a(9), ("shift", 1.0): a(4)},
        "trained": {("blur", 1.0): a(trained_blur), ("noise", 1.0): a(trained_noise), ("shift", 1.0): a(1)},
        "random": {("blur", 1.0): a(2), ("noise", 1.0): a(2), ("shift", 1.0): a(1)},
    }
    return SensitivityResult(per, {"blur": "detail", "noise": "detail", "shift": "nuisance"}, 2, 33,
                             powers={"pixel MSE": 2, "trained": 1, "random": 1})


def test_relative_response_is_on_the_nuisance_scale_and_roots_squared_losses():
    res = _result(3, 0.5)
    assert res.relative_response("trained") == {("blur", 1.0): 3.0, ("noise", 1.0): 0.5, ("shift", 1.0): 1.0}
    assert res.relative_response("pixel MSE")[("blur", 1.0)] == pytest.approx(1.5)  # sqrt(9 / 4)
    assert res.relative_response("pixel MSE", root=False)[("blur", 1.0)] == pytest.approx(2.25)
    assert "2.25" in res.to_text()


def test_verdict_is_computed_from_the_numbers():
    good = _result(3, 3).verdict()
    assert "auc: trained 1.000 vs random 1.000" in good  # ties are not wins
    assert "ratio: trained 3.000 vs random 2.000 vs pixel MSE 1.500 -> trained encoder better than both" in good
    bad = _result(3, 0.5).verdict()
    assert "ratio: trained 1.225" in bad and "NOT better than both controls" in bad
    assert "per degradation (auc): trained beats random and pixel MSE on none; not on blur, noise" in bad
    assert "best trained variant by auc: trained" in bad
    with pytest.raises(ValueError, match="no loss 'nope'"):
        _result(3, 3).verdict("nope")


def test_speed_choices_agree_and_keep_gradients(model, pair, monkeypatch):
    from aeutils import speed

    monkeypatch.delenv(speed.ENV, raising=False)
    speed.clear_cache()
    pred, target = pair
    ref = EncodingLoss(model=model, speed="fp32")
    p0 = pred.clone().requires_grad_(True)
    value0 = ref(p0, target)
    value0.backward()
    for name in speed.CANDIDATES[1:]:
        loss = EncodingLoss(model=model, speed=name)
        p = pred.clone().requires_grad_(True)
        value = loss(p, target)
        value.backward()
        assert value.dtype == torch.float32
        tol = 0.05 if speed.Choice(name).amp else 1e-4  # bf16 features: about 3 significant digits
        assert value.item() == pytest.approx(value0.item(), rel=tol), name
        assert torch.nn.functional.cosine_similarity(p.grad.flatten(), p0.grad.flatten(), dim=0) > 0.9, name
        assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="speed"):
        EncodingLoss(model=model, speed="fp16")
    # auto: fp32 until a probe pays; a forced probe times this loss's own call (with backward) once
    auto = EncodingLoss(model=model)
    assert auto.speed_choice(pred).source == "not yet paid"
    monkeypatch.setenv(speed.ENV, "probe")
    p = pred.clone().requires_grad_(True)
    chosen = auto.speed_choice(p)
    assert chosen.source == "probe" and chosen.what == "inference+backward" and set(chosen.rates) == set(speed.CANDIDATES)
    assert auto.speed_choice(p) is chosen  # cached for this shape
    assert auto(p, target).item() == pytest.approx(value0.item(), rel=0.05)
    speed.clear_cache()


# --------------------------------------------------------------------------- a true drop-in


@pytest.mark.parametrize("side", [(16, 16), (64, 64), (128, 96), (181, 181), (192, 192), (256, 250)])
def test_any_size_from_16_px(model, side):
    """The loss only encodes: any side >= 16 px, equal to the model's own any-size encoder pass."""
    g = torch.Generator().manual_seed(2)
    target = torch.rand(1, 3, *side, generator=g)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    loss = EncodingLoss(model=model, tap_weights={"stage1": 1.0, "stage2": 0.5}, fuse=False, speed="fp32")
    value = loss(pred, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    with torch.no_grad():
        ref = model.encoder_forward(pred.detach(), ("stage1", "stage2"))[1]
        mine = loss.features(pred.detach())
    for k in ("stage1", "stage2"):
        torch.testing.assert_close(mine[k], ref[k])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_double_precision_inputs(model, pair, dtype):
    loss = EncodingLoss(model=model, speed="fp32")
    pred32, target32 = pair
    ref = loss(pred32, target32)
    pred = pred32.to(dtype).requires_grad_(True)
    value = loss(pred, target32.to(dtype))
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert pred.grad is not None and pred.grad.dtype == dtype and torch.isfinite(pred.grad.float()).all()
    tol = 1e-5 if dtype == torch.float64 else 0.05  # only the inputs' own rounding differs
    assert abs(value.item() - ref.item()) <= tol * ref.item()


def test_under_autocast(model, pair):
    loss = EncodingLoss(model=model)
    pred, target = pair
    pred = pred.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(pred, target)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert abs(value.item() - loss(*pair).item()) <= 0.05 * value.item()
    assert torch.isfinite(pred.grad).all()


def test_integer_input_is_refused_with_the_conversion_rule(model, pair):
    loss = EncodingLoss(model=model)
    u8 = (pair[1] * 255).round().to(torch.uint8)
    with pytest.raises(TypeError, match=r"uint8.*float\(\) / 255"):
        loss(u8, u8)
    with pytest.raises(TypeError, match="int64"):
        loss(pair[0], u8.long())
    with pytest.raises(TypeError, match=r"uint8.*x\.float\(\) / 255"):  # features(): the same check
        loss.features(u8)
    # the model, the loss and its features() raise the same exception for the same input
    for call in (model.encode, loss.encoder, loss.features):
        with pytest.raises(TypeError):
            call(u8)


@pytest.mark.parametrize("normalize", ["instance", "channel", "none"])
def test_no_nan_on_flat_images(model, normalize):
    """A flat crop (white background, an untrained SR net's grey output) makes whole feature maps
    constant: value and gradient stay finite."""
    pred = torch.full((2, 3, 32, 32), 0.5, requires_grad=True)
    target = torch.ones(2, 3, 32, 32)
    for t in (target, pred.detach().clone()):
        loss = EncodingLoss(model=model, tap_weights={k: 1.0 for k in TAPS}, normalize=normalize)
        value = loss(pred, t)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(pred.grad).all()
        pred.grad = None


@pytest.mark.parametrize("gt_size", [128, 192, 256])
def test_basicsr_recipe_loop(model, gt_size):
    """The shape of BasicSR's SRModel.optimize_parameters: net_g(lq) -> output, pixel loss +
    perceptual loss on (output, gt), backward, optimizer step; gt crops of gt_size px (x4)."""
    from aeutils.sr.network import SRNet

    torch.manual_seed(0)
    device = torch.device("cpu")
    net_g = SRNet(channels=8, n_blocks=1).to(device)
    cri_pix = nn.L1Loss().to(device)
    cri_perceptual = EncodingLoss(model=model, weight=0.1).to(device)
    optimizer_g = torch.optim.Adam(net_g.parameters(), lr=1e-3)
    net_g.train()
    gt = torch.rand(2, 3, gt_size, gt_size, device=device)
    lq = nn.functional.interpolate(gt, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    before = [p.detach().clone() for p in net_g.parameters()]
    for _ in range(2):
        optimizer_g.zero_grad()
        output = net_g(lq)
        assert output.shape == gt.shape
        l_total = cri_pix(output, gt) + cri_perceptual(output, gt)
        l_total.backward()
        optimizer_g.step()
        assert torch.isfinite(l_total)
    assert not cri_perceptual.training  # net_g.train() never reaches the frozen loss
    assert any(not torch.equal(a, b) for a, b in zip(before, net_g.parameters()))
    assert all(p.grad is None for p in cri_perceptual.parameters())


def test_layer_weights_is_a_deprecated_alias_of_tap_weights(model, pair):
    """One word for the points the loss reads (taps): ``tap_weights=``; the old keyword, attribute and
    constant names still work, with a DeprecationWarning, and give the same loss."""
    import aeutils.losses.encoding as enc_mod
    import aeutils.model as model_mod

    new = EncodingLoss(model=model, tap_weights={"stage2": 1.0}, normalize="none")
    with pytest.warns(DeprecationWarning, match="tap_weights"):
        old = EncodingLoss(model=model, layer_weights={"stage2": 1.0}, normalize="none")
    assert old.tap_weights == new.tap_weights == {"stage1": 0.0, "stage2": 1.0, "stage3": 0.0, "latent": 0.0}
    assert old(*pair).item() == new(*pair).item()
    with pytest.warns(DeprecationWarning, match="tap_weights"):
        assert old.layer_weights == new.tap_weights
    with pytest.raises(ValueError, match="tap_weights= only"):
        EncodingLoss(model=model, tap_weights={"stage1": 1.0}, layer_weights={"stage1": 1.0})
    with pytest.warns(DeprecationWarning, match="TAPS"):
        assert model_mod.STAGES == TAPS
    with pytest.warns(DeprecationWarning, match="DEFAULT_TAP_WEIGHTS"):
        assert enc_mod.DEFAULT_LAYER_WEIGHTS == enc_mod.DEFAULT_TAP_WEIGHTS


def test_repr_is_one_line_naming_the_encoder_and_settings(model, tmp_path):
    """``print(EncodingLoss())`` says what it computes: the checkpoint, taps, criterion, normalisation,
    weight; not the encoder's module tree (nor a decoder it does not hold)."""
    good_checkpoint = save_checkpoint(tmp_path / "ae.pt", model)
    loss = EncodingLoss(checkpoint=good_checkpoint, tap_weights={"stage1": 1.0, "latent": 0.5}, criterion="l2",
                        weight=2.0)
    text = repr(loss)
    assert "\n" not in text and text.startswith("EncodingLoss(checkpoint=") and str(good_checkpoint) in text
    for part in ("taps={'stage1': 1.0, 'latent': 0.5}", "criterion='l2'", "normalize='instance'", "weight=2.0"):
        assert part in text, text
    assert "Conv2d" not in text and "decoder" not in text
    assert "a given model" in repr(EncodingLoss(model=model))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_naming_it(model, pair, bad):
    """NaN/inf in pred or target would make the loss NaN silently: a ValueError names which input."""
    loss = EncodingLoss(model=model)
    pred, target = pair[0].clone(), pair[1].clone()
    pred[0, 1, 3, 4] = bad
    with pytest.raises(ValueError, match="pred has NaN or infinite"):
        loss(pred, target)
    with pytest.raises(ValueError, match="target has NaN or infinite"):
        loss(pair[0], pred)
    assert torch.isfinite(loss(*pair))  # finite inputs pass
