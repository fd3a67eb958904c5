"""Measures of a restored model on a point set: sigma against g_FS on the same points, the Ricci measure."""
from __future__ import annotations

import copy

import torch

from mflow.geometry import curvature
from mflow.geometry.points import CYPoints

from .checkpoints import LoadedCheckpoint


def sigma_fs(points: CYPoints) -> float:
    """sigma of the Fubini-Study metric on the points (eq. B.11)."""
    return float(points.sigma())


def ricci_measures(ck: LoadedCheckpoint, points: CYPoints, k: int) -> dict | None:
    """Ricci measure of the model and of the FS metric on the first k points (None without second derivatives)."""
    if k <= 0 or not ck.has_derivatives or len(points) == 0:
        return None
    p = points[:k]
    model = ck.module.model
    if next(model.parameters(), torch.zeros(())).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # the curvature code builds its tangent directions on the CPU
    out = {"n": len(p)}
    for s in (ck.surface, getattr(ck.module, "surface", ck.surface)):
        s.gradient(p.z[:1])  # fills the surface's cached derivative terms outside torch.func's transforms
    for name, fn in (("model", model), ("fs", curvature.fs_metric_fn(ck.surface))):
        out[name], used = curvature.ricci_measure_on(fn, p, ck.surface.dim)
        if name == "model":
            out["n_positive_definite"] = used
    return out


def stats(d: torch.Tensor) -> dict:
    """n, min, mean, median, max of distances [N] (None for an empty set)."""
    d = d.double()
    if len(d) == 0:
        return {"n": 0, "min": None, "mean": None, "median": None, "max": None}
    return {"n": len(d), "min": float(d.min()), "mean": float(d.mean()), "median": float(d.median()), "max": float(d.max())}


def measure(module, points: CYPoints) -> dict:
    """sigma of the model and of g_FS on the same points, the gain sigma_FS / sigma, and the points where the
    model's metric is not positive definite (FlowModule.measure)."""
    m = module.measure(points)
    s_fs, s = sigma_fs(points), m["sigma"]
    return {"n": len(points), "sigma_fs": s_fs, "sigma": s, "gain": s_fs / s if s > 0 else float("inf"), "not_pd": m["not_pd"]}
