"""Hermitian (1,1) forms on X: algebra, chart changes and the ambient frame (docs/conventions.md sections 2, 8).

A metric (or a metric correction) g_ab in a chart (patch, elim) is a (1,1) form; the gradient G = dL/dg of
a loss is its dual. Under a change of chart at the same point, with T_ab = dx^from_b / dx^to_a,

    forms      g_to = T g_from T^H,        gradients  G_to = T^-H G_from T^-1,

so that the pairing Re tr(G^H dg) (the first-order change of the loss) is chart-independent.
The ambient frame F = J conj(P) / (|z| sqrt(pi)) (P = 1 - u u^H the horizontal projector; per factor, with
sqrt(t_i), in a product) lifts the chart's coordinate vectors to C^D: F F^H = g_FS, and F^H G F, F H F^H move
between chart and ambient D x D Hermitian forms without any chart Jacobian (:func:`ambient_frame`).
"""
from __future__ import annotations

import math

import torch

from . import charts


def dagger(a: torch.Tensor) -> torch.Tensor:
    """Conjugate transpose of the last two axes."""
    return a.conj().transpose(-1, -2)


def hermitian_part(a: torch.Tensor) -> torch.Tensor:
    """(a + a^H) / 2."""
    return (a + dagger(a)) / 2


def pairing(G: torch.Tensor, dg: torch.Tensor) -> torch.Tensor:
    """Re tr(G^H dg), the first-order change of the loss for a metric change dg: [..., m, m] x2 -> [...].

    (G is torch's gradient of a real loss w.r.t. complex g, dL = Re sum conj(G_ij) dg_ij; for Hermitian G
    this is tr(G dg) = tr(G'^T dg) with G' = dL/dg the Wirtinger derivative.)
    """
    return (G.conj() * dg).sum((-1, -2)).real


class NotPositiveDefiniteError(FloatingPointError):
    """A metric stopped being positive definite."""


def not_positive_definite(g: torch.Tensor) -> torch.Tensor:
    """True where a Hermitian g is not (numerically) positive definite or not finite: [N, m, m] -> [N]."""
    _, info = torch.linalg.cholesky_ex(g)
    return (info != 0) | ~torch.isfinite(torch.view_as_real(g)).flatten(1).all(1)


def chart_frame(surface, z: torch.Tensor, patch: torch.Tensor, elim: torch.Tensor):
    """The points z (any scaling, z_patch != 0) in chart (patch, elim): (z with z_patch = 1, pullback J [N, m, n+1])."""
    zc = charts.to_patch(surface, z, patch)
    return zc, charts.pullback(surface, surface.gradient(zc), patch, elim)


def chart_change(surface, z, patch_from, elim_from, patch_to, elim_to) -> torch.Tensor:
    """T [N, m, m] between two charts at the same points, g_to = T g_from T^H (T_ab = dx^from_b / dx^to_a)."""
    zt, Jt = chart_frame(surface, z, patch_to, elim_to)
    return charts.chart_jacobian(surface, zt, Jt, patch_from, elim_from)


def form_to_chart(T: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A (1,1) form (metric, metric correction): g_to = T g_from T^H."""
    return T @ g @ dagger(T)


def gradient_to_chart(T: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """A gradient dL/dg, dual to forms: G_to = T^-H G_from T^-1 (keeps Re tr(G^H dg) invariant)."""
    Ti = torch.linalg.inv(T)
    return dagger(Ti) @ G @ Ti


def ambient_frame(surface, z: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """F = J B, B block diagonal with blocks sqrt(t_i / pi) conj(P_i) / |z_i|, P_i = 1 - z_i z_i^H / |z_i|^2 (the
    factors' horizontal projectors): [N, D], [N, m, D] -> [N, m, D].

    Rows: the chart's coordinate vectors lifted horizontally to the unit spheres, so F F^H = g_FS (of J = sum t_i J_i).
    For one P^n a change of chart at the same point gives F_to = e^{i phi} T F_from (phase from the rescaling of z),
    so F^H G F is chart-independent. In a product every factor's rescaling brings its own phase e^{i phi_i}; they are
    removed by multiplying factor i's columns by conj(<a_i, z_i>) / |<a_i, z_i>| for a fixed generic vector a (the
    same whatever the chart), which makes F^H G F chart-independent again (tested), except on the measure-zero
    sets <a_i, z_i> = 0.
    """
    f = surface.factor_of.to(z.device)
    same = (f[:, None] == f[None, :]).to(z.dtype)
    r2 = charts.factor_norms_sq(surface, z)[..., f]
    t = torch.tensor(surface.kahler, dtype=torch.float64, device=z.device)[f]
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    pbar = same * (eye - z.conj()[..., :, None] * z[..., None, :] / r2[..., :, None])
    F = J @ (pbar * torch.sqrt(t / (math.pi * r2))[..., :, None])
    if len(surface.dims) == 1:
        return F
    a = torch.exp(0.7j * torch.arange(z.shape[-1], dtype=torch.float64, device=z.device)).to(z.dtype)  # fixed, generic
    w = torch.zeros(*z.shape[:-1], len(surface.dims), dtype=z.dtype, device=z.device).index_add(-1, f, a.conj() * z)
    phase = w / w.abs().clamp_min(1e-300)
    return F * phase.conj()[..., f][..., None, :]


def gradient_to_ambient(F: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """F^H G F: [N, m, m] -> [N, n+1, n+1], chart-independent."""
    return dagger(F) @ G @ F


def form_from_ambient(F: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """F H F^H: [N, n+1, n+1] -> [N, m, m] in the chart of F."""
    return F @ H @ dagger(F)


# ----------------------------------------------------------------------------- Hermitian matrices as real components
def hermitian(v: torch.Tensor, m: int) -> torch.Tensor:
    """Hermitian m x m matrices from m^2 reals (m diagonal, m(m-1)/2 complex upper entries): [N, m^2] -> [N, m, m]."""
    iu = torch.triu_indices(m, m, offset=1, device=v.device)
    k = iu.shape[1]
    H = torch.diag_embed(v[:, :m].to(torch.complex128))
    upper = torch.complex(v[:, m : m + k], v[:, m + k : m + 2 * k])
    U = scatter_upper(upper, iu, m)
    return H + U + U.conj().transpose(-1, -2)


def scatter_upper(upper: torch.Tensor, iu: torch.Tensor, m: int) -> torch.Tensor:
    """Place [N, k] values at the strictly upper positions iu of m x m matrices, out of place."""
    flat = iu[0] * m + iu[1]
    onehot = torch.nn.functional.one_hot(flat, m * m).to(upper.dtype)  # [k, m*m]
    return (upper @ onehot).reshape(len(upper), m, m)


def real_components(g: torch.Tensor) -> torch.Tensor:
    """The m^2 real components of Hermitian g: [..., m, m] -> [..., m^2].

    Order: g_00..g_(m-1)(m-1) (real), Re g_ab then Im g_ab for a < b (row-major): the input of
    :func:`hermitian`, so ``hermitian(real_components(g), m) == g``.
    """
    m = g.shape[-1]
    iu = torch.triu_indices(m, m, offset=1, device=g.device)
    up = g[..., iu[0], iu[1]]
    diag = g.diagonal(dim1=-2, dim2=-1)
    if not g.is_complex():
        return torch.cat([diag, up, torch.zeros_like(up)], -1)
    return torch.cat([diag.real, up.real, up.imag], -1)


def dual_components(G: torch.Tensor) -> torch.Tensor:
    """dL/dr for r = real_components(g), from torch's gradient G of a real loss w.r.t. Hermitian g: [..., m, m] -> [..., m^2].

    dL = Re sum conj(G_ij) dg_ij, and an off-diagonal r moves g_ab and g_ba together, so dL/dr is Re G_aa on the
    diagonal and 2 Re G_ab, 2 Im G_ab (a < b) off it (G Hermitian). A metric-NTK in the real components r acts on these.
    """
    m = G.shape[-1]
    r = real_components(G)
    return torch.cat([r[..., :m], 2 * r[..., m:]], -1)
