"""Shiffman-Zelditch sampling of points on X (REFERENCE.md section 1).

A random line z(t) = a + t b, with a, b complex Gaussian in C^{n+1}, meets X in n+1
points; taking all of them draws points from the Fubini-Study volume form restricted to X.
"""
from __future__ import annotations

import math

import torch

from .hypersurface import CDTYPE, RDTYPE, Hypersurface


def line_coefficients(surface: Hypersurface, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Coefficients of q(t) = p(a + t b), lowest degree first: [L, n+1] x2 -> [L, d+1].

    p restricted to a line is a degree-d polynomial in t; it is recovered exactly from its
    values at the d+1 roots of unity by a discrete Fourier transform.
    """
    d = surface.degree
    omega = torch.exp(2j * math.pi * torch.arange(d + 1, dtype=RDTYPE) / (d + 1)).to(CDTYPE)
    values = surface(a[:, None, :] + omega[None, :, None] * b[:, None, :])  # [L, d+1]
    return torch.fft.fft(values, dim=-1) / (d + 1)


def polynomial_roots(coeffs: torch.Tensor) -> torch.Tensor:
    """All roots of sum_m c_m t^m as companion-matrix eigenvalues, batched: [L, d+1] -> [L, d]."""
    d = coeffs.shape[-1] - 1
    comp = torch.zeros(coeffs.shape[0], d, d, dtype=CDTYPE)
    comp[:, 1:, :-1] = torch.eye(d - 1, dtype=CDTYPE)
    comp[:, :, -1] = -coeffs[:, :-1] / coeffs[:, -1:]
    return torch.linalg.eigvals(comp)


def sample_points(
    surface: Hypersurface, n_points: int, generator: torch.Generator, newton_steps: int = 2
) -> torch.Tensor:
    """Shiffman-Zelditch points on X: -> [n_points, n+1] complex128 (homogeneous coordinates).

    The roots in t are polished by Newton steps on p(a + t b), so p vanishes to round-off.
    """
    n1 = surface.n + 1
    n_lines = -(-n_points // surface.degree)
    ab = torch.randn(2, n_lines, n1, 2, generator=generator, dtype=RDTYPE)
    a, b = torch.view_as_complex(ab[0].contiguous()), torch.view_as_complex(ab[1].contiguous())
    t = polynomial_roots(line_coefficients(surface, a, b))  # [L, d]
    a_, b_ = a[:, None, :], b[:, None, :]
    for _ in range(newton_steps):
        z = a_ + t[..., None] * b_
        t = t - surface(z) / (surface.gradient(z) * b_).sum(-1)
    z = (a_ + t[..., None] * b_).reshape(-1, n1)
    return z[:n_points]
