"""Monte-Carlo weights, kappa, eta and the sigma measure (docs/conventions.md section 5, eq. B.10-B.11)."""
from __future__ import annotations

import math

import torch


def real_det(g: torch.Tensor) -> torch.Tensor:
    """det of Hermitian matrices, real part: [..., d, d] -> [...]."""
    return torch.linalg.det(g).real


def log_det(g: torch.Tensor) -> torch.Tensor:
    """log det of Hermitian positive-definite matrices via Cholesky: [..., d, d] -> [...]."""
    L = torch.linalg.cholesky(g)
    return 2 * torch.log(L.diagonal(dim1=-2, dim2=-1).real).sum(-1)


def mc_weights(omega_sq: torch.Tensor, density: torch.Tensor, count: float) -> torch.Tensor:
    """w = count |Omega|^2 / density: [N], [N] -> [N].

    density is the sampled points' density prod_i J_i^{a_i} in the chart (:func:`mixed_discriminants`; det g_FS
    for one P^n) and count its integral over X (the intersection number: 5 for the quintic), so w reweights the
    points to the CY volume form with cymetric's normalisation: the Monte-Carlo volume of J^d,
    mean(w det g / |Omega|^2), is int_X J^d (the intersection number for one P^n).
    """
    return count * omega_sq / density


def mixed_discriminants(gs: torch.Tensor, powers) -> torch.Tensor:
    """D(g_1^{a_1}, ..., g_m^{a_m}) for each a in powers, from det(sum_i s_i g_i) = sum_a d! / prod a_i! prod s_i^{a_i}
    D_a: [m, N, d, d] -> [len(powers), N]. The coefficients come from det on a grid of roots of unity in s_2..s_m
    (s_1 = 1) and an FFT; for m = 1, det g_1."""
    m, d = gs.shape[0], gs.shape[-1]
    if m == 1:
        return real_det(gs[0])[None]
    w = torch.exp(2j * math.pi * torch.arange(d + 1, dtype=torch.float64) / (d + 1)).to(gs.dtype)
    grid = torch.stack(torch.meshgrid(*[w] * (m - 1), indexing="ij"), -1).reshape(-1, m - 1)  # [(d+1)^(m-1), m-1]
    s = torch.cat([torch.ones(len(grid), 1, dtype=gs.dtype), grid], -1)  # [G, m]
    dets = torch.linalg.det(torch.einsum("gi,inab->ngab", s, gs))  # [N, G]
    coeffs = torch.fft.fftn(dets.reshape(-1, *[d + 1] * (m - 1)), dim=list(range(1, m))) / (d + 1) ** (m - 1)
    # values at omega^j, then fft: the coefficient of s^e sits at index e
    return torch.stack([coeffs[(slice(None), *a[1:])].real * math.prod(math.factorial(x) for x in a) / math.factorial(d)
                        for a in powers])


def sampling_density(gs: torch.Tensor, surface) -> tuple[torch.Tensor, int]:
    """(the density sum_a prod_i J_i^{a_i} of the sampled points over the surface's sampling schemes [N], its
    integral over X: the sum of their intersection numbers), from the factors' FS metrics gs [m, N, d, d]."""
    powers = surface.sampling_powers
    return mixed_discriminants(gs, powers).sum(0), sum(surface.intersection_number(a) for a in powers)


def moduli_polynomial(gs: torch.Tensor, weights: torch.Tensor, omega_sq: torch.Tensor) -> dict:
    """kappa of the FS class as a polynomial in the Kaehler moduli: kappa(t) = sum_a c_a prod_i t_i^{a_i}, from the
    factors' FS metrics gs [m, N, d, d] on a point set: c_a = d! / prod a_i! sum w D_a / |Omega|^2 / sum w
    (det(sum t_i g_i) = sum_a d! / prod a_i! t^a D_a, :func:`mixed_discriminants`). Returns {a: c_a}."""
    from .cicy import compositions

    m, d = gs.shape[0], gs.shape[-1]
    powers = list(compositions(d, m))
    D = mixed_discriminants(gs, powers)
    mass = (weights * D / omega_sq).sum(-1) / weights.sum()
    return {a: float(c) * math.factorial(d) / math.prod(math.factorial(x) for x in a) for a, c in zip(powers, mass)}


def kappa_of_moduli(poly: dict, t: torch.Tensor) -> torch.Tensor:
    """kappa(t) of :func:`moduli_polynomial` at moduli t [B, m]: -> [B]."""
    out = torch.zeros(len(t), dtype=torch.float64, device=t.device)
    for a, c in poly.items():
        out = out + c * torch.prod(t.double() ** torch.tensor(a, dtype=torch.float64, device=t.device), -1)
    return out


def kappa(weights: torch.Tensor, det_g: torch.Tensor, omega_sq: torch.Tensor) -> torch.Tensor:
    """kappa = Vol_K / Vol_CY = sum(w det g / |Omega|^2) / sum(w) (eq. B.10)."""
    return (weights * det_g / omega_sq).sum() / weights.sum()


def eta(det_g: torch.Tensor, omega_sq: torch.Tensor, kappa_: torch.Tensor | float) -> torch.Tensor:
    """eta = det g / (kappa |Omega|^2) (eq. B.11): [N] -> [N]."""
    return det_g / (kappa_ * omega_sq)


def sigma(weights: torch.Tensor, det_g: torch.Tensor, omega_sq: torch.Tensor, kappa_=None) -> torch.Tensor:
    """Weighted sigma measure sum w |1 - eta| / sum w (eq. B.11), kappa of g itself unless given."""
    k = kappa(weights, det_g, omega_sq) if kappa_ is None else kappa_
    return (weights * (1 - eta(det_g, omega_sq, k)).abs()).sum() / weights.sum()
