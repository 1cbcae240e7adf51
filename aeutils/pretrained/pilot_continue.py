"""The script behind this folder's continuation pilots (see README.md): warm-start a model (the shipped
one, or ``--init CHECKPOINT``), optionally perturb the INPUT (HED stain jitter ``--stain`` and Gaussian
noise up to ``--noise``) while the target stays clean, MSE + 0.05 (1 - SSIM), 61 px crops of the
training role of ``work/two_tissue`` (both bundled slides), batch 16, AdamW, cosine over ``--steps``,
stopped after ``--minutes``; one CPU thread. Writes a model-only checkpoint to ``--out``.

    python aeutils/pretrained/pilot_continue.py --out /tmp/pilotE.pt [--perturb] [--init CKPT] [--lr 1e-3]

The perturbation lives here, not in ``aeutils.training``, because TrainConfig has no hook for an input
transform that leaves the target clean (``stain_jitter`` changes both); the field to add would be
``input_noise: float`` / ``input_stain_jitter: float`` applied to the input only.
"""
import argparse, math, time
import numpy as np, torch
from aeutils.checkpoint import load_model, save_checkpoint
from aeutils.data import PatchDataset, hed_jitter
from aeutils.training import ReconstructionLoss

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--perturb", action="store_true")
ap.add_argument("--stain", type=float, default=0.05)
ap.add_argument("--noise", type=float, default=0.03)
ap.add_argument("--minutes", type=float, default=12)
ap.add_argument("--steps", type=int, default=1400)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--init", default=None)
a = ap.parse_args()
torch.set_num_threads(1); torch.manual_seed(0); np.random.seed(0)
model = load_model(a.init).train()  # a.init None: the shipped model
ds = PatchDataset("work/two_tissue", "train", crop=61, augment=True)
dl = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=0, drop_last=True)
lossf = ReconstructionLoss(mse=1.0, ssim=0.05)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
rng = np.random.default_rng(0)
def perturb(x):
    out = []
    for im in x:
        u = rng.uniform(-1, 1, 6)
        j = hed_jitter(im.permute(1, 2, 0).numpy(), u[:3] * a.stain, u[3:] * a.stain / 10)
        out.append(torch.from_numpy(j).permute(2, 0, 1))
    y = torch.stack(out)
    sig = torch.rand(len(y), 1, 1, 1) * a.noise
    return (y + sig * torch.randn_like(y)).clamp(0, 1)
t0 = time.time(); step = 0
while step < a.steps and time.time() - t0 < a.minutes * 60:
    for x in dl:
        inp = perturb(x) if a.perturb else x
        total, parts = lossf(model(inp), x)
        opt.zero_grad(); total.backward(); opt.step(); sched.step(); step += 1
        if step % 50 == 0:
            print(f"step {step} loss {total.item():.5f} {time.time()-t0:.0f}s", flush=True)
        if step >= a.steps or time.time() - t0 > a.minutes * 60:
            break
model.eval()
save_checkpoint(a.out, model, meta={"pilot": vars(a), "steps": step, "seconds": time.time() - t0})
print("done", step, "steps", f"{time.time()-t0:.0f}s", flush=True)
