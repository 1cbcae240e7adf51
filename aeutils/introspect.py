"""Looking inside an :class:`~aeutils.model.Autoencoder` (notebook 02): per-stage output shapes and
parameters (:func:`layer_table`), FLOPs per stage (:func:`flops_per_stage`, ``torch.utils.flop_counter``),
the receptive field of one latent pixel, analytic (:func:`receptive_field`) and from the gradient
(:func:`empirical_receptive_field`), and :func:`format_table` to print the tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aeutils.model import TAPS, Autoencoder, AutoencoderConfig, ResidualBlock, check_size

#: names of the decoder's four parts, in order (mirrors of stage3, stage2, stage1, then the output conv)
DECODER_STAGES: tuple[str, ...] = ("stage3", "stage2", "stage1", "output")


def stages(model: Autoencoder) -> list[tuple[str, nn.Module]]:
    """The eight parts of the model in forward order, named ``encoder.<TAPS>`` (each encoder stage by the
    tap it ends at) and ``decoder.<DECODER_STAGES>``."""
    return [(f"encoder.{n}", m) for n, m in zip(TAPS, model.encoder)] + [
        (f"decoder.{n}", m) for n, m in zip(DECODER_STAGES, model.decoder)
    ]


def _describe(module: nn.Module) -> str:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        kind = "ConvT" if isinstance(module, nn.ConvTranspose2d) else "Conv"
        k, s = module.kernel_size[0], module.stride[0]
        return f"{kind}{k}x{k}/{s} {module.in_channels}->{module.out_channels}"
    if isinstance(module, ResidualBlock):
        conv = module.body[0]
        kind = "ConvT" if isinstance(conv, nn.ConvTranspose2d) else "Conv"
        return f"ResidualBlock({kind}, {conv.in_channels})"
    return type(module).__name__


def _meta_model(model: Autoencoder) -> Autoencoder:
    """A copy of ``model``'s architecture on the meta device: shapes and FLOPs without compute."""
    with torch.device("meta"):
        return Autoencoder(model.config).eval()


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_table(model: Autoencoder, side: int = 181) -> list[dict[str, Any]]:
    """One row per layer of a forward pass of a 1x3x``side``x``side`` input (pixels), runs of
    identical residual blocks merged into one row. Computed on a meta-device copy: instant, and
    ``model`` is not run or changed.

    Rows are dicts: ``stage`` (see :func:`stages`, or ``"input"``), ``layer`` (description, with
    ``" xN"`` for N merged blocks), ``output`` (C, H, W of one image), ``params`` (parameters of
    the row). The params column sums to the model's parameter count.
    """
    check_size(side, side)
    meta = _meta_model(model)
    records: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    for name, stage in stages(meta):
        for layer in stage if isinstance(stage, nn.Sequential) else [stage]:
            layer.register_forward_hook(lambda mod, inp, out, name=name: records.append((name, mod, tuple(out.shape[1:]))))
    with torch.no_grad():
        meta(torch.zeros(1, meta.config.in_channels, side, side, device="meta"))
    rows: list[dict[str, Any]] = [
        {"stage": "input", "layer": "RGB in [0, 1]", "output": (meta.config.in_channels, side, side), "params": 0}
    ]
    merged: list[int] = [1]  # blocks merged into each row
    for name, mod, shape in records:
        desc, prev = _describe(mod), rows[-1]
        block = isinstance(mod, ResidualBlock)
        if block and prev["stage"] == name and prev["layer"].split(" x")[0] == desc and prev["output"] == shape:
            merged[-1] += 1
            prev["layer"] = f"{desc} x{merged[-1]}"
            prev["params"] += _n_params(mod)
            continue
        rows.append({"stage": name, "layer": desc + (" x1" if block else ""), "output": shape, "params": _n_params(mod)})
        merged.append(1)
    return rows


def flops_per_stage(model: Autoencoder, side: int = 181) -> list[dict[str, Any]]:
    """Parameters and FLOPs of each part (:func:`stages`) for one ``side`` x ``side`` image.

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy
    (convolutions, 2 per multiply-add; BatchNorm, activations, the residual additions and the
    normalisation are not counted). Rows: ``stage``, ``output`` (C, H, W), ``params``, ``flops``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    check_size(side, side)
    meta = _meta_model(model)
    h = torch.zeros(1, meta.config.in_channels, side, side, device="meta")
    rows = []
    with torch.no_grad():
        for name, stage in stages(meta):
            counter = FlopCounterMode(display=False)
            with counter:
                h = stage(h)
            rows.append({"stage": name, "output": tuple(h.shape[1:]), "params": _n_params(stage), "flops": counter.get_total_flops()})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts (same keys) as an aligned text table; ints get thousands separators."""
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [[f"{r[k]:,}" if isinstance(r[k], int) and not isinstance(r[k], bool) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    right = [all(isinstance(r[k], (int, float)) for r in rows) for k in keys]
    fmt = lambda vals: "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(vals, widths, right)).rstrip()
    return "\n".join([fmt(keys), fmt(["-" * w for w in widths]), *map(fmt, cells)])


def receptive_field(config: AutoencoderConfig | None = None) -> int:
    """Theoretical receptive field of one latent pixel, in input pixels (a square of this side).

    Walks the encoder's convolutions in order: each k x k conv adds (k - 1) x jump pixels, and
    its stride multiplies the jump (input pixels between neighbouring outputs). The residual
    blocks' convs are all on the longest path: 23 + 40 x n_blocks for the default widths/strides
    (423 px at n_blocks = 10, wider than a 181 px patch).
    """
    with torch.device("meta"):
        model = Autoencoder(config)
    rf, jump = 1, 1
    for module in model.encoder.modules():
        if isinstance(module, nn.Conv2d):
            rf += (module.kernel_size[0] - 1) * module.dilation[0] * jump
            jump *= module.stride[0]
    return rf


@dataclass
class EmpiricalReceptiveField:
    """|d latent(centre) / d input| summed over RGB (``gradient``, side x side), the side of the
    bounding box where it is non-zero (``support``, px) and of the centred square holding
    ``mass`` of it (``effective``, px)."""

    gradient: torch.Tensor
    support: int
    effective: int
    mass: float


def empirical_receptive_field(model: Autoencoder, side: int = 181, mass: float = 0.9, seed: int = 0) -> EmpiricalReceptiveField:
    """Gradient of the centre latent pixel (c = latent side // 2, over input pixel 4c) w.r.t. a
    random ``side`` x ``side`` RGB input in [0, 1] (eval mode; parameters and their ``.grad`` are
    left untouched). Squares are centred on input pixel 4c and clipped to the image."""
    check_size(side, side)
    was_training = model.training
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, model.config.in_channels, side, side, generator=gen, dtype=param.dtype).to(param.device)
    x.requires_grad_(True)
    try:
        model.eval()
        z = model.encode(x)
        c = z.shape[-1] // 2
        (grad,) = torch.autograd.grad(z[0, :, c, c].sum(), x)
    finally:
        model.train(was_training)
    g = grad[0].abs().sum(0).detach().cpu()
    nz = torch.nonzero(g)
    support = int((nz.max(0).values - nz.min(0).values + 1).max()) if len(nz) else 0
    centre = 4 * c  # input pixel under latent pixel c (stride 4, padding keeps centres aligned)
    total = float(g.sum())
    effective = 0
    for r in range(side):
        lo0, hi0 = max(centre - r, 0), min(centre + r + 1, side)
        if total == 0 or float(g[lo0:hi0, lo0:hi0].sum()) >= mass * total:
            effective = 2 * r + 1
            break
    return EmpiricalReceptiveField(g, support, effective, mass)
