"""Points on X with a known density, by intersecting with random linear subspaces (docs/conventions.md section 4).

In every factor P^{n_i} a random linear subspace L_i of dimension k_i (sum_i k_i = K) is spanned by
complex Gaussian vectors: z_i(s) = a_i + sum_j s_ij b_ij. X meets L_1 x ... x L_m in finitely many points,
the solutions of the K equations p_k(z(s)) = 0 in the K unknowns s; taking all of them draws points from the
density prod_i J_i^{n_i - k_i} restricted to X (the Crofton formula in each factor: a random codimension-c
subspace of P^n is, on average, J_FS^c). For one P^n and K = 1 this is Shiffman-Zelditch sampling: a random
line meets X in deg p points. Systems with K = 1 are univariate polynomials (companion-matrix roots); with
K = 2 the second unknown is eliminated by the Sylvester resultant, whose values on roots of unity give its
coefficients exactly. Every root is polished by Newton steps on the system.
"""
from __future__ import annotations

import math

import torch

from .cicy import CDTYPE, RDTYPE, CompleteIntersection


def polynomial_roots(coeffs: torch.Tensor) -> torch.Tensor:
    """All roots of sum_m c_m t^m as companion-matrix eigenvalues, batched: [L, d+1] -> [L, d]."""
    d = coeffs.shape[-1] - 1
    comp = torch.zeros(coeffs.shape[0], d, d, dtype=CDTYPE)
    comp[:, 1:, :-1] = torch.eye(d - 1, dtype=CDTYPE)
    comp[:, :, -1] = -coeffs[:, :-1] / coeffs[:, -1:]
    return torch.linalg.eigvals(comp)


def _coefficients(values_at: "callable", degree: int) -> torch.Tensor:
    """Coefficients (lowest first) of polynomials in s of at most ``degree`` from their values at the degree+1
    roots of unity: values_at(omega [degree+1]) -> [..., degree+1] values; returns [..., degree+1]."""
    omega = torch.exp(2j * math.pi * torch.arange(degree + 1, dtype=RDTYPE) / (degree + 1)).to(CDTYPE)
    return torch.fft.fft(values_at(omega), dim=-1) / (degree + 1)


def line_coefficients(surface: CompleteIntersection, a: torch.Tensor, b: torch.Tensor, degree: int) -> torch.Tensor:
    """Coefficients of q_k(s) = p_k(a + s b), lowest degree first: [L, D] x2 -> [L, K, degree+1]."""
    return _coefficients(lambda w: surface(a[:, None, :] + w[None, :, None] * b[:, None, :]).transpose(1, 2), degree)


def _directions(scheme) -> list[tuple[int, int]]:
    """(factor i, frame row j >= 1) of each unknown s: k_i unknowns in factor i."""
    return [(i, j) for i, k in enumerate(scheme) for j in range(1, k + 1)]


def _degree_in(surface: CompleteIntersection, scheme, k: int, unknowns: list[int]) -> int:
    """Degree of p_k(z(s)) in the unknowns s_u (u in unknowns) together: its degree in their factors."""
    factors = {_directions(scheme)[u][0] for u in unknowns}
    return sum(surface.configuration[k][i] for i in factors)


def sample_points(surface: CompleteIntersection, n_points: int, generator: torch.Generator,
                  newton_steps: int = 2) -> torch.Tensor:
    """Points on X from the density sum over the sampling schemes of prod_i J_i^{n_i - k_i} (module doc):
    -> [n_points, D] complex128.

    Every scheme solves the same number of systems, each giving its intersection number of points (deg p for one
    P^n); the points are laid out system by system
    (:func:`system_index` labels them). Frames of Gaussian vectors are drawn as [rows, systems, D], so
    that one P^n's lines are those of Shiffman-Zelditch.
    """
    if surface.K > 2:
        raise ValueError(f"sampling supports K <= 2 equations (the resultant of two); {surface.name} has {surface.K}: "
                         "load its points from a file instead (--data.path, e.g. a cymetric dataset.npz)")
    per_system = sum(surface.intersection_number(a) for a in surface.sampling_powers)
    n_sys = -(-n_points // per_system)
    parts = [_sample_scheme(surface, k, n_sys, generator, newton_steps) for k in surface.sampling_schemes]
    return torch.cat(parts, 1).reshape(-1, surface.n_coords)[:n_points]


def system_index(surface: CompleteIntersection, n_points: int) -> torch.Tensor:
    """The sampling system of each row of ``sample_points(surface, n_points, ...)``: -> [n_points] int64, 0, 1, ...

    Rows come in groups of one random subspace of every scheme (its intersection number of points each, in scheme
    order). A group is the independent unit, and the one labelled here: its subspaces are drawn independently, but
    every group holds one of each scheme (sampling stratified by scheme), so counting the subspaces of a product as
    independent systems would overstate Monte-Carlo errors (by ~1.2x in variance on the bicubic's volume) and
    counting points as independent understates them (mflow.geometry.montecarlo)."""
    per_system = sum(surface.intersection_number(a) for a in surface.sampling_powers)
    return torch.arange(n_points) // per_system


def _sample_scheme(surface, scheme, n_sys: int, generator, newton_steps: int) -> torch.Tensor:
    """All points of n_sys random systems of one scheme: -> [n_sys, points per system, D]."""
    f = surface.factor_of
    frame = torch.view_as_complex(torch.randn(1 + max(scheme), n_sys, surface.n_coords, 2, generator=generator,
                                              dtype=RDTYPE))
    a = frame[0]
    b = torch.stack([frame[j] * (f == i).to(CDTYPE) for i, j in _directions(scheme)])  # [K, L, D]
    if surface.K == 1:  # roots of q(s) = p(a + s b), polished by Newton steps on q itself, then one on p
        q = line_coefficients(surface, a, b[0], _degree_in(surface, scheme, 0, [0]))[:, 0]
        s = polynomial_roots(q)
        for _ in range(newton_steps):
            s = s - _horner(q, s) / _horner(q[:, 1:] * torch.arange(1, q.shape[1], dtype=RDTYPE), s)
        return _point(a, b, _newton_step(surface, a, b, s[..., None]))
    s = _solve_pair(surface, scheme, a, b)  # [L, P, 2]
    for _ in range(newton_steps):
        s = _newton_step(surface, a, b, s)
    return _point(a, b, s)


def _horner(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum_j c_j s^j: c [L, e+1] (lowest first), s [L, P] -> [L, P]."""
    out = c[:, -1:].expand_as(s)
    for j in range(c.shape[1] - 2, -1, -1):
        out = out * s + c[:, j : j + 1]
    return out


def _point(a, b, s):
    """z(s) = a + sum_k s_k b_k: a [L, D], b [K, L, D], s [L, P, K] -> [L, P, D]."""
    return a[:, None, :] + torch.einsum("lpk,kld->lpd", s, b)


def _newton_step(surface, a, b, s):
    """One Newton step on p(z(s)) = 0 in the unknowns s [L, P, K]."""
    z = _point(a, b, s)
    jac = torch.einsum("lpkd,jld->lpkj", surface.gradient(z), b)  # dp_k/ds_j [L, P, K, K]
    return s - torch.linalg.solve(jac, surface(z)[..., None])[..., 0]


def _solve_pair(surface, scheme, a, b) -> torch.Tensor:
    """All solutions s [L, P, 2] of p(a + s b_0 + t b_1) = 0 for K = 2: f_k(s, t) = p_k(a + s b_0 + t b_1), and
    R(t) = Res_s(f_0, f_1) has degree P = the number of solutions."""
    P = surface.intersection_number(tuple(n - k for n, k in zip(surface.dims, scheme)))
    e = [_degree_in(surface, scheme, k, [0]) for k in range(2)]
    if min(e) < 1:
        raise ValueError(f"{surface.name}: sampling scheme {scheme} leaves an equation without the first unknown; "
                         "sampling this configuration is not supported: load its points from a file (--data.path)")

    def coeffs_in_s(t):  # t [L, T] -> [L, T, 2, max(e)+1] coefficients in s of f_k(., t)
        base = a[:, None, :] + t[..., None] * b[1][:, None, :]  # [L, T, D]
        E = max(e)
        return _coefficients(lambda w: surface(base[:, :, None, :] + w[:, None] * b[0][:, None, None, :]).movedim(2, -1),
                             E)

    def resultant(t):
        c = coeffs_in_s(t)
        return sylvester_det(c[..., 0, : e[0] + 1], c[..., 1, : e[1] + 1])

    r = _coefficients(lambda w: resultant(w[None, :].expand(len(a), -1)), P)  # [L, P+1]
    t = polynomial_roots(r)  # [L, P]
    c = coeffs_in_s(t)  # [L, P, 2, E+1]
    s_all = polynomial_roots(c[..., 0, : e[0] + 1].reshape(-1, e[0] + 1)).reshape(len(a), P, e[0])  # roots of f_0
    cand = torch.stack([s_all, t[..., None].expand_as(s_all)], -1)  # [L, P, e0, 2]
    z = a[:, None, None, :] + torch.einsum("lpck,kld->lpcd", cand, b)
    pick = surface(z)[..., 1].abs().argmin(-1)  # the root of f_0 where f_1 vanishes too
    return cand.gather(2, pick[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]


def sylvester_det(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Resultant of f(s) = sum f_i s^i and g(s) (coefficients lowest first, [..., e_f+1], [..., e_g+1]) as the
    determinant of their Sylvester matrix: -> [...]."""
    ef, eg = f.shape[-1] - 1, g.shape[-1] - 1
    n = ef + eg
    S = torch.zeros(*f.shape[:-1], n, n, dtype=f.dtype, device=f.device)
    for r in range(eg):
        S[..., r, r : r + ef + 1] = f.flip(-1)
    for r in range(ef):
        S[..., eg + r, r : r + eg + 1] = g.flip(-1)
    return torch.linalg.det(S)
