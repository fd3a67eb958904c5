"""Fubini-Study geodesic distance on P^n (eq. 3.2), all-pairs blocks and nearest neighbours.

eq. 3.2 writes d = arccos(|<z, z'>| / (|z||z'|)); near d = 0 that loses half the digits
(arccos(1 - e) ~ sqrt(2e), eq. 3.4: float32 round-off alone gives d ~ 3e-4). Here, with unit
vectors u, u' and the phase theta = arg<u, u'> that best aligns them, the chord
c = |u' - e^{i theta} u| = sqrt(2 - 2|<u, u'>|) is formed as a difference of vectors, and
d = 2 arcsin(c / 2). That is exact at identical points (d = 0 to the last bit, no threshold
needed) and accurate to round-off relative to d everywhere else.
"""
from __future__ import annotations

import torch


def _unit(z: torch.Tensor) -> torch.Tensor:
    return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)


def fs_distance(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Pairwise-aligned FS distance d(z, w) in [0, pi/2]: [..., n+1] x [..., n+1] -> [...]."""
    u, v = _unit(z), _unit(w)
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
    ov = overlap(_unit(z), _unit(w))
    d = torch.arccos(ov)
    i, j = torch.nonzero(ov > 1 - NEAR, as_tuple=True)
    if len(i):
        d[i, j] = fs_distance(z[i], w[j])
    return d


def fs_distance_matrix(z: torch.Tensor, w: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """All pairs d(z_i, w_j): [N, n+1] x [M, n+1] -> [N, M], built in row blocks (O(block * M) work memory)."""
    w = z if w is None else w
    return torch.cat([fs_distance_block(z[i : i + block], w) for i in range(0, len(z), block)])


def nearest_neighbours(
    z: torch.Tensor, w: torch.Tensor | None = None, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest point of w (or of z itself, excluding i) for each z_i: -> (distance [N], index [N]).

    d is increasing in |<u, v>|, so the neighbour is the argmax of |<u, v>| (one real matrix
    product per block of rows, O(block * M) memory, block = 2^22 / M rows by default, i.e. about
    100 MB of work space); its distance is then recomputed exactly.
    """
    self_query = w is None
    w = z if w is None else w
    block = block or max(16, 2**22 // max(len(w), 1))
    u, v = _unit(z), _unit(w)
    idx = torch.empty(len(z), dtype=torch.int64, device=z.device)
    for i in range(0, len(z), block):
        ov = overlap(u[i : i + block], v)
        if self_query:
            rows = torch.arange(i, min(i + block, len(z)), device=z.device)
            ov[rows - i, rows] = -1.0
        idx[i : i + block] = ov.argmax(-1)
    return fs_distance(z, w[idx]), idx


def nearest_neighbour_stats(z: torch.Tensor, w: torch.Tensor | None = None) -> dict:
    """min / mean / max of the nearest-neighbour FS distance (Fig. 3 right)."""
    d, _ = nearest_neighbours(z, w)
    return {"min": float(d.min()), "mean": float(d.mean()), "max": float(d.max())}
