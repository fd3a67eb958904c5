"""A network's metric-NTK frozen at given parameters, flowed (eq. 2.12), and its alignment with the target.

The frozen flow with the empirical metric-NTK of a network at its current parameters (mflow.kernels.network,
applied matrix-free by NTK-vector products) from g_FS: at initialisation it is the network's frozen NTK; after
training, its "after kernel". Used by studies/after_kernel.py and studies/width.py.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from mflow import losses
from mflow.evaluation.checkpoints import load_checkpoint
from mflow.flows import FrozenKernelFlow, NetworkFlow
from mflow.geometry.forms import dual_components
from mflow.kernels.network import NetworkNTK
from mflow.ntk import ntk_vp


def initial_network(run: Path) -> NetworkFlow:
    """A train.py run's network at initialisation, rebuilt from its config.yaml (model.init_seed fixes the weights) on
    the run's manifold, which its checkpoint records (the model section does not)."""
    init = yaml.safe_load((Path(run) / "config.yaml").read_text())["model"]["init_args"]
    return NetworkFlow(load_checkpoint(Path(run) / "checkpoints" / "last.ckpt").surface, **init)


def sigma(points, g) -> float:
    """sigma (eq. B.11) of the metric g [N, m, m] on the points."""
    return float(points.sigma(g))


def lambda_max(model, pts, iters: int = 15) -> float:
    """Largest eigenvalue of the metric-NTK on the points (power iteration with NTK-vector products)."""
    p = (pts.z, pts.patch, pts.elim)
    v = torch.randn(len(pts), pts.g_fs.shape[-1] ** 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lam = 0.0
    for _ in range(iters):
        v = v / v.norm()
        w = ntk_vp(model, p, p, v, params={k: t.detach() for k, t in model.named_parameters()})
        lam = float((v * w).sum())
        v = w
    return lam


def after_kernel_flow(model, surface, train, test, kappa: float, fc: dict) -> dict:
    """The frozen flow (eq. 2.12) with the model's metric-NTK from g_FS on the train points: the step picked from
    fc['lr_grid'] (times N / lambda_max) by the train gain of fc['search_steps'] steps, then fc['steps'] steps.
    Returns the chosen step, the search, and the train gain and test gain (sigma_FS / sigma)."""
    kernel = NetworkNTK(model, "fs")
    lam = lambda_max(model, train)

    def flow(lr, steps):
        f = FrozenKernelFlow(surface, kernel, lr=lr, lr_step_decay=fc["lr_step_decay"], loss=fc["loss"],
                             reduction=fc["reduction"], pd_policy="backtrack", max_backtracks=30).attach(train, kappa)
        for _ in range(steps):
            f.flow_step()
        return f

    s0 = sigma(train, train.g_fs)
    trials = {}
    for c in fc["lr_grid"]:
        try:
            trials[c] = s0 / float(flow(c * len(train) / lam, fc["search_steps"]).train_sigma())
        except (FloatingPointError, ValueError):
            trials[c] = 0.0
    failed = []  # a step fine for the short search can still leave the PD cone later: the next best then runs
    for c in sorted(trials, key=trials.get, reverse=True):
        try:
            f = flow(c * len(train) / lam, fc["steps"])
            break
        except FloatingPointError:
            failed.append(c)
    else:
        raise FloatingPointError(f"the after-kernel flow left the positive-definite cone at every step of {fc['lr_grid']}")
    return {"lambda_max": lam, "lr_scale": c, "failed_lr_scales": failed, "search": [[k, v] for k, v in trials.items()],
            "train_gain": s0 / float(f.train_sigma()),
            "test_gain": sigma(test, test.g_fs) / sigma(test, f.predict_metric(test))}


def alignment(model, train, test, kappa: float) -> float:
    """The kernel's alignment with the target at g_FS: cos(-Theta(test, train) dL/dr(train), -dL/dr(test)), the cosine
    between what one flow step from g_FS does at the test points and the ideal direction there (1: exactly downhill;
    0: orthogonal), r the metric's real components and L the sigma loss (eq. B.11)."""
    params = {k: t.detach() for k, t in model.named_parameters()}
    k = torch.tensor(kappa, dtype=torch.float64)

    def grad(p):
        g = p.g_fs.clone().requires_grad_(True)
        (G,) = torch.autograd.grad(losses.sigma_loss(g, p.as_batch(), k), g)
        return dual_components((G + G.conj().transpose(-1, -2)) / 2)

    u = ntk_vp(model, (test.z, test.patch, test.elim), (train.z, train.patch, train.elim), grad(train), params=params)
    y = grad(test)
    return float((u * y).sum() / (u.norm() * y.norm()))
