"""Other routes to a faster CPU training step, each against the plain fp32 loop in the same run.

``bench/train_speed.py`` measures the trainer's own options (channels_last, bf16 autocast). This script
measures the routes that are not trainer options, so the README's "tried, not shipped" list rests on a
command, not on memory. Every route trains the DEFAULT architecture on the same 3x181x181 batch with
Adam + MSE and computes the same gradients (checked first against the plain loop at the same weights;
the printed floor is how far the plain loop's own gradients move when the input moves by
1e-6, tens of float32 ulps: 40 BatchNorm layers at initialisation amplify tiny differences):

* plain: the model as built, NCHW float32 (the baseline, as in ``bench/train_speed.py``);
* layout: every convolution runs its forward and input gradient in channels_last (oneDNN's faster
  layout for those on AVX2) and its weight gradient in NCHW (faster there), via ``aten.convolution``
  and ``aten.convolution_backward`` in a custom autograd function; BatchNorm stays NCHW;
* nnpack: the 3x3 stride-1 convolutions (about 90% of the FLOPs) run forward and input gradient through
  PyTorch's NNPACK kernel (``torch._nnpack_spatial_convolution``), weight gradient through oneDNN;
* compile (``--compile``): ``torch.compile(model)`` (inductor; minutes of compilation on 2 cores).

It also profiles one plain step (``torch.profiler``) and prints the share of CPU time spent in
convolution operators: the part any route has to speed up.

    python bench/cpu_step_routes.py              # batch 4, 1 warm-up + 5 interleaved repeats per route
    python bench/cpu_step_routes.py --compile    # + the torch.compile route
    python bench/cpu_step_routes.py --smoke      # tiny model: seconds (pytest runs this)
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from train_speed import PATCH, Step, interleaved_rates, plain_step

aten = torch.ops.aten
CL = torch.channels_last


class _LayoutConv(torch.autograd.Function):
    """Convolution with forward + input gradient in channels_last, weight gradient in NCHW."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv: nn.Module, output_padding: list[int]):  # type: ignore[override]
        transposed = isinstance(conv, nn.ConvTranspose2d)
        p = (list(conv.stride), list(conv.padding), list(conv.dilation), transposed, output_padding, conv.groups)
        x_cl = x.contiguous(memory_format=CL)
        ctx.save_for_backward(x_cl, weight)
        ctx.p, ctx.has_bias = p, bias is not None
        return aten.convolution(x_cl, weight, bias, *p)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x_cl, weight = ctx.saved_tensors
        p = ctx.p
        bias_sizes = [grad.shape[1]] if ctx.has_bias else None
        gx = None
        if ctx.needs_input_grad[0]:
            gx = aten.convolution_backward(grad.contiguous(memory_format=CL), x_cl, weight, bias_sizes, *p,
                                           [True, False, False])[0]
        _, gw, gb = aten.convolution_backward(grad.contiguous(), x_cl.contiguous(), weight, bias_sizes, *p,
                                              [False, True, ctx.has_bias])
        return gx, gw, gb, None, None


class _NNPackConv(torch.autograd.Function):
    """3x3 stride-1 padding-1 convolution (or its transpose): forward and input gradient by NNPACK
    (both are ordinary convolutions: the transpose's kernel is the flipped, swapped one), weight
    gradient by oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias, transposed: bool):  # type: ignore[override]
        k = weight.transpose(0, 1).flip(2, 3).contiguous() if transposed else weight
        ctx.save_for_backward(x, weight)
        ctx.transposed, ctx.has_bias = transposed, bias is not None
        return torch._nnpack_spatial_convolution(x.contiguous(), k, bias, [1, 1])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = None
        if ctx.needs_input_grad[0]:
            k = weight if ctx.transposed else weight.transpose(0, 1).flip(2, 3).contiguous()
            gx = torch._nnpack_spatial_convolution(grad, k, None, [1, 1])
        bias_sizes = [grad.shape[1]] if ctx.has_bias else None
        _, gw, gb = aten.convolution_backward(grad, x, weight, bias_sizes, [1, 1], [1, 1], [1, 1], ctx.transposed,
                                              [0, 0], 1, [False, True, ctx.has_bias])
        return gx, gw, gb, None


def _layout_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out_pad = [0, 0]
    if isinstance(self, nn.ConvTranspose2d):
        out_pad = list(self._output_padding(x, None, list(self.stride), list(self.padding), list(self.kernel_size), 2,
                                            list(self.dilation)))
    return _LayoutConv.apply(x, self.weight, self.bias, self, out_pad)


def _nnpack_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _NNPackConv.apply(x, self.weight, self.bias, isinstance(self, nn.ConvTranspose2d))


def route_model(model: nn.Module, route: str) -> nn.Module:
    """A copy of ``model`` (same weights) whose convolutions take ``route`` ("layout" or "nnpack")."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        if route == "layout":
            m.forward = types.MethodType(_layout_forward, m)
        elif route == "nnpack" and (m.kernel_size, m.stride, m.padding, m.groups) == ((3, 3), (1, 1), (1, 1), 1):
            m.forward = types.MethodType(_nnpack_forward, m)
    return model


def gradients(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All parameter gradients of MSE(model(x), x), concatenated (the model's BatchNorm statistics are
    restored afterwards)."""
    buffers = copy.deepcopy(list(model.buffers()))
    model.zero_grad(set_to_none=True)
    F.mse_loss(model(x), x).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    model.zero_grad(set_to_none=True)
    return grads


def conv_share(model: nn.Module, x: torch.Tensor) -> float:
    """Share of one plain training step's operator CPU time spent in convolution operators (self time)."""
    from torch.profiler import ProfilerActivity, profile

    step = plain_step(copy.deepcopy(model))
    step(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of one step per route (default 5)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile route (slow to compile)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, batch 2, 2 repeats: seconds")
    args = parser.parse_args(argv)

    from aeutils.model import Autoencoder, AutoencoderConfig

    config = AutoencoderConfig(widths=(8, 8, 4), n_blocks=1) if args.smoke else AutoencoderConfig()
    batch, repeats = (2, 2) if args.smoke else (args.batch_size, args.repeats)
    torch.manual_seed(0)
    x = torch.rand(batch, 3, PATCH, PATCH)
    base = Autoencoder(config).train()
    models = {"plain": copy.deepcopy(base), "layout": route_model(base, "layout")}
    if torch._nnpack_available():  # also initialises NNPACK, which its kernel needs first
        models["nnpack"] = route_model(base, "nnpack")
    if args.compile:
        models["compile"] = torch.compile(copy.deepcopy(base))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}; "
          f"widths={config.widths} n_blocks={config.n_blocks}, batch {batch}x3x{PATCH}x{PATCH}, "
          f"1 warm-up + {repeats} interleaved repeats per route")

    reference = gradients(models["plain"], x)
    noisy = x + 1e-6 * torch.randn_like(x)  # a change of tens of float32 ulps: the error floor
    floor = (gradients(models["plain"], noisy) - reference).norm() / reference.norm()
    print(f"   floor: plain, input moved by 1e-6 (tens of float32 ulps), relative L2 error {floor:.1e}")
    for name, model in models.items():
        err = (gradients(model, x) - reference).norm() / reference.norm()
        print(f"{name:>8}: gradient vs plain, relative L2 error {err:.1e}")

    steps: dict[str, Step] = {name: plain_step(model) for name, model in models.items()}
    names = list(steps)
    rates, _ = interleaved_rates(steps, x, 1, repeats, warmup=1)  # the warm-up also compiles
    med = {name: statistics.median(v) for name, v in rates.items()}
    for name in names:
        print(f"{name:>8}: {med[name]:.3g} img/s median (range {min(rates[name]):.3g}-{max(rates[name]):.3g}), "
              f"{med[name] / med['plain']:.2f}x plain")
    print(f"convolution operators: {conv_share(base, x):.0%} of a plain step's operator CPU time (torch.profiler)")
    best = max(names[1:], key=lambda n: med[n])
    print(f"best route: {best} at {med[best] / med['plain']:.2f}x plain (target >= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
