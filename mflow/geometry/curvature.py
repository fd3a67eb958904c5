"""Ricci form, Ricci scalar and Ricci measure of any Kaehler metric (eq. B.3).

A metric is given as a function ``metric_fn(z, patch, elim) -> g`` of homogeneous points
z [N, D] (complex, scaled to their charts) in fixed charts, returning g_ab [N, d, d] in the chart's
local coordinates. Holomorphic derivatives along X are taken along the tangent plane
z(x) = z_0 + x^a J_a(z_0): for any smooth F on a neighbourhood of X,
d_a dbar_b (F|_X) = J_aI J*_bJ d_I dbar_J F = d_a dbar_b F(z(x)) at x = 0, since the
embedding is holomorphic and only its first derivatives J enter.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad, jacrev

from . import charts
from .cicy import CompleteIntersection
from .forms import not_positive_definite
from .volume import log_det, real_det

MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def per_point_hessian(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Hessians of a row-wise scalar function: f [N, D] -> [N], x [N, D] -> [N, D, D].

    Rows are independent, so the gradient of sum_i f_i gives every row's gradient at once
    and one more jacrev (vmapped over the D directions, not over points) gives the Hessians.
    """
    H = jacrev(lambda y: grad(lambda u: f(u).sum())(y).sum(0))(x)  # [D, N, D]
    return H.permute(1, 0, 2)


def ddbar_from_real_hessian(H: torch.Tensor) -> torch.Tensor:
    """d_a dbar_b f = (H_xx + H_yy + i (H_xy - H_yx))_ab / 4 for real coordinates (x, y): [N, 2m, 2m] -> [N, m, m]."""
    m = H.shape[-1] // 2
    xx, xy, yx, yy = H[..., :m, :m], H[..., :m, m:], H[..., m:, :m], H[..., m:, m:]
    return torch.complex(xx + yy, xy - yx) / 4


def tangent_ddbar(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """d_a dbar_b of a row-wise scalar function f(z) along X: z [N, n+1], J [N, n-1, n+1] -> [N, n-1, n-1]."""
    m = J.shape[1]

    def along(x):  # x [N, 2m] real -> f(z + x^a J_a)
        dz = (torch.complex(x[:, :m], x[:, m:])[:, None, :] @ J)[:, 0, :]
        return f(z + dz)

    x0 = torch.zeros(len(z), 2 * m, dtype=torch.float64, device=z.device)
    return ddbar_from_real_hessian(per_point_hessian(along, x0))


def tangent_del(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """Holomorphic derivatives d_a f along X of a row-wise function: f(z) [N, *S] -> [N, *S, n-1] complex.

    d_a = (d/dx_a - i d/dy_a) / 2 applied to the real Jacobian along z(x) = z + x^a J_a.
    """
    m = J.shape[1]

    def along(x):
        return f(z + (torch.complex(x[:, :m], x[:, m:])[:, None, :] @ J)[:, 0, :])

    x0 = torch.zeros(len(z), 2 * m, dtype=torch.float64, device=z.device)
    out = f(z)
    as_real = (lambda y: torch.view_as_real(y)) if out.is_complex() else (lambda y: y)
    real_shape = as_real(out).shape[1:]
    jac = jacrev(lambda x: as_real(along(x)).sum(0))(x0)  # [*S_real, N, 2m]
    jac = jac.reshape(-1, len(z), 2 * m).permute(1, 0, 2).reshape(len(z), *real_shape, 2 * m)
    d = (jac[..., :m] - 1j * jac[..., m:]) / 2  # d_a of each real component
    if out.is_complex():
        d = d[..., 0, :] + 1j * d[..., 1, :]
    return d


def fs_metric_fn(surface: CompleteIntersection) -> MetricFn:
    """The pulled-back Fubini-Study metric as a metric function."""

    def metric(z, patch, elim):
        J = charts.pullback(surface, surface.gradient(z), patch, elim)
        return charts.pull_back(J, charts.fs_metric(surface, z))

    return metric


def ricci_form(metric_fn: MetricFn, z, patch, elim, J) -> torch.Tensor:
    """R_ab = -d_a dbar_b log det g (eq. B.3): -> [N, n-1, n-1] complex Hermitian."""
    return -tangent_ddbar(lambda w: log_det(metric_fn(w, patch, elim)), z, J)


def ricci_scalar(g: torch.Tensor, ric: torch.Tensor) -> torch.Tensor:
    """R = g^{ab} R_ab = Re tr(g^{-1} Ric): [N, m, m] x2 -> [N]."""
    return torch.linalg.solve(g, ric).diagonal(dim1=-2, dim2=-1).sum(-1).real


def ricci_measure(weights, det_g, omega_sq, scalar, dim: int) -> torch.Tensor:
    """Vol_K^{1/dim} / Vol_CY * mean(w det g / |Omega|^2 |R|), as cymetric reports it."""
    dvol_k = weights * det_g / omega_sq
    vol_k, vol_cy = dvol_k.mean(), weights.mean()
    return vol_k ** (1.0 / dim) / vol_cy * (dvol_k * scalar.abs()).mean()


def ricci_measure_on(metric_fn: MetricFn, points, dim: int, block: int = 100) -> tuple[float, int]:
    """The Ricci measure of a metric function on a point set (CYPoints), over the points where the metric is
    positive definite (log det g needs it): -> (measure, number of points used). The Ricci form is computed
    `block` points at a time (its fourth derivatives of a wide network take ~10 MB a point)."""
    g = metric_fn(points.z, points.patch, points.elim).detach()
    ok = ~not_positive_definite(g)
    p = points[ok]
    if len(p) == 0:
        return float("nan"), 0
    with torch.enable_grad():
        ric = torch.cat([ricci_form(metric_fn, q.z, q.patch, q.elim, q.pullback).detach()
                         for q in (p[i : i + block] for i in range(0, len(p), block))])
    scalar = ricci_scalar(g[ok], ric)
    return float(ricci_measure(p.weights, real_det(g[ok]), p.omega_sq, scalar, dim)), len(p)
