"""Monte-Carlo errors of (weighted) means over sampled points, counting the points of one sampling system together.

The sampler (mflow.geometry.sampling) draws points system by system: a system is one random linear subspace per
sampling scheme and the points where X meets them (5 on a line for the quintic; 3 + 3 on the bicubic, one subspace
of each of its two schemes, so that the sample is stratified by scheme: mflow.geometry.sampling.system_index). The
points of a system are dependent, systems independent. An estimate over N points from G systems c (labels
``system`` [N]),

    r = sum_i w_i f_i / sum_i w_i                                   (a ratio estimator; w = 1: the plain mean),

has the cluster-robust ("batch means over systems") variance, from each system's total of the residuals:

    E_c = sum_{i in c} w_i (f_i - r),     Var r ~ G / (G - 1) sum_c E_c^2 / (sum_i w_i)^2.

With every point its own system (system=None) this is the usual iid delta-method error, and for w = 1 it is s / sqrt(N)
with the unbiased s. Systems of m points whose values have intra-system correlation rho make the iid error too small
by sqrt(1 + (m - 1) rho): 1.0-1.3x for g_FS's volumes, kappa, sigma and Euler characteristic on the presets.
Weights and conventions: docs/conventions.md section 4.
"""
from __future__ import annotations

import math

import torch


def system_totals(x: torch.Tensor, system: torch.Tensor | None) -> torch.Tensor:
    """Sum of x [N] over each sampling system (labels [N], any integers, in any order): -> [G], one entry per
    distinct label (sorted labels); x itself when system is None (every point its own system)."""
    if system is None:
        return x
    labels, inverse = torch.unique(system, return_inverse=True)
    return torch.zeros(len(labels), dtype=x.dtype, device=x.device).index_add_(0, inverse.to(x.device), x)


def weighted_mean_error(values: torch.Tensor, weights: torch.Tensor | None = None,
                        system: torch.Tensor | None = None) -> tuple[float, float]:
    """(r, standard error of r) for r = sum w f / sum w (module doc): values f [N], weights w [N] (None: 1),
    system [N] labels of the points' sampling systems (None: independent points). The error is nan with fewer than
    2 systems."""
    f = values.to(torch.float64)
    w = torch.ones_like(f) if weights is None else weights.to(f)
    if len(f) == 0:
        return float("nan"), float("nan")
    r = (w * f).sum() / w.sum()
    totals = system_totals(w * (f - r), system)
    G = len(totals)
    if G < 2:
        return float(r), float("nan")
    var = G / (G - 1) * (totals**2).sum() / w.sum() ** 2
    return float(r), math.sqrt(float(var))


def sigma_error(weights: torch.Tensor, det_g: torch.Tensor, omega_sq: torch.Tensor,
                system: torch.Tensor | None = None) -> tuple[float, float]:
    """(sigma, its standard error) for sigma = sum w |1 - eta| / sum w with the metric's own kappa (eq. B.11,
    docs/conventions.md section 5): [N] x3 (+ system labels [N]) -> floats.

    kappa is itself estimated from the points, so the error is that of the linearised values
    |1 - eta_i| + D (r_i - kappa), r = det g / |Omega|^2, D = d sigma / d kappa = sum w sign(1 - eta) r / kappa^2 / sum w
    (their weighted mean is sigma); holding kappa fixed understates it (by ~1.3x on the bicubic's g_FS)."""
    w = weights.to(torch.float64)
    r = det_g.to(w) / omega_sq.to(w)
    k = (w * r).sum() / w.sum()
    a = (1 - r / k).abs()
    D = (w * torch.sign(1 - r / k) * r).sum() / w.sum() / k**2
    return weighted_mean_error(a + D * (r - k), w, system)
