"""aeutils.introspect: the layer table, FLOPs per stage and receptive fields of notebook 02."""
from __future__ import annotations

import pytest
import torch

from aeutils.introspect import (
    empirical_receptive_field,
    flops_per_stage,
    format_table,
    layer_table,
    receptive_field,
    stages,
)
from aeutils.model import Autoencoder, AutoencoderConfig, count_parameters

from tinymodels import SMALL, small_model


def test_layer_table_for_181_px() -> None:
    model = Autoencoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = layer_table(model, side=181)
    assert sum(r["params"] for r in rows) == count_parameters(model) == 1_924_004
    assert rows[0]["output"] == (3, 181, 181) and rows[-1]["output"] == (3, 181, 181)
    latent = [r for r in rows if r["stage"] == "encoder.latent"]
    assert [r["output"] for r in latent] == [(1, 46, 46)]
    blocks = [r for r in rows if r["layer"].startswith("ResidualBlock")]
    assert len(blocks) == 6 and all(r["layer"].endswith(" x10") for r in blocks)
    assert {r["stage"] for r in rows[1:]} == {name for name, _ in stages(model)}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not run, not changed
    text = format_table(rows)
    assert text.splitlines()[0].split() == ["stage", "layer", "output", "params"]
    assert len(text.splitlines()) == len(rows) + 2 and "1,924,004" not in text and "741,120" in text


def test_flops_per_stage_match_the_convolution_arithmetic() -> None:
    rows = {r["stage"]: r for r in flops_per_stage(Autoencoder(), side=181)}
    conv = lambda cin, cout, side: 2 * cin * cout * 9 * side * side  # 2 FLOPs per multiply-add
    assert rows["encoder.stage1"]["flops"] == conv(3, 64, 91) + 20 * conv(64, 64, 91)
    assert rows["encoder.latent"]["flops"] == conv(8, 1, 46)
    assert rows["decoder.stage3"]["flops"] == conv(1, 8, 46) + 20 * conv(8, 8, 46)
    assert rows["decoder.output"]["output"] == (3, 181, 181)
    assert sum(r["params"] for r in rows.values()) == 1_924_004
    assert list(rows) == [name for name, _ in stages(Autoencoder(SMALL))]


@pytest.mark.parametrize("n_blocks", [0, 1, 2, 10])
def test_receptive_field_from_the_conv_stack(n_blocks: int) -> None:
    # 3x3 convs: +2 px at stride 1, +4 for each conv at /2 (head 2 and 2N block convs), +8 at /4
    expected = 1 + 2 + 2 * n_blocks * 4 + 4 + 2 * n_blocks * 8 + 8 + 2 * n_blocks * 8 + 8
    assert receptive_field(AutoencoderConfig(n_blocks=n_blocks)) == expected
    assert receptive_field() == 423


@pytest.mark.parametrize("n_blocks", [0, 1])
def test_empirical_receptive_field_matches_the_analytic_one(n_blocks: int) -> None:
    model = small_model(n_blocks=n_blocks)
    rf = empirical_receptive_field(model, side=129)
    assert rf.support == receptive_field(model.config)  # fits inside 129 px: the gradient reaches its edge
    assert 0 < rf.effective <= rf.support and rf.gradient.shape == (129, 129)
    assert all(p.grad is None for p in model.parameters()) and not model.training
    # the gradient is centred on the input pixel under the centre latent pixel (4 * 16 = 64)
    nz = torch.nonzero(rf.gradient)
    assert (nz.min(0).values + nz.max(0).values).tolist() == [128, 128]
