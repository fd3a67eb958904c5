"""Euler characteristic of X from the top Chern form of any Kaehler (or Hermitian) metric (Gauss-Bonnet-Chern).

Derivation (paper-independent; mflow conventions: G[a, b] = g_{a bbar} in the chart's local coordinates,
Kaehler form omega = (i/2) g_{a bbar} dz^a ^ dzbar^b, d = complex dimension of X).

Curvature. In the holomorphic frame e_a = d/dz^a the Chern connection has d G = theta^T G, i.e.
theta^T = (dG) G^{-1}, and its curvature Theta = dbar theta gives, as a matrix of (1,1) forms,

    Theta^T = R G^{-1},  R[a, b] = R[a, b, c, e] dz^c ^ dzbar^e,
    R[a, b, c, e] = -d_c dbar_e G[a, b] + sum_{p, q} (d_c G[a, q]) Ginv[q, p] conj(d_e G[b, p]),

using dbar_e G[p, b] = conj(d_e G[b, p]) (G is Hermitian), Ginv[q, p] = g^{p qbar}: the usual
R_{a bbar c ebar} = -d_c dbar_e g_{a bbar} + g^{p qbar} (d_c g_{a qbar}) (dbar_e g_{p bbar}).
Its trace is tr Theta = dbar d log det g, so Ginv[b, a] R[a, b, c, e] = -d_c dbar_e log det g, the Ricci
form of ``curvature.ricci_form``; c_1 = (i/2pi) tr Theta.

Top Chern form. c_d = (i/2pi)^d det Theta (2-forms commute, so det Theta = det R det G^{-1}). With
dz^c ^ dzbar^c = -2i dx^c ^ dy^c and wedge_k (dz^{c_k} ^ dzbar^{e_k}) = sgn(c) sgn(e) prod_c (dz^c ^ dzbar^c),

    c_d = X / (pi^d det G) d^{2d}x,   X = sum_{perms s, c, e} sgn(s) sgn(c) sgn(e) prod_k R[k, s_k, c_k, e_k],

(i/2pi)^d (-2i)^d = pi^{-d}: no leftover sign, and the Fubini-Study quintic (d = 3, odd) confirms it:
its estimate is -200, not +200 (tests/test_chern.py). Gauss-Bonnet-Chern: chi(X) = integral_X c_d.

Monte Carlo. mean(w F / |Omega|^2) estimates d! integral F d^{2d}x, so
chi = mean(w X / (det G |Omega|^2)) / (d! pi^d). ``euler_density`` is the chart-independent scalar
c_d / (omega^d / d!) = X / (pi^d det G^2), the Euler form over the metric's own volume form.

Derivatives along X use the tangent plane z(x) = z + x^a J_a(z0) of ``curvature``: first and mixed
d dbar derivatives there equal those along X (the embedding is holomorphic, only J enters), here taken by
forward mode (``tangent_jets``; equal to nesting ``curvature.tangent_del``, dbar F = conj(d conj F), ~15x faster).
Nothing above uses the Kaehler condition: for any Hermitian metric the Chern form c_d represents the Euler
class, so the estimate is chi for every globally defined Hermitian metric (only R's symmetry in a <-> c needs Kaehler).
"""
from __future__ import annotations

import math
from itertools import permutations, product

import torch
from torch.func import jacfwd

from .curvature import MetricFn
from .forms import not_positive_definite
from .montecarlo import weighted_mean_error
from .volume import real_det


def tangent_jets(metric_fn: MetricFn, z, patch, elim, J):
    """g, d_c g and d_c dbar_e g along X (metric_fn must be forward-differentiable in z): z [N, n+1], J [N, d, n+1] -> [N, d, d], [N, d, d, d(c)], [N, d, d, d(c), d(e)].

    Forward mode along the tangent plane w = z + (s_x + i s_y)^a J_a with one real s [2d] shared by all points
    (row i depends only on its own row of w, so d/ds of row i is that point's derivative): 2d and (2d)^2 tangents.
    """
    d = J.shape[1]

    def h(s):
        return torch.view_as_real(metric_fn(z + torch.complex(s[:d], s[d:]).to(J.dtype) @ J, patch, elim))

    def cplx(t):  # [N, d, d, 2, ...] -> [N, d, d, ...] complex
        return torch.complex(t[:, :, :, 0], t[:, :, :, 1])

    s0 = torch.zeros(2 * d, dtype=torch.float64, device=z.device)
    g = cplx(h(s0))
    D = cplx(jacfwd(h)(s0))  # [N, d, d, 2d]
    H = cplx(jacfwd(jacfwd(h))(s0))  # [N, d, d, 2d, 2d]
    dG = (D[..., :d] - 1j * D[..., d:]) / 2
    xx, xy, yx, yy = H[..., :d, :d], H[..., :d, d:], H[..., d:, :d], H[..., d:, d:]
    return g, dG, (xx + yy + 1j * (xy - yx)) / 4


def riemann_tensor(metric_fn: MetricFn, z, patch, elim, J) -> torch.Tensor:
    """R[a, b, c, e] = R_{a bbar c ebar} (module doc) along X: z [N, n+1], J [N, d, n+1] -> [N, d, d, d, d] complex."""
    g, dG, ddG = tangent_jets(metric_fn, z, patch, elim, J)
    quad = torch.einsum("naqc,nqp,nbpe->nabce", dG, torch.linalg.inv(g), dG.conj())
    return quad - ddG


def _levi_civita_terms(d: int, device=None):
    """All (s, c, e) triples of permutations of range(d) with the product of their signs: [T, 3, d], [T]."""
    perms = list(permutations(range(d)))

    def sign(p):
        return (-1) ** sum(p[i] > p[j] for i in range(d) for j in range(i + 1, d))

    idx = torch.tensor([[s, c, e] for s, c, e in product(perms, repeat=3)], dtype=torch.int64, device=device)
    sgn = torch.tensor([sign(s) * sign(c) * sign(e) for s, c, e in product(perms, repeat=3)],
                       dtype=torch.float64, device=device)
    return idx, sgn


def top_chern_numerator(R: torch.Tensor) -> torch.Tensor:
    """X = sum sgn(s) sgn(c) sgn(e) prod_k R[k, s_k, c_k, e_k]: [N, d, d, d, d] -> [N] complex (real for a true R)."""
    d = R.shape[-1]
    idx, sgn = _levi_civita_terms(d, R.device)
    k = torch.arange(d, device=R.device)
    flat = ((k * d + idx[:, 0]) * d + idx[:, 1]) * d + idx[:, 2]  # [T, d] into R.flatten(1)
    terms = R.reshape(len(R), -1)[:, flat].prod(-1)  # [N, T]
    return terms @ sgn.to(R.dtype)


def _euler_blocks(metric_fn: MetricFn, points, block: int):
    """Per block of points: (block slice, mask where g is positive definite, X / det g there, det g there)."""
    for i in range(0, len(points), block):
        p = points[i : i + block]
        with torch.no_grad():
            g = metric_fn(p.z, p.patch, p.elim)
        ok = ~not_positive_definite(g)
        if not ok.any():
            continue
        q = p[ok]
        with torch.no_grad():
            R = riemann_tensor(metric_fn, q.z, q.patch, q.elim, q.pullback)
        det = real_det(g[ok])
        yield slice(i, i + len(p)), ok, top_chern_numerator(R).real / det, det


def euler_density(metric_fn: MetricFn, points, block: int = 2048) -> torch.Tensor:
    """c_d / (omega^d / d!) = X / (pi^d det g^2), the Euler form over g's own volume form (a chart-independent
    scalar): CYPoints [N] -> [N] real, NaN where g is not positive definite.
    chi = mean(w e det g / |Omega|^2) / d!."""
    d = points.pullback.shape[1]
    out = torch.full((len(points),), float("nan"), dtype=torch.float64, device=points.z.device)
    for sl, ok, x_over_det, det in _euler_blocks(metric_fn, points, block):
        out[sl][ok] = x_over_det / (math.pi**d * det)
    return out


def euler_characteristic(metric_fn: MetricFn, points, block: int = 2048) -> tuple[float, float]:
    """chi = mean(w X / (d! pi^d det g |Omega|^2)) over the points where g is positive definite:
    CYPoints -> (estimate, Monte-Carlo standard error of that mean, the points of a sampling system counted together:
    mflow.geometry.montecarlo); (nan, nan) with fewer than 2 such points."""
    d = points.pullback.shape[1]
    parts, systems = [], []
    for sl, ok, x, _ in _euler_blocks(metric_fn, points, block):
        parts.append(points.weights[sl][ok] * x / points.omega_sq[sl][ok])
        systems.append(None if points.system is None else points.system[sl][ok.to(points.system.device)])
    s = torch.cat(parts) / (math.factorial(d) * math.pi**d) if parts else torch.zeros(0, dtype=torch.float64)
    if len(s) < 2:
        return float("nan"), float("nan")
    return weighted_mean_error(s, system=None if points.system is None else torch.cat(systems).to(s.device))
