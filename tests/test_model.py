"""aeutils.model: the architecture (layout, parameter count, size contract), the [0, 1] input/output
convention with the normalisation inside, and the config."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from aeutils.model import (
    TAPS,
    Autoencoder,
    AutoencoderConfig,
    ResidualBlock,
    check_size,
    count_parameters,
    latent_size,
    nearest_valid_sizes,
)

from tinymodels import small_model


def batch(side: int, n: int = 2, seed: int = 0, height: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height or side, side, generator=g)


@pytest.mark.parametrize("side,latent", [(65, 17), (181, 46), (257, 65)])
def test_shapes_of_the_default_architecture(side: int, latent: int) -> None:
    # The full N = 10 model on the meta device: real layer shapes, no compute.
    with torch.device("meta"):
        model = Autoencoder()
        x = torch.zeros(1, 3, side, side)
        z = model.encode(x)
        y = model.decode(z)
    assert tuple(z.shape) == (1, 1, latent, latent)
    assert tuple(y.shape) == (1, 3, side, side)
    assert latent_size(side) == latent


@pytest.mark.parametrize("side,latent", [(65, 17), (181, 46)])
def test_round_trip_shapes_computed(side: int, latent: int) -> None:
    model = small_model()
    with torch.no_grad():
        z = model.encode(batch(side))
        y = model(batch(side))
    assert z.shape == (2, 1, latent, latent)
    assert y.shape == (2, 3, side, side)


def test_non_square_inputs_keep_their_shape() -> None:
    model = small_model()
    with torch.no_grad():
        x = batch(181, height=65)
        assert model.encode(x).shape == (2, 1, 17, 46)
        assert model(x).shape == x.shape


def test_default_is_the_original_design_with_1924004_parameters() -> None:
    model = Autoencoder()
    assert model.config == AutoencoderConfig()
    assert count_parameters(model) == 1_924_004
    assert isinstance(model.encoder, nn.ModuleList) and isinstance(model.decoder, nn.Sequential)
    enc_convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    heads = [m for m in enc_convs if m.kernel_size == (3, 3) and (m.in_channels != m.out_channels)]
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in heads] == [(3, 64, 2), (64, 32, 2), (32, 8, 1), (8, 1, 1)]
    dec_convs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    dec_heads = [m for m in dec_convs if m.in_channels != m.out_channels]
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in dec_heads] == [(1, 8, 1), (8, 32, 1), (32, 64, 2), (64, 3, 2)]
    assert not any(isinstance(m, nn.Conv2d) for m in model.decoder.modules())
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 60  # 10 per stage, 3 stages, encoder and decoder


def test_parameter_count_depends_on_n_blocks_as_the_blocks_say() -> None:
    # each block: two 3x3 convs (c*c*9 + c) and two BatchNorms (2c): per width pair in enc+dec
    per_block = sum(2 * (2 * (c * c * 9 + c) + 2 * 2 * c) for c in (64, 32, 8))
    assert count_parameters(Autoencoder(AutoencoderConfig(n_blocks=0))) + 10 * per_block == 1_924_004


def test_residual_block_is_conv_bn_relu_conv_bn_plus_input() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(8, nn.ReLU).eval()
    kinds = [type(m) for m in block.body]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.body(x))
    assert [type(m) for m in ResidualBlock(8, nn.ReLU, transposed=True).body][0] is nn.ConvTranspose2d


@pytest.mark.parametrize("side,near", [(180, "177 or 181"), (182, "181 or 185"), (64, "61 or 65"), (256, "253 or 257"), (3, "5")])
def test_invalid_sizes_name_the_nearest_valid_ones(side: int, near: str) -> None:
    model = small_model()
    with pytest.raises(ValueError, match=f"{side} px.*nearest valid: {near}"):
        model.encode(torch.rand(1, 3, side, side))
    with pytest.raises(ValueError, match=near):
        check_size(181, side)


def test_nearest_valid_sizes_bracket_the_side() -> None:
    for side in range(5, 400):
        lo, hi = nearest_valid_sizes(side)
        assert lo % 4 == 1 and hi % 4 == 1 and lo <= side <= hi and hi - lo in (0, 4)
        assert (lo == hi) == (side % 4 == 1)
        if side % 4 == 1:
            assert 4 * latent_size(side) - 3 == side


def test_other_bad_inputs_are_refused_clearly() -> None:
    model = small_model()
    with pytest.raises(TypeError, match=r"dtype torch.uint8.*x\.float\(\) / 255"):
        model.encode(torch.zeros(1, 3, 65, 65, dtype=torch.uint8))
    with pytest.raises(ValueError, match="Nx3xHxW"):
        model.encode(torch.rand(3, 65, 65))
    with pytest.raises(ValueError, match="Nx1xhxw"):
        model.decode(torch.rand(1, 3, 17, 17))


def test_encode_then_decode_equals_forward_in_eval() -> None:
    model = small_model()
    x = batch(65)
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x)), model(x))


def test_encode_features_end_with_the_encoding() -> None:
    model = small_model()
    x = batch(65)
    with torch.no_grad():
        feats = model.encode_features(x)
        z = model.encode(x)
    assert list(feats) == list(TAPS)
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(64, 33, 33), (32, 17, 17), (8, 17, 17), (1, 17, 17)]
    assert torch.equal(feats["latent"], z)


def test_encoder_forward_taps_and_stop_after_any_size() -> None:
    """encoder_forward takes any side (no 4k+1 rule), returns the taps asked for, and ``stop_after``
    runs only the stages up to it, with the same values as the full pass."""
    model = small_model()
    x = batch(50, height=37)  # neither side is 4k+1: encode() would refuse it
    with pytest.raises(ValueError, match="4k\\+1"):
        model.encode(x)
    calls: list[int] = []
    hooks = [stage.register_forward_hook(lambda *_a, i=i: calls.append(i)) for i, stage in enumerate(model.encoder)]
    try:
        with torch.no_grad():
            z, full = model.encoder_forward(x, TAPS)
            assert calls == [0, 1, 2, 3]
            calls.clear()
            h, part = model.encoder_forward(x, ("stage1", "stage2"), stop_after="stage2")
            assert calls == [0, 1]  # stage3 and the latent conv never ran
    finally:
        for hook in hooks:
            hook.remove()
    assert tuple(z.shape) == (2, 1, 10, 13) and torch.equal(z, full["latent"])
    assert list(part) == ["stage1", "stage2"] and torch.equal(h, part["stage2"])
    for k in part:
        assert torch.equal(part[k], full[k])
    assert tuple(full["stage1"].shape[1:]) == (model.config.widths[0], 19, 25)
    with pytest.raises(ValueError, match="unknown encoder taps"):
        model.encoder_forward(x, stop_after="conv5")


def test_output_is_clamped_to_0_1_in_eval_only() -> None:
    model = small_model()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(50)  # force overshoot
    x = batch(65)
    with torch.no_grad():
        y_eval = model(x)
        model.train()
        y_train = model(x)
    assert y_eval.min() >= 0 and y_eval.max() <= 1
    assert y_train.min() < 0 or y_train.max() > 1  # the clamp, not luck, keeps eval in range


def test_normalisation_is_inside_the_model_as_buffers() -> None:
    config = AutoencoderConfig(n_blocks=1, mean=(0.7, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    torch.manual_seed(0)
    model = Autoencoder(config).eval()
    buffers = dict(model.named_buffers())
    assert torch.allclose(buffers["mean"].flatten(), torch.tensor(config.mean))
    assert torch.allclose(buffers["std"].flatten(), torch.tensor(config.std))
    assert "mean" not in model.state_dict()  # rebuilt from the config, which travels with checkpoints
    x = batch(65)
    with torch.no_grad():
        h = (x - torch.tensor(config.mean).view(1, 3, 1, 1)) / torch.tensor(config.std).view(1, 3, 1, 1)
        for stage in model.encoder:
            h = stage(h)
        assert torch.allclose(model.encode(x), h, atol=1e-6)
        # same weights, default normalisation: a different encoding, so the buffers are used
        other = Autoencoder(AutoencoderConfig(n_blocks=1)).eval()
        other.load_state_dict(model.state_dict())
        assert not torch.allclose(other.encode(x), model.encode(x))
        # the decoder undoes it: the output is back in [0, 1] units
        assert torch.allclose(model.decode(h), (model.decoder(h) * model.std + model.mean).clamp(0, 1))


def test_config_round_trips_through_dict_and_json() -> None:
    config = AutoencoderConfig(widths=(16, 8, 4), latent_channels=2, n_blocks=3, stage_activation=False, activation="gelu")
    assert AutoencoderConfig.from_dict(config.to_dict()) == config
    assert AutoencoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert Autoencoder(config).config is config
    with pytest.raises(ValueError, match="unknown AutoencoderConfig fields: colour"):
        AutoencoderConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="activation"):
        AutoencoderConfig(activation="tanhh")
    with pytest.raises(ValueError, match="widths"):
        AutoencoderConfig(widths=(8, 8))


def test_other_widths_and_latent_channels_build_and_run() -> None:
    model = small_model(widths=(16, 8, 4), latent_channels=2)
    with torch.no_grad():
        z = model.encode(batch(65))
        assert z.shape == (2, 2, 17, 17)
        assert model.decode(z).shape == (2, 3, 65, 65)


@pytest.mark.parametrize("name,cls", [("gelu", nn.GELU), ("leaky_relu", nn.LeakyReLU), ("silu", nn.SiLU)])
def test_activation_from_the_config_is_used(name: str, cls: type) -> None:
    relu = small_model()
    other = small_model(activation=name)
    kinds = {type(m) for m in other.modules()}
    assert cls in kinds and nn.ReLU not in kinds
    other.load_state_dict(relu.state_dict())  # activations have no weights: same state dict
    x = batch(65)
    with torch.no_grad():
        assert other(x).shape == x.shape
        assert not torch.allclose(other.encode(x), relu.encode(x))


def test_stage_activation_false_drops_only_the_stage_activations() -> None:
    with_relu, without = small_model(n_blocks=2), small_model(n_blocks=2, stage_activation=False)
    count = lambda m: sum(isinstance(x, nn.ReLU) for x in m.modules())
    assert count(with_relu) - count(without) == 6  # one after each of the 3 + 3 stage convs
    assert count(without) == 2 * 3 * 2  # the one inside each residual block remains
    assert count_parameters(with_relu) == count_parameters(without)
    with torch.no_grad():
        assert without(batch(65)).shape == (2, 3, 65, 65)


# --- introspection --------------------------------------------------------------------------------


def test_configs_stored_with_the_old_stage_relu_name_still_load() -> None:
    old = {**AutoencoderConfig(n_blocks=1).to_dict(), "stage_activation": None}
    del old["stage_activation"]
    old["stage_relu"] = False
    assert AutoencoderConfig.from_dict(old) == AutoencoderConfig(n_blocks=1, stage_activation=False)
    with pytest.raises(ValueError, match="unknown AutoencoderConfig fields: stage_relu"):
        AutoencoderConfig.from_dict({**AutoencoderConfig().to_dict(), "stage_relu": True})


@pytest.mark.parametrize("entry", ["encode", "encode_features", "encoder_forward", "forward"])
def test_every_encoding_entry_point_has_the_same_input_check(entry: str) -> None:
    """One check (model._check_batch) behind every way in: integer dtypes -> TypeError naming the
    conversion, wrong shape -> ValueError, non-tensors -> TypeError; encoder_forward only skips the 4k+1 rule."""
    model = small_model()
    call = getattr(model, entry)
    for dtype in (torch.uint8, torch.int64, torch.bool):
        with pytest.raises(TypeError, match=rf"dtype {dtype}.*x\.float\(\) / 255"):
            call(torch.zeros(1, 3, 65, 65, dtype=dtype))
    with pytest.raises(ValueError, match="Nx3xHxW"):
        call(torch.rand(1, 1, 65, 65))
    with pytest.raises(ValueError, match="Nx3xHxW"):
        call(torch.rand(3, 65, 65))
    with pytest.raises(TypeError, match="torch.Tensor"):
        call([[0.5]])
    odd = batch(50, n=1, height=37)
    with torch.no_grad():
        if entry == "encoder_forward":
            assert call(odd)[0].shape == (1, 1, 10, 13)
        else:
            with pytest.raises(ValueError, match="4k\\+1"):
                call(odd)
