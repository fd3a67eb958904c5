"""Charts on X, the holomorphic top form, pullbacks and the Fubini-Study metric.

Conventions (REFERENCE.md section 1): a chart is a pair (patch, elim). The point is scaled
so that z_patch = 1 (the coordinate of largest modulus); the coordinate z_elim (largest
|dp/dz_j| among the others) is solved for; the remaining n-1 coordinates, in increasing
order, are the local coordinates x_a.
"""
from __future__ import annotations

import math

import torch

from .hypersurface import CDTYPE, Hypersurface


def largest_coordinate(z: torch.Tensor) -> torch.Tensor:
    """Index of the coordinate of largest modulus: [N, n+1] -> [N] int64."""
    return z.abs().argmax(-1)


def to_patch(z: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Scale each point so that z_patch = 1 exactly: [N, n+1], [N] -> [N, n+1]."""
    zp = z.gather(-1, patch[:, None])
    out = z / zp
    return out.scatter(-1, patch[:, None], torch.ones_like(zp))


def eliminated_coordinate(dp: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Index j != patch of largest |dp/dz_j|: dp [N, n+1], patch [N] -> [N] int64."""
    a = dp.abs().scatter(-1, patch[:, None], torch.full_like(dp[:, :1].real, -1.0))
    return a.argmax(-1)


def choose_chart(surface: Hypersurface, z: torch.Tensor):
    """The preferred chart of each point.

    z [N, n+1] -> (z in its patch [N, n+1], dp/dz there [N, n+1], patch [N], elim [N]).
    """
    patch = largest_coordinate(z)
    z = to_patch(z, patch)
    dp = surface.gradient(z)
    return z, dp, patch, eliminated_coordinate(dp, patch)


def ties_for_largest(z: torch.Tensor, rtol: float = 1e-12) -> torch.Tensor:
    """True where two coordinates tie for largest modulus (the patch is ambiguous): [N, n+1] -> [N] bool."""
    top2 = z.abs().topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]) <= rtol * top2[:, 0]


def local_indices(patch: torch.Tensor, elim: torch.Tensor, n1: int) -> torch.Tensor:
    """Ambient indices of the local coordinates, increasing: [N], [N] -> [N, n-1] int64.

    The k-th index skips the two removed ones, min(patch, elim) and max(patch, elim); computed without
    data-dependent shapes, so it works under torch.func.vmap.
    """
    k = torch.arange(n1 - 2, device=patch.device)
    lo, hi = torch.minimum(patch, elim)[..., None], torch.maximum(patch, elim)[..., None]
    j = k + (k >= lo).long()
    return j + (j >= hi).long()


def pullback(dp: torch.Tensor, patch: torch.Tensor, elim: torch.Tensor) -> torch.Tensor:
    """J_aI = dz_I/dx_a on X from dp/dz [N, n+1] -> [N, n-1, n+1] complex.

    delta for the local coordinates, 0 for the patch coordinate and
    -(dp/dx_a)/(dp/dz_elim) for the eliminated one (implicit function theorem).
    """
    n1 = dp.shape[-1]
    loc = local_indices(patch, elim, n1)  # [N, n-1]
    ambient = torch.arange(n1, device=dp.device)
    onehot_loc = (loc[..., None] == ambient).to(dp.dtype)  # [N, n-1, n+1]
    onehot_elim = (elim[:, None] == ambient).to(dp.dtype)[:, None, :]  # [N, 1, n+1]
    dz_elim = -dp.gather(-1, loc) / dp.gather(-1, elim[:, None])  # [N, n-1]
    return onehot_loc + dz_elim[..., None] * onehot_elim


def omega_sq(dp: torch.Tensor, elim: torch.Tensor) -> torch.Tensor:
    """|Omega|^2 with Omega = 1/(dp/dz_elim) (residue formula): dp [N, n+1] -> [N] real."""
    return dp.gather(-1, elim[:, None])[:, 0].abs().pow(-2)


def fs_metric(z: torch.Tensor) -> torch.Tensor:
    """Ambient FS metric g_IJbar = d_I dbar_J (1/pi) log|z|^2: [..., n+1] -> [..., n+1, n+1].

    = (1/pi) (|z|^2 delta_IJ - conj(z_I) z_J) / |z|^4.
    """
    r2 = (z.abs() ** 2).sum(-1)[..., None, None]
    eye = torch.eye(z.shape[-1], dtype=CDTYPE, device=z.device)
    outer = z.conj()[..., :, None] * z[..., None, :]
    return (r2 * eye - outer) / (math.pi * r2**2)


def pull_back(J: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """g_ab = J_aI G_IJbar conj(J_bJ): [N, n-1, n+1], [N, n+1, n+1] -> [N, n-1, n-1]."""
    return J @ G @ J.conj().transpose(-1, -2)


def chart_jacobian(z: torch.Tensor, J_to: torch.Tensor, patch_from: torch.Tensor, loc_from: torch.Tensor) -> torch.Tensor:
    """T_ab = d x^from_b / d x^to_a between two charts at the same point: -> [N, n-1, n-1].

    z [N, n+1] is scaled in the ``to`` chart (z_patch_to = 1) and J_to is that chart's pullback.
    With x^from_b = z_{loc_b} / z_{patch_from}:
    T_ab = (J_to[a, loc_b] - x^from_b J_to[a, patch_from]) / z_patch_from.
    A (1,1)-tensor transforms as g_to = T g_from T^dagger.
    """
    zp = z.gather(-1, patch_from[:, None])  # [N, 1]
    x_from = z.gather(-1, loc_from) / zp  # [N, n-1]
    J_loc = J_to.gather(-1, loc_from[:, None, :].expand(-1, J_to.shape[1], -1))  # [N, n-1, n-1]
    J_p = J_to.gather(-1, patch_from[:, None, None].expand(-1, J_to.shape[1], 1))  # [N, n-1, 1]
    return (J_loc - J_p * x_from[:, None, :]) / zp[:, None, :]
