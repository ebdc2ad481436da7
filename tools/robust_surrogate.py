"""Throw-away: fine-tune a surrogate to be slightly robust (embedding self-distillation, FGSM-RS), on LFW
identities outside every benchmark/tuning sample."""

import argparse
import random
import time
from pathlib import Path

import torch

from facecloak.core.bench_protect import split_identities
from facecloak.core.detect import FaceDetector
from facecloak.core.device import configure_cpu_threads
from facecloak.core.image import load_image
from facecloak.core.verification import DetectionCache
from facecloak.core.zoo.registry import load_model

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--eps", type=float, default=2.0)
p.add_argument("--epochs", type=float, default=1.0)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--per-identity", type=int, default=4)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--out", default=None)
p.add_argument("--clean-weight", type=float, default=1.0)
a = p.parse_args()
configure_cpu_threads()
torch.manual_seed(0)
root = Path("/work/shared/data/lfw")
excluded = set()
for count, seed in ((50, 0), (40, 123), (40, 1), (40, 7), (40, 2), (40, 3)):
    excluded |= {i.name for i in split_identities(root, count, 2, seed)}
folders = sorted(f for f in root.iterdir() if f.is_dir() and f.name not in excluded)
rng = random.Random(0)
photos = []
for f in folders:
    ps = sorted(f.glob("*.jpg"))
    rng.shuffle(ps)
    photos += ps[: a.per_identity]
print(f"{len(excluded)} identities excluded, {len(folders)} used, {len(photos)} photos", flush=True)
det, cache = FaceDetector(), DetectionCache()
found = [(p, fc) for p in photos if (fc := cache.get(p, det)) is not None]
cache.save()
model = load_model(a.model)
t0 = time.time()
with torch.no_grad():
    X = torch.cat([model.aligner(load_image(p), [fc]) for p, fc in found])
    T = torch.cat([model(X[i : i + 64]) for i in range(0, len(X), 64)])
    Tf = torch.cat([model(X[i : i + 64].flip(-1)) for i in range(0, len(X), 64)])
print(f"{len(X)} crops {tuple(X.shape[1:])} in {time.time() - t0:.0f}s", flush=True)
hold = torch.arange(len(X))[-128:]
X, T, Tf, Xh, Th = X[:-128], T[:-128], Tf[:-128], X[hold], T[hold]


def pgd_eval(tag):
    e = 4 / 255
    d = torch.zeros_like(Xh, requires_grad=True)
    for _ in range(10):
        s = (model((Xh + d).clamp(0, 1)) * Th).sum(1)
        (g,) = torch.autograd.grad(s.sum(), d)
        d = (d.detach() - e / 4 * g.sign()).clamp(-e, e).requires_grad_(True)
    with torch.no_grad():
        adv = (model((Xh + d).clamp(0, 1)) * Th).sum(1).mean()
        cl = (model(Xh) * Th).sum(1).mean()
    print(f"[{tag}] held-out clean cos {cl:.3f}  PGD10 eps4 cos {adv:.3f}", flush=True)


pgd_eval("before")
student = model
for q in student.network.parameters():
    q.requires_grad_(True)
opt = torch.optim.Adam(student.network.parameters(), lr=a.lr)
eps = a.eps / 255
n = len(X)
steps = int(a.epochs * n / a.batch)
perm = torch.randperm(n)
log_c = log_a = log_a0 = 0.0
t0 = time.time()
for step in range(steps):
    idx = perm[(torch.arange(a.batch) + step * a.batch) % n]
    x = X[idx]
    t = T[idx]
    flip = torch.rand(len(idx)) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    t = torch.where(flip[:, None], Tf[idx], t)
    delta = ((torch.rand_like(x) * 2 - 1) * eps).requires_grad_(True)
    sim0 = (student((x + delta).clamp(0, 1)) * t).sum(1)
    (g,) = torch.autograd.grad(sim0.sum(), delta)
    delta = (delta.detach() - 1.25 * eps * g.sign()).clamp(-eps, eps)
    xa = (x + delta).clamp(0, 1)
    ca = (student(xa) * t).sum(1)
    cc = (student(x) * t).sum(1)
    loss = (1 - ca).mean() + a.clean_weight * (1 - cc).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    w = 0.1 if step else 1.0
    log_c = (1 - w) * log_c + w * cc.mean().item()
    log_a = (1 - w) * log_a + w * ca.mean().item()
    if step % 20 == 0 or step == steps - 1:
        print(f"step {step}/{steps} clean cos {log_c:.3f} adv cos {log_a:.3f} ({time.time() - t0:.0f}s)", flush=True)
pgd_eval("after")
out = a.out or f"/tmp/robust/{a.model}_e{a.eps:g}.pt"
torch.save({k: v.detach().clone() for k, v in student.network.state_dict().items()}, out)
print("saved", out)
