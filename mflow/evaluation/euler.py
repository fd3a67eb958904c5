"""The Euler characteristic of a learned metric (``evaluate.py --euler N``), by Gauss-Bonnet-Chern.

chi(X) = integral_X c_3 for any metric on X (mflow.geometry.chern), estimated by Monte Carlo on N fresh points of
all charts (the test seed), with its standard error counting the points of one sampling system together
(mflow.geometry.montecarlo), beside the topological value of X (CompleteIntersection.euler_number: -200 for the
quintic, -162 for the bicubic) and the Fubini-Study metric's estimate on the same points. Every globally defined
metric integrates to chi (Chern-Weil), so the figure checks that the learned metric is one, with the curvature the
code differentiates; its error shrinks as the metric's Euler form gets smoother. The section also has the model's
chi minus g_FS's on the same points, whose paired error (the per-point differences, by sampling system) is much
smaller than either's when the model is near g_FS: both integrate to chi, so it checks the learned metric's curvature
to that finer precision. The metric must be C^2: a ReLU network's curvature sits partly on its kinks, which the Monte
Carlo misses, so its figure is not chi: such a checkpoint is refused (check_smooth; SMOOTH_ACTIVATIONS).
Computed on the CPU (the curvature code builds its tangent directions there, like the Ricci measure).
"""
from __future__ import annotations

import copy
import math

import torch

from mflow.geometry import curvature
from mflow.geometry.chern import euler_density
from mflow.geometry.montecarlo import weighted_mean_error
from mflow.geometry.points import CYPoints
from mflow.geometry.volume import real_det

from .checkpoints import EvaluationError, LoadedCheckpoint


# the activations of mflow.choices.ACTIVATIONS whose networks are C^2 (C^infinity); relu is piecewise linear
# (tests/test_evaluate_euler.py holds SMOOTH_ACTIVATIONS + relu equal to the choices)
SMOOTH_ACTIVATIONS = ("gelu", "tanh", "cos")
# the error is counted by sampling system (5 points a system on the quintic): 100 points make >= 16 systems
MIN_POINTS = 100


def check_euler_points(n: int | None) -> None:
    """Refuse a point count for --euler below MIN_POINTS (None: no Euler characteristic asked for)."""
    if n is not None and n < MIN_POINTS:
        raise EvaluationError(f"--euler takes the number of points for the Euler characteristic, at least {MIN_POINTS} "
                              f"(its Monte Carlo error counts the points of a sampling system together, so it needs "
                              f"many systems; e.g. --euler 20000), got {n}")


def check_smooth(ck: LoadedCheckpoint) -> None:
    """Refuse --euler for a network whose metric is not C^2 (a ReLU activation: module doc), in one line. Kernel
    flows (no second derivatives: their section is None) and the bihomogeneous head (a polynomial) pass."""
    if not ck.has_derivatives or ck.hparams.get("head") == "bihomogeneous":
        return
    act = ck.hparams.get("activation")
    if act not in SMOOTH_ACTIVATIONS:
        raise EvaluationError(
            f"--euler: {ck.path} is a network with activation {act}, whose metric is not C^2 (its curvature sits "
            f"partly on the kinks, which the Monte Carlo misses), so its figure would not be the Euler "
            f"characteristic: train it with a smooth activation ({', '.join(SMOOTH_ACTIVATIONS)}, e.g. "
            f"--model.activation=gelu or conf/best.yaml) or evaluate it without --euler")


def compare(estimate: float, error: float, topological: int) -> dict:
    """An estimate against the topological chi: chi, its MC error, (chi - chi_top) / |chi_top| (None for chi_top = 0)
    and |chi - chi_top| in MC errors."""
    found, ok = math.isfinite(estimate), math.isfinite(estimate) and math.isfinite(error)
    return {"chi": estimate if found else None, "error": error if ok else None,
            "relative_difference": (estimate - topological) / abs(topological) if found and topological else None,
            "errors_off": abs(estimate - topological) / error if ok and error > 0 else None}


def _terms(metric_fn, points: CYPoints) -> torch.Tensor:
    """Each point's term of chi = mean(w X / (d! pi^d det g |Omega|^2)) (mflow.geometry.chern.euler_characteristic),
    NaN where g is not positive definite: [N]."""
    d = points.pullback.shape[1]
    with torch.no_grad():
        e = euler_density(metric_fn, points)  # X / (pi^d det g^2)
        det = real_det(metric_fn(points.z, points.patch, points.elim))
    return points.weights * e * det / points.omega_sq / math.factorial(d)


def _mean(terms: torch.Tensor, system: torch.Tensor | None) -> tuple[float, float]:
    """The mean of the finite terms and its error by sampling system (chern.euler_characteristic's estimate)."""
    ok = torch.isfinite(terms)
    if int(ok.sum()) < 2:
        return float("nan"), float("nan")
    return weighted_mean_error(terms[ok], system=None if system is None else system[ok.to(system.device)])


def euler_report(ck: LoadedCheckpoint, points: CYPoints, seed: int) -> dict | None:
    """eval.json's ``euler`` section of a checkpoint: the model's and g_FS's chi on the points against the topological
    value, and their paired difference (module doc); None for a model without second derivatives (frozen-kernel
    flows). On the CPU, whatever device the model is on."""
    if not ck.has_derivatives:
        return None
    model = ck.module.model
    if next(model.parameters(), torch.zeros(())).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # the curvature code builds its tangent directions on the CPU
    for s in (ck.surface, model.surface):
        s.gradient(points.z[:1])  # fills the surfaces' cached derivative terms outside torch.func's transforms
    top = ck.surface.euler_number()
    t_model, t_fs = _terms(model, points), _terms(curvature.fs_metric_fn(ck.surface), points)
    both = torch.isfinite(t_model) & torch.isfinite(t_fs)
    diff, diff_se = _mean(torch.where(both, t_model - t_fs, float("nan")), points.system)
    chi, se = _mean(t_model, points.system)
    chi_fs, se_fs = _mean(t_fs, points.system)
    return {"n": len(points), "seed": seed, "population": "all_charts", "topological": top,
            "n_positive_definite": int(torch.isfinite(t_model).sum()),
            "model": compare(chi, se, top), "fs": compare(chi_fs, se_fs, top),
            "model_minus_fs": {"difference": diff if math.isfinite(diff) else None,
                               "error": diff_se if math.isfinite(diff_se) else None}}


def euler_line(label: str, e: dict | None) -> str:
    """The one line evaluate.py prints for a checkpoint's euler section."""
    if e is None:
        return f"[mflow] evaluate: Euler characteristic of {label}: not available (no second derivatives)"
    m, fs = e["model"], e["fs"]

    def pm(c):
        if c["chi"] is None:
            return "nan"
        return f"{c['chi']:.4g}" + ("" if c["error"] is None else f" +- {c['error']:.2g}")

    rel = "" if m["relative_difference"] is None else f", relative difference {m['relative_difference']:+.2%}"
    off = "" if m["errors_off"] is None else f" ({m['errors_off']:.1f} MC errors)"
    d = e.get("model_minus_fs") or {}
    paired = "" if d.get("difference") is None else (
        f" (model - g_FS {d['difference']:+.3g}" + ("" if d["error"] is None else f" +- {d['error']:.2g}") + ")")
    return (f"[mflow] evaluate: Euler characteristic of {label} on {e['n']} points: {pm(m)} against the topological "
            f"{e['topological']}{rel}{off}; g_FS on the same points {pm(fs)}{paired}")
