"""Charts on X, the holomorphic top form, pullbacks and the Fubini-Study metric.

Conventions (docs/conventions.md section 2): a chart is a pair (patch, elim). In each factor
P^{n_i} the point is scaled so that its coordinate of largest modulus is 1 (the factor's patch coordinate);
the K eliminated coordinates (the K x K minor of dp/dz of largest |det| among the other coordinates) are
solved for; the remaining d = dim X coordinates, in increasing order, are the local coordinates x_a.
Both are stored as one integer per point, so that every batch keeps the shapes patch [N], elim [N]:
  patch = sum_i p_i prod_{j<i} (n_j + 1)   (p_i: the patch coordinate within factor i),
  elim  = sum_k e_k D^k                    (e_1 < ... < e_K: the eliminated coordinates, of all D).
For one P^n with K = 1 these are the coordinate indices themselves (patch = p, elim = e).
"""
from __future__ import annotations

import math
from itertools import combinations

import torch

from .cicy import CDTYPE, CompleteIntersection


def _radix(surface: CompleteIntersection, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per factor: (size n_i + 1, stride prod_{j<i} (n_j + 1), first coordinate): [m] x3 int64."""
    sizes = torch.tensor([n + 1 for n in surface.dims], device=device)
    strides = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.int64, device=device), sizes[:-1]]), 0)
    starts = torch.cumsum(sizes, 0) - sizes
    return sizes, strides, starts


def patch_coordinates(surface: CompleteIntersection, patch: torch.Tensor) -> torch.Tensor:
    """The patch coordinate of every factor (indices into z): [N] -> [N, m] int64."""
    sizes, strides, starts = _radix(surface, patch.device)
    return (patch[..., None] // strides) % sizes + starts


def elim_coordinates(surface: CompleteIntersection, elim: torch.Tensor) -> torch.Tensor:
    """The K eliminated coordinates, increasing: [N] -> [N, K] int64."""
    powers = surface.n_coords ** torch.arange(surface.K, device=elim.device)
    return (elim[..., None] // powers) % surface.n_coords


def chart_id(surface: CompleteIntersection, patch: torch.Tensor, elim: torch.Tensor) -> torch.Tensor:
    """One integer per chart: patch * D^K + elim: [N] -> [N]."""
    return patch * surface.n_coords**surface.K + elim


def chart_of_id(surface: CompleteIntersection, cid):
    """(patch, elim) of a chart id (inverse of :func:`chart_id`)."""
    return cid // surface.n_coords**surface.K, cid % surface.n_coords**surface.K


def n_chart_ids(surface: CompleteIntersection) -> int:
    """Chart ids are in range(n_chart_ids)."""
    return math.prod(n + 1 for n in surface.dims) * surface.n_coords**surface.K


def choose_patch(surface: CompleteIntersection, z: torch.Tensor, rank: int = 0) -> torch.Tensor:
    """In every factor the coordinate of largest modulus (rank 0; rank 1: the second largest): [N, D] -> patch [N]."""
    _, strides, _ = _radix(surface, z.device)
    local = torch.stack([z[:, s].abs().topk(rank + 1, -1).indices[:, rank] for s in surface.factor_slices], -1)
    return (local * strides).sum(-1)


def to_patch(surface: CompleteIntersection, z: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Scale each factor of each point so that its patch coordinate is 1 exactly: [N, D], [N] -> [N, D]."""
    P = patch_coordinates(surface, patch)  # [N, m]
    zp = z.gather(-1, P)  # [N, m]
    out = z / zp[..., surface.factor_of.to(z.device)]
    return out.scatter(-1, P, torch.ones_like(zp))


def _subsets(surface: CompleteIntersection, device) -> torch.Tensor:
    """All increasing K-tuples of coordinates: [S, K] int64."""
    return torch.tensor(list(combinations(range(surface.n_coords), surface.K)), dtype=torch.int64, device=device)


def choose_elim(surface: CompleteIntersection, dp: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """The K coordinates outside the patch whose minor det(dp_k/dz_e) has the largest modulus: dp [N, K, D] -> elim [N]."""
    sub = _subsets(surface, dp.device)  # [S, K]
    minors = torch.linalg.det(dp[:, :, sub].permute(0, 2, 1, 3)).abs()  # [N, S]
    P = patch_coordinates(surface, patch)  # [N, m]
    uses_patch = (sub[None, :, :, None] == P[:, None, None, :]).any(-1).any(-1)  # [N, S]
    best = minors.masked_fill(uses_patch, -1.0).argmax(-1)
    return (sub[best] * surface.n_coords ** torch.arange(surface.K, device=dp.device)).sum(-1)


def choose_chart(surface: CompleteIntersection, z: torch.Tensor):
    """The preferred chart of each point.

    z [N, D] -> (z in its patch [N, D], dp/dz there [N, K, D], patch [N], elim [N]).
    """
    patch = choose_patch(surface, z)
    z = to_patch(surface, z, patch)
    dp = surface.gradient(z)
    return z, dp, patch, choose_elim(surface, dp, patch)


def ties_for_largest(surface: CompleteIntersection, z: torch.Tensor, rtol: float = 1e-12) -> torch.Tensor:
    """True where two coordinates of a factor tie for largest modulus (the patch is ambiguous): [N, D] -> [N] bool."""
    tie = torch.zeros(len(z), dtype=torch.bool, device=z.device)
    for s in surface.factor_slices:
        top2 = z[:, s].abs().topk(2, dim=-1).values
        tie |= (top2[:, 0] - top2[:, 1]) <= rtol * top2[:, 0]
    return tie


def local_indices(surface: CompleteIntersection, patch: torch.Tensor, elim: torch.Tensor) -> torch.Tensor:
    """Indices of the local coordinates, increasing: [N], [N] -> [N, d] int64.

    The d smallest coordinates that are neither a patch nor an eliminated one; no data-dependent shapes, so it
    works under torch.func.vmap.
    """
    D = surface.n_coords
    removed = torch.cat([patch_coordinates(surface, patch), elim_coordinates(surface, elim)], -1)  # [N, m + K]
    coords = torch.arange(D, device=patch.device)
    taken = (removed[..., :, None] == coords).any(-2)  # [N, D]
    return torch.sort(coords + D * taken.long(), -1).values[..., : surface.dim]


def _minor(surface, dp, elim):
    """dp_k/dz_e over the eliminated coordinates e: [N, K, D] -> [N, K, K]."""
    E = elim_coordinates(surface, elim)
    return dp.gather(-1, E[..., None, :].expand(*E.shape[:-1], surface.K, surface.K))


def pullback(surface: CompleteIntersection, dp: torch.Tensor, patch: torch.Tensor, elim: torch.Tensor) -> torch.Tensor:
    """J_aI = dz_I/dx_a on X from dp/dz [N, K, D] -> [N, d, D] complex.

    delta for the local coordinates, 0 for the patch coordinates and, for the eliminated ones,
    dz_E/dx_a = -(dp/dz_E)^-1 dp/dx_a (implicit function theorem; = -(dp/dx_a)/(dp/dz_e) for K = 1).
    """
    D = surface.n_coords
    loc = local_indices(surface, patch, elim)  # [N, d]
    E = elim_coordinates(surface, elim)  # [N, K]
    ambient = torch.arange(D, device=dp.device)
    onehot_loc = (loc[..., None] == ambient).to(dp.dtype)  # [N, d, D]
    onehot_elim = (E[..., None] == ambient).to(dp.dtype)  # [N, K, D]
    dp_loc = dp.gather(-1, loc[..., None, :].expand(*loc.shape[:-1], surface.K, loc.shape[-1]))  # [N, K, d]
    dz_elim = -torch.linalg.solve(_minor(surface, dp, elim), dp_loc)  # [N, K, d]
    return onehot_loc + dz_elim.transpose(-1, -2) @ onehot_elim


def omega_sq(surface: CompleteIntersection, dp: torch.Tensor, elim: torch.Tensor) -> torch.Tensor:
    """|Omega|^2 with Omega = dx_1..dx_d / det(dp_k/dz_e) (residue formula): dp [N, K, D] -> [N] real."""
    return torch.linalg.det(_minor(surface, dp, elim)).abs().pow(-2)


def factor_norms_sq(surface: CompleteIntersection, z: torch.Tensor) -> torch.Tensor:
    """|z_i|^2 of every factor: [..., D] -> [..., m]."""
    f = surface.factor_of.to(z.device)
    a2 = z.abs() ** 2
    return torch.zeros(*z.shape[:-1], len(surface.dims), dtype=a2.dtype, device=z.device).index_add(-1, f, a2)


def kahler_metric(gs: torch.Tensor, kahler) -> torch.Tensor:
    """sum_i t_i g_i from the factors' metrics gs [m, N, d, d]; t [m] or per point [N, m]: -> [N, d, d]."""
    t = torch.as_tensor(kahler, dtype=torch.float64, device=gs.device).to(gs.dtype)
    return torch.einsum("i,inab->nab" if t.ndim == 1 else "ni,inab->nab", t, gs)


def fs_metric(surface: CompleteIntersection | None, z: torch.Tensor, kahler=None) -> torch.Tensor:
    """Ambient metric of J = sum_i t_i J_i, block diagonal: [..., D] -> [..., D, D] (surface None: one P^{D-1}, t = 1;
    kahler: other moduli than the manifold's).

    Block i is t_i g_FS of P^{n_i}: (t_i / pi) (|z_i|^2 delta_IJ - conj(z_I) z_J) / |z_i|^4 (|z_i|^2 of the factor).
    """
    if surface is None:
        f, kahler, r2 = torch.zeros(z.shape[-1], dtype=torch.int64, device=z.device), (1.0,), (z.abs() ** 2).sum(-1, keepdim=True)
    else:
        f, kahler, r2 = surface.factor_of.to(z.device), surface.kahler if kahler is None else kahler, factor_norms_sq(surface, z)
    same = (f[:, None] == f[None, :]).to(z.dtype)
    t = torch.tensor(kahler, dtype=torch.float64, device=z.device)[f]  # [D]
    r2 = r2[..., f]
    eye = torch.eye(z.shape[-1], dtype=CDTYPE, device=z.device)
    outer = z.conj()[..., :, None] * z[..., None, :]
    return same * (t * (r2[..., :, None] * eye - outer) / (math.pi * r2**2)[..., :, None])


def pull_back(J: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """g_ab = J_aI G_IJbar conj(J_bJ): [N, d, D], [N, D, D] -> [N, d, d]."""
    return J @ G @ J.conj().transpose(-1, -2)


def chart_jacobian(surface: CompleteIntersection, z: torch.Tensor, J_to: torch.Tensor, patch_from: torch.Tensor,
                   elim_from: torch.Tensor) -> torch.Tensor:
    """T_ab = d x^from_b / d x^to_a between two charts at the same point: -> [N, d, d].

    z [N, D] is scaled in the ``to`` chart and J_to is that chart's pullback. With x^from_b = z_{loc_b} / z_{p_b}
    (p_b the ``from`` patch coordinate of loc_b's factor): T_ab = (J_to[a, loc_b] - x^from_b J_to[a, p_b]) / z_{p_b}.
    A (1,1)-tensor transforms as g_to = T g_from T^dagger.
    """
    loc = local_indices(surface, patch_from, elim_from)  # [N, d]
    pf = patch_coordinates(surface, patch_from).gather(-1, surface.factor_of.to(z.device)[loc])  # [N, d]
    zp = z.gather(-1, pf)
    x_from = z.gather(-1, loc) / zp
    d = J_to.shape[-2]
    J_loc = J_to.gather(-1, loc[:, None, :].expand(-1, d, -1))
    J_p = J_to.gather(-1, pf[:, None, :].expand(-1, d, -1))
    return (J_loc - J_p * x_from[:, None, :]) / zp[:, None, :]


def factor_metrics(surface: CompleteIntersection, z: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """The pulled-back FS metric of each factor with t_i = 1, g_i = J G_i J^H: [N, D], [N, d, D] -> [m, N, d, d]
    (so that the pulled-back metric of J = sum t_i J_i is sum_i t_i g_i)."""
    G = fs_metric(surface, z, kahler=(1.0,) * len(surface.dims))
    f = surface.factor_of.to(z.device)
    return torch.stack([pull_back(J * (f == i).to(J.dtype), G) for i in range(len(surface.dims))])
