"""Losses of a metric model on a batch of points (docs/conventions.md sections 5, 7; eq. B.11-B.15).

Each loss is a pure function of the model (a metric function) and a batch dict
(z, patch, elim, pullback, weights, omega_sq) plus the fixed kappa of the Kaehler class.
Weighted means estimate integrals against the CY volume form mu_CY.
"""
from __future__ import annotations

import torch

from .geometry import charts, curvature, volume


def _wmean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w * x).sum() / w.sum()


def eta_of(g: torch.Tensor, batch: dict, kappa: torch.Tensor) -> torch.Tensor:
    return volume.eta(volume.real_det(g), batch["omega_sq"], kappa)


def sigma_loss(g, batch, kappa):
    """Monge-Ampere loss: weighted mean of |1 - eta| (eq. B.11)."""
    return _wmean((1 - eta_of(g, batch, kappa)).abs(), batch["weights"])


def ultra_local_square(g, batch, kappa):
    """E = int (eta - 1)^2 mu_CY (eq. B.12, B.14)."""
    return _wmean((eta_of(g, batch, kappa) - 1) ** 2, batch["weights"])


def ultra_local_entropy(g, batch, kappa):
    """E = int eta log eta mu_CY (eq. B.12; its gradient flow is the Calabi flow)."""
    e = eta_of(g, batch, kappa)
    return _wmean(e * torch.log(e), batch["weights"])


def volume_loss(g, batch, kappa):
    """(Vol_K(g) / Vol_K(FS class) - 1)^2: keeps the Kaehler class's volume."""
    return (volume.kappa(batch["weights"], volume.real_det(g), batch["omega_sq"]) / kappa - 1) ** 2


def kaehler_loss(model, batch, kappa):
    """dJ = 0: weighted mean of sum_abc |d_c g_ab - d_a g_cb|^2 / |g|^2 (holomorphic derivatives along X)."""
    z, patch, elim, J = batch["z"], batch["patch"], batch["elim"], batch["pullback"]
    dg = curvature.tangent_del(lambda w: model(w, patch, elim), z, J)  # [N, a, b, c] = d_c g_ab
    g = model(z, patch, elim)
    antisym = dg - dg.permute(0, 3, 2, 1)
    scale = (g.abs() ** 2).sum((-1, -2))
    return _wmean((antisym.abs() ** 2).sum((1, 2, 3)) / scale, batch["weights"])


def transition_loss(model, batch, kappa):
    """Agreement on chart overlaps: g in the second-best patch (of every factor) vs T g T^dagger, relative squared
    error."""
    X = model.surface
    z, patch, elim = batch["z"], batch["patch"], batch["elim"]
    patch2 = charts.choose_patch(X, z, rank=1)
    z2 = charts.to_patch(X, z, patch2)
    dp2 = X.gradient(z2)
    elim2 = charts.choose_elim(X, dp2, patch2)
    J2 = charts.pullback(X, dp2, patch2, elim2)
    T = charts.chart_jacobian(X, z2, J2, patch, elim)
    g1 = T @ model(z, patch, elim) @ T.conj().transpose(-1, -2)
    g2 = model(z2, patch2, elim2)
    rel = ((g2 - g1).abs() ** 2).sum((-1, -2)) / (g1.abs() ** 2).sum((-1, -2))
    return _wmean(rel, batch["weights"])


def ricci_loss(model, batch, kappa):
    """Weighted mean of |R| (Ricci scalar, eq. B.3 traced)."""
    z, patch, elim, J = batch["z"], batch["patch"], batch["elim"], batch["pullback"]
    ric = curvature.ricci_form(model, z, patch, elim, J)
    return _wmean(curvature.ricci_scalar(model(z, patch, elim), ric).abs(), batch["weights"])


def two_derivative_loss(model, batch, kappa):
    """E = int mu_CY g^{ab} d_a eta dbar_b eta (eq. B.15)."""
    z, patch, elim, J = batch["z"], batch["patch"], batch["elim"], batch["pullback"]

    def eta_at(w):
        om = charts.omega_sq(model.surface, model.surface.gradient(w), elim)
        return volume.eta(volume.real_det(model(w, patch, elim)), om, kappa)

    d_eta = curvature.tangent_del(eta_at, z, J)  # [N, a]
    g = model(z, patch, elim)
    # eta is real, so dbar_b eta = conj(d_b eta); g^{ab} pairs with d_a eta dbar_b eta
    val = (d_eta[:, None, :] @ torch.linalg.solve(g.transpose(-1, -2), d_eta.conj()[:, :, None]))[:, 0, 0].real
    return _wmean(val, batch["weights"])


METRIC_LOSSES = {  # functions of g alone
    "sigma": sigma_loss,
    "ultra_local_square": ultra_local_square,
    "ultra_local_entropy": ultra_local_entropy,
    "volume": volume_loss,
}
MODEL_LOSSES = {  # need derivatives of the model
    "kaehler": kaehler_loss,
    "transition": transition_loss,
    "ricci": ricci_loss,
    "two_derivative": two_derivative_loss,
}
LOSSES = {**METRIC_LOSSES, **MODEL_LOSSES}


def check_weights(weights: dict) -> dict:
    unknown = set(weights) - set(LOSSES)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; choose from {sorted(LOSSES)}")
    bad = {k: v for k, v in weights.items() if not (float(v) >= 0)}
    if bad:
        raise ValueError(f"loss weights must be non-negative numbers, got {bad}")
    if not any(float(v) > 0 for v in weights.values()):
        raise ValueError("at least one loss weight must be positive")
    return {k: float(v) for k, v in weights.items() if float(v) > 0}


def total_loss(model, batch: dict, kappa, weights: dict, g: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """sum_k weights[k] * loss_k; returns (total, {name: value})."""
    g = model(batch["z"], batch["patch"], batch["elim"]) if g is None else g
    parts = {}
    for name, w in weights.items():
        parts[name] = METRIC_LOSSES[name](g, batch, kappa) if name in METRIC_LOSSES else MODEL_LOSSES[name](model, batch, kappa)
    total = sum(weights[k] * v for k, v in parts.items())
    return total, parts
