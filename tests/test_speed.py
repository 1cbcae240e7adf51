"""aeutils.speed: the interleaved probe, the decision rules (forced, env, too short to pay, cached
inference), that a probe leaves the run's weights and RNG alone, and that bf16 keeps quality."""
from __future__ import annotations

import time

import pytest
import torch

from aeutils import speed
from aeutils.errors import AeutilsError
from aeutils.model import Autoencoder, AutoencoderConfig
from aeutils.speed import CANDIDATES, Choice
from aeutils.training import ReconstructionLoss, Trainer, choose_speed

TINY = AutoencoderConfig(n_blocks=1, widths=(8, 8, 4))
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_env_and_fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(speed.ENV, raising=False)
    speed.clear_cache()


def test_choice_flags_and_round_trip() -> None:
    assert [(Choice(n).channels_last, Choice(n).amp) for n in CANDIDATES] == [
        (False, False), (True, False), (False, True), (True, True)]
    c = Choice("bf16", "probe", {"fp32": 1.0, "bf16": 2.5}, 0.5)
    assert Choice.from_dict(c.to_dict()) == c
    assert "bf16 [probe]" in c.describe() and "bf16 2.5" in c.describe()
    with pytest.raises(AeutilsError, match="fp16"):
        Choice("fp16")
    assert speed.candidates_for(channels_last=True) == ["channels_last", "channels_last+bf16"]
    assert speed.candidates_for(amp=False) == ["fp32", "channels_last"]


def test_decide_needs_the_margin_over_the_baseline() -> None:
    assert speed.decide({"fp32": 10.0, "bf16": 10.4}) == "fp32"  # within noise: keep the baseline
    assert speed.decide({"fp32": 10.0, "bf16": 11.0, "channels_last": 9.0}) == "bf16"
    assert speed.decide({"fp32": 10.0, "channels_last": 4.0}) == "fp32"


def test_measure_interleaves_and_screens_out_a_hopeless_arm() -> None:
    calls: list[str] = []

    def arm(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)
        return run

    rates, seconds = speed.measure({"base": arm("base", 0.01), "slow": arm("slow", 0.05), "same": arm("same", 0.01)},
                                   images=4, warmup=1, repeats=2)
    assert calls == ["base", "slow", "same", "base", "slow", "same", "same", "slow", "base"]  # warm-up, A B C, C B A
    assert rates["base"] > rates["slow"] and rates["slow"] < 4 / 0.05 and seconds >= 0.15
    assert speed.decide(rates) in ("base", "same")
    # a one-image screen first: an arm still > 5x slower there after a few calls never runs at full size
    calls.clear()
    rates, _ = speed.measure(
        {"base": arm("base", 0.01), "slow": arm("slow", 0.25), "ok": arm("ok", 0.01)}, images=4,
        screen={"base": arm("base:1", 0.005), "slow": arm("slow:1", 0.2), "ok": arm("ok:1", 0.005)})
    assert calls[:3] == ["base:1", "slow:1", "ok:1"] and calls.count("slow:1") == speed.SCREEN_ROUNDS
    assert "slow" not in calls and rates["slow"] == 0.0 and rates["base"] > 0 and rates["ok"] > 0
    # a tiny arm is never screened out: below 0.1 s timing noise rules
    calls.clear()
    rates, _ = speed.measure({"base": arm("base", 0.0), "slow": arm("slow", 0.02)}, images=1,
                             screen={"base": arm("base:1", 0.0), "slow": arm("slow:1", 0.02)})
    assert rates["slow"] > 0 and calls.count("slow:1") == 1


def test_forced_env_and_short_runs_do_not_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def make_step(c: Choice):
        built.append(c.name)
        return lambda x: None

    shape = (2, 3, 21, 21)
    assert speed.training_choice(make_step, shape, CPU, channels_last=True, amp=False).name == "channels_last"
    c = speed.training_choice(make_step, shape, CPU, expected_steps=PAYS_STEPS - 1, verbose=False)
    assert (c.name, c.source) == ("fp32", "short run")
    assert speed.training_choice(make_step, shape, CPU, amp=True, expected_steps=10, verbose=False).name == "bf16"
    monkeypatch.setenv(speed.ENV, "channels_last+bf16")
    assert speed.training_choice(make_step, shape, CPU, verbose=False) == Choice("channels_last+bf16", "env")
    with pytest.raises(AeutilsError, match="contradicts"):
        speed.training_choice(make_step, shape, CPU, amp=False, verbose=False)
    monkeypatch.setenv(speed.ENV, "fast")
    with pytest.raises(AeutilsError, match="MSCOPY_CPU_SPEED"):
        speed.training_choice(make_step, shape, CPU, verbose=False)
    assert built == []
    # on a non-CPU device the trainer's defaults, without a probe (no GPU needed to decide)
    assert speed.training_choice(make_step, shape, torch.device("meta")).name == "fp32"
    assert built == []


#: the smallest run (4 candidates x (1 warm-up + 2 timed) steps, x 20) for which a probe pays
PAYS_STEPS = speed.PAYS * len(CANDIDATES) * (speed.WARMUP + speed.REPEATS)


def test_time_budget_too_short_times_one_step_then_skips() -> None:
    built: list[str] = []

    def make_step(c: Choice):
        built.append(c.name)
        return lambda x: time.sleep(0.05)

    c = speed.training_choice(make_step, (2, 3, 21, 21), CPU, expected_steps=10**6, time_budget=1.0, verbose=False)
    assert (c.name, c.source, built) == ("fp32", "short run", ["fp32"])


def test_probe_on_a_real_model_leaves_weights_and_rng_alone(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = Autoencoder(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    c = choose_speed(model, ReconstructionLoss(), (2, 3, 21, 21), CPU, force="probe")
    assert c.source == "probe" and set(c.rates) == set(CANDIDATES) and c.name in CANDIDATES
    # 0 = screened out on the one-image slice (legitimate on a loaded machine); the baseline always runs
    assert c.rates["fp32"] > 0 and all(r >= 0 for r in c.rates.values()) and c.probe_seconds > 0
    assert c.rates[c.name] >= c.rates["fp32"]  # never a slower path than the baseline
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert capsys.readouterr().out.count("aeutils speed (training):") == 1  # one printed line


def test_inference_choice_probes_once_it_pays_then_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Autoencoder(TINY).eval()
    probes: list[int] = []
    real = speed.measure

    def counting(*a, **k):
        probes.append(1)
        return real(*a, **k)

    monkeypatch.setattr(speed, "measure", counting)
    shape = (2, 3, 21, 21)
    need = speed.PAYS * len(CANDIDATES) * (speed.WARMUP + speed.REPEATS)
    first = speed.inference_choice(model, shape, expected_batches=need - 1, verbose=False)
    assert (first.name, first.source, probes) == ("fp32", "not yet paid", [])
    paid = speed.inference_choice(model, shape, expected_batches=1, verbose=False)
    assert paid.source == "probe" and set(paid.rates) == set(CANDIDATES) and probes == [1]
    again = speed.inference_choice(Autoencoder(TINY), shape, expected_batches=10**6, verbose=False)  # same architecture
    assert again is paid and probes == [1]
    other = speed.inference_choice(model, (4, 3, 21, 21), verbose=False)  # another shape: its own count
    assert other.source == "not yet paid" and probes == [1]
    assert speed.inference_choice(model, shape, force="bf16").name == "bf16"
    monkeypatch.setenv(speed.ENV, "channels_last")
    assert speed.inference_choice(model, (4, 3, 21, 21)) == Choice("channels_last", "env", what="inference")


def test_inference_choice_on_a_small_probe_shape_counts_work_in_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Autoencoder(TINY).eval()
    seen: list[tuple[int, ...]] = []
    real = speed.measure

    def recording(arms, images, *a, **k):
        seen.append(images)
        return real(arms, images, *a, **k)

    monkeypatch.setattr(speed, "measure", recording)
    probe = (1, 3, 21, 21)
    calls = len(CANDIDATES) * (speed.WARMUP + speed.REPEATS)
    big = (1, 3, 81, 81)  # 14.9x the probe's elements: the probe pays after ceil(PAYS * calls / 14.9) such batches
    need = -(-speed.PAYS * calls * 21 * 21 // (81 * 81))
    first = speed.inference_choice(model, big, expected_batches=need - 1, probe_shape=probe, verbose=False)
    assert first.source == "not yet paid" and seen == []
    paid = speed.inference_choice(model, (1, 3, 81, 61), expected_batches=1, probe_shape=probe, verbose=False)
    assert paid.source == "probe" and seen == [1]  # shapes differ, the probe shape (the key) is the same
    assert speed.inference_choice(model, (2, 3, 45, 45), probe_shape=probe, verbose=False) is paid


def test_forward_under_every_choice_is_float32_nchw_and_close() -> None:
    torch.manual_seed(0)
    model = Autoencoder(TINY).eval()
    x = torch.rand(2, 3, 21, 21)
    with torch.inference_mode():
        ref = model(x)
        for name in CANDIDATES:
            y = speed.forward(model, x, Choice(name))
            assert y.dtype == torch.float32 and y.is_contiguous() and y.shape == ref.shape
            assert (y - ref).abs().max() < (0.03 if Choice(name).amp else 1e-5), name
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 weights


def test_bf16_training_keeps_validation_psnr_within_0_2_db() -> None:
    """Same seed, data and steps: validation PSNR of every bf16 candidate within 0.2 dB of fp32 (each
    evaluated as its run reports it, i.e. bf16 under bf16), and the weights stay fp32 masters."""
    cfg = AutoencoderConfig(n_blocks=0, widths=(8, 8, 4))
    g = torch.Generator().manual_seed(0)

    def smooth(n: int) -> torch.Tensor:  # H&E-like: one smooth stain intensity times a colour
        t = torch.nn.functional.interpolate(torch.rand(n, 1, 5, 5, generator=g), size=(33, 33), mode="bilinear",
                                            align_corners=True)
        return (1 - t * torch.tensor([0.35, 0.7, 0.45]).view(1, 3, 1, 1)).clamp(0, 1)

    train_x, val_x = smooth(32), smooth(16)
    psnr: dict[str, float] = {}
    for name in ("fp32", "bf16", "channels_last+bf16"):
        torch.manual_seed(0)
        tr = Trainer(Autoencoder(cfg), lr=3e-3, device="cpu", total_steps=120, speed=Choice(name, "forced"))
        assert tr.amp == Choice(name).amp
        for s in range(120):
            tr.step(train_x[(s % 4) * 8:(s % 4 + 1) * 8])
        assert all(p.dtype == torch.float32 for p in tr.module.parameters())
        psnr[name] = tr.evaluate([val_x])["psnr"]
    assert psnr["fp32"] > 16  # it did learn (about 12 dB at initialisation)
    for name in ("bf16", "channels_last+bf16"):
        assert abs(psnr[name] - psnr["fp32"]) <= 0.2, psnr


def test_cpu_description_is_report_only() -> None:
    d = speed.cpu_description()
    assert set(d) == {"model", "amx_bf16", "avx512_bf16", "threads"} and isinstance(d["amx_bf16"], bool)
