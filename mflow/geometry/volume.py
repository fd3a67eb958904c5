"""Monte-Carlo weights, kappa, eta and the sigma measure (REFERENCE.md section 1, eq. B.10-B.11)."""
from __future__ import annotations

import torch


def real_det(g: torch.Tensor) -> torch.Tensor:
    """det of Hermitian matrices, real part: [..., d, d] -> [...]."""
    return torch.linalg.det(g).real


def log_det(g: torch.Tensor) -> torch.Tensor:
    """log det of Hermitian positive-definite matrices via Cholesky: [..., d, d] -> [...]."""
    L = torch.linalg.cholesky(g)
    return 2 * torch.log(L.diagonal(dim1=-2, dim2=-1).real).sum(-1)


def mc_weights(omega_sq: torch.Tensor, det_g_fs: torch.Tensor, intersection_number: float) -> torch.Tensor:
    """w = vol_J |Omega|^2 / det g_FS: [N], [N] -> [N].

    Shiffman-Zelditch points are FS-distributed, so w reweights them to the CY volume form;
    cymetric's normalisation makes the Monte-Carlo volume of J^{n-1}, mean(w det g_FS/|Omega|^2),
    equal the intersection number (5 for the quintic).
    """
    return intersection_number * omega_sq / det_g_fs


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
