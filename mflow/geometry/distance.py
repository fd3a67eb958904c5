"""Fubini-Study geodesic distance on P^n (eq. 3.2), all-pairs blocks and nearest neighbours.

eq. 3.2 writes d = arccos(|<z, z'>| / (|z||z'|)); near d = 0 that loses half the digits
(arccos(1 - e) ~ sqrt(2e), eq. 3.4: float32 round-off alone gives d ~ 3e-4). Here, with unit
vectors u, u' and the phase theta = arg<u, u'> that best aligns them, the chord
c = |u' - e^{i theta} u| = sqrt(2 - 2|<u, u'>|) is formed as a difference of vectors, and
d = 2 arcsin(c / 2). That is exact at identical points (d = 0 to the last bit, no threshold
needed) and accurate to round-off relative to d everywhere else.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def unit(z: torch.Tensor) -> torch.Tensor:
    """z / |z| (the representative on the unit sphere): [..., n+1] -> [..., n+1]."""
    return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)


def fs_distance(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Pairwise-aligned FS distance d(z, w) in [0, pi/2]: [..., n+1] x [..., n+1] -> [...]."""
    u, v = unit(z), unit(w)
    inner = (u.conj() * v).sum(-1)
    phase = torch.where(inner.abs() > 0, inner / inner.abs(), torch.ones_like(inner))
    chord = torch.linalg.vector_norm(v - phase[..., None] * u, dim=-1)
    return 2 * torch.asin((chord / 2).clamp(max=1.0))


def overlap(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """|<u_i, v_j>| for unit vectors from one real matrix product: [Na, n+1] x [Nb, n+1] -> [Na, Nb]."""
    a = torch.cat([u.real, u.imag], 1)
    b = torch.cat([torch.cat([v.real, v.imag], 1), torch.cat([v.imag, -v.real], 1)], 0)
    prod = a @ b.T
    return torch.hypot(prod[:, : len(v)], prod[:, len(v) :]).clamp_(max=1.0)


NEAR = 1e-3  # pairs with 1 - |<u, v>| below this get the exact chord formula


def fs_distance_block(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """All pairs d(z_i, w_j): [Na, n+1] x [Nb, n+1] -> [Na, Nb].

    arccos|<u, v>| from one matrix product where that is accurate (1 - |<u, v>| > 1e-3, relative
    error ~1e-12); the few closer pairs are recomputed with the exact chord form above.
    """
    ov = overlap(unit(z), unit(w))
    d = torch.arccos(ov)
    i, j = torch.nonzero(ov > 1 - NEAR, as_tuple=True)
    if len(i):
        d[i, j] = fs_distance(z[i], w[j])
    return d


def fs_distance_matrix(z: torch.Tensor, w: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """All pairs d(z_i, w_j): [N, n+1] x [M, n+1] -> [N, M], built in row blocks (O(block * M) work memory)."""
    w = z if w is None else w
    return torch.cat([fs_distance_block(z[i : i + block], w) for i in range(0, len(z), block)])


def embed(z: torch.Tensor) -> torch.Tensor:
    """The point u u^H (u = z/|z|) of P^n as a real vector with its Frobenius norm: [N, n+1] -> [N, (n+1)^2] float64.

    <E(u), E(v)> = tr(u u^H v v^H) = |<u, v>|^2 = cos^2 d_FS(u, v), so all pairs' cos^2 d come from one real
    matrix product, and |E(u) - E(v)|^2 = 2 sin^2 d_FS(u, v) is increasing in the FS distance: Euclidean nearest
    neighbours of the embedded points are FS-nearest neighbours.
    """
    u = unit(z.to(torch.complex128))
    n1 = u.shape[-1]
    P = u[:, :, None] * u.conj()[:, None, :]
    iu = torch.triu_indices(n1, n1, 1, device=u.device)
    off = P[:, iu[0], iu[1]] * math.sqrt(2.0)
    return torch.cat([P.diagonal(dim1=1, dim2=2).real, off.real, off.imag], 1)


class NearestIndex:
    """Exact FS-nearest points of a fixed set (a k-d tree on :func:`embed`); distances recomputed with
    :func:`fs_distance` (exact near 0). Queries on any device; the tree lives on the CPU."""

    def __init__(self, z: torch.Tensor):
        from scipy.spatial import cKDTree

        if z.ndim != 2 or len(z) == 0:
            raise ValueError(f"NearestIndex needs a non-empty [N, n+1] point set, got {tuple(z.shape)}")
        self.z = z.to(torch.complex128)
        self.tree = cKDTree(embed(self.z).cpu().numpy())

    def query(self, q: torch.Tensor, upper: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(FS distance [N], index [N]) of each query point's nearest indexed point.

        upper [N]: a known FS distance to some indexed point (e.g. the one a noised point came from); it bounds
        the search (much faster for points near the set), and the answer is still exact.
        """
        E = embed(q).cpu().numpy()
        if upper is None:
            _, idx = self.tree.query(E, k=1)
        else:
            bound = (math.sqrt(2.0) * torch.sin(upper.cpu().clamp(max=math.pi / 2)) * (1 + 1e-9) + 1e-15).numpy()
            idx = np.empty(len(E), dtype=np.int64)
            order = np.argsort(bound)  # cKDTree takes one scalar bound: query in groups of similar bounds
            for chunk in np.array_split(order, max(1, min(32, len(order) // 256))):
                if len(chunk):
                    idx[chunk] = self.tree.query(E[chunk], k=1, distance_upper_bound=float(bound[chunk].max()))[1]
            missing = idx >= len(self.z)
            if missing.any():  # nothing within the bound (only if the bound was not attained): search fully
                idx[missing] = self.tree.query(E[missing], k=1)[1]
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return fs_distance(q.to(torch.complex128), self.z[idx.to(self.z.device)].to(q.device)), idx.to(q.device)

    def self_query(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(FS distance [N], index [N]) from each indexed point to its nearest OTHER indexed point."""
        _, idx = self.tree.query(self.tree.data, k=2)
        n = np.arange(len(idx))
        other = torch.as_tensor(np.where(idx[:, 0] == n, idx[:, 1], idx[:, 0]))
        return fs_distance(self.z, self.z[other]), other


def nearest_neighbours(z: torch.Tensor, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest point of w (or of z itself, excluding i) for each z_i: -> (FS distance [N], index [N])."""
    if w is None:
        return NearestIndex(z).self_query()
    return NearestIndex(w).query(z)


def nearest_neighbour_stats(z: torch.Tensor, w: torch.Tensor | None = None) -> dict:
    """min / mean / max of the nearest-neighbour FS distance (Fig. 3 right)."""
    d, _ = nearest_neighbours(z, w)
    return {"min": float(d.min()), "mean": float(d.mean()), "max": float(d.max())}
