"""Fubini-Study geodesic distance on P^n (eq. 3.2) and on products of projective spaces; all-pairs blocks and
nearest neighbours.

eq. 3.2 writes d = arccos(|<z, z'>| / (|z||z'|)); near d = 0 that loses half the digits
(arccos(1 - e) ~ sqrt(2e), eq. 3.4: float32 round-off alone gives d ~ 3e-4). Here, with unit
vectors u, u' and the phase theta = arg<u, u'> that best aligns them, the chord
c = |u' - e^{i theta} u| = sqrt(2 - 2|<u, u'>|) is formed as a difference of vectors, and
d = 2 arcsin(c / 2). That is exact at identical points (d = 0 to the last bit, no threshold
needed) and accurate to round-off relative to d everywhere else.

Products. Every function takes ``X`` (a :class:`mflow.geometry.cicy.CompleteIntersection`, or None). On
X in P^{n_1} x ... x P^{n_m} with Kaehler moduli t_i the distance is the product metric's geodesic distance,
sqrt(sum t_i d_i^2): the Riemannian distance of sum_i t_i g_FS,i, with d_i the FS distance above between the
points' i-th factors (z[:, X.factor_slices[i]]); so it is exact at 0 and accurate relative to d as well.
X = None, or one P^n with t = 1 (the quintic), runs the single-P^n code unchanged (bit-identical results);
one factor with t != 1 gives sqrt(t) d_FS.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def unit(z: torch.Tensor) -> torch.Tensor:
    """z / |z| (the representative on the unit sphere): [..., n+1] -> [..., n+1]."""
    return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)


def factors(X, z: torch.Tensor | None = None) -> list[tuple[slice, float]] | None:
    """[(coordinates of factor i, t_i)] of X, or None where the single-P^n code applies (X None, or one P^n with
    t = 1). With z given, refuses coordinates of another width than X's."""
    if X is None:
        return None
    if z is not None and z.shape[-1] != X.n_coords:
        raise ValueError(f"points have {z.shape[-1]} coordinates, {X.ambient} has {X.n_coords}")
    if len(X.dims) == 1 and tuple(X.kahler) == (1.0,):
        return None
    return list(zip(X.factor_slices, (float(t) for t in X.kahler)))


def combine(parts: list[torch.Tensor], fac: list[tuple[slice, float]]) -> torch.Tensor:
    """sqrt(sum_i t_i d_i^2) from the per-factor distances d_i (sqrt(t) d for one factor); overwrites parts."""
    if len(parts) == 1:
        return parts[0].mul_(math.sqrt(fac[0][1]))
    acc = parts[0].square_().mul_(fac[0][1])
    for d, (_, t) in zip(parts[1:], fac[1:]):
        acc.add_(d.square_().mul_(t))
    return acc.sqrt_()


def _fs_distance(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    u, v = unit(z), unit(w)
    inner = (u.conj() * v).sum(-1)
    phase = torch.where(inner.abs() > 0, inner / inner.abs(), torch.ones_like(inner))
    chord = torch.linalg.vector_norm(v - phase[..., None] * u, dim=-1)
    return 2 * torch.asin((chord / 2).clamp(max=1.0))


def fs_distance(z: torch.Tensor, w: torch.Tensor, X=None) -> torch.Tensor:
    """Pairwise-aligned distance d(z, w): [..., D] x [..., D] -> [...]; in [0, pi/2] on one P^n (X None), the
    product distance sqrt(sum t_i d_i^2) on X (module doc)."""
    fac = factors(X, z)
    if fac is None:
        return _fs_distance(z, w)
    return combine([_fs_distance(z[..., sl], w[..., sl]) for sl, _ in fac], fac)


def overlap(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """|<u_i, v_j>| for unit vectors from one real matrix product: [Na, n+1] x [Nb, n+1] -> [Na, Nb]."""
    a = torch.cat([u.real, u.imag], 1)
    b = torch.cat([torch.cat([v.real, v.imag], 1), torch.cat([v.imag, -v.real], 1)], 0)
    prod = a @ b.T
    return torch.hypot(prod[:, : len(v)], prod[:, len(v) :]).clamp_(max=1.0)


NEAR = 1e-3  # pairs with 1 - |<u, v>| below this get the exact chord formula


def _block(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    ov = overlap(unit(z), unit(w))
    d = torch.arccos(ov)
    i, j = torch.nonzero(ov > 1 - NEAR, as_tuple=True)
    if len(i):
        d[i, j] = _fs_distance(z[i], w[j])
    return d


def fs_distance_block(z: torch.Tensor, w: torch.Tensor, X=None) -> torch.Tensor:
    """All pairs d(z_i, w_j): [Na, D] x [Nb, D] -> [Na, Nb].

    arccos|<u, v>| from one matrix product where that is accurate (1 - |<u, v>| > 1e-3, relative
    error ~1e-12); the few closer pairs are recomputed with the exact chord form above. On a product X
    this is done per factor (one overlap matrix each), then combined to sqrt(sum t_i d_i^2).
    """
    fac = factors(X, z)
    if fac is None:
        return _block(z, w)
    return combine([_block(z[:, sl], w[:, sl]) for sl, _ in fac], fac)


def fs_distance_matrix(z: torch.Tensor, w: torch.Tensor | None = None, block: int = 1024, X=None) -> torch.Tensor:
    """All pairs d(z_i, w_j): [N, D] x [M, D] -> [N, M], built in row blocks (O(block * M) work memory)."""
    w = z if w is None else w
    return torch.cat([fs_distance_block(z[i : i + block], w, X) for i in range(0, len(z), block)])


def embed(z: torch.Tensor, X=None) -> torch.Tensor:
    """The point u u^H (u = z/|z|) of P^n as a real vector with its Frobenius norm: [N, n+1] -> [N, (n+1)^2] float64.

    <E(u), E(v)> = tr(u u^H v v^H) = |<u, v>|^2 = cos^2 d_FS(u, v), so all pairs' cos^2 d come from one real
    matrix product, and |E(u) - E(v)|^2 = 2 sin^2 d_FS(u, v) is increasing in the FS distance: Euclidean nearest
    neighbours of the embedded points are FS-nearest neighbours.

    On a product X: the factors' embeddings scaled by sqrt(t_i), side by side ([N, sum (n_i+1)^2]), so that
    |E(u) - E(v)|^2 = sum_i 2 t_i sin^2 d_i, between (8/pi^2) d^2 and 2 d^2 (d the product distance), but no longer
    a function of d alone (NearestIndex re-ranks exactly).
    """
    fac = factors(X, z)
    if fac is not None:
        return torch.cat([math.sqrt(t) * embed(z[:, sl]) for sl, t in fac], 1)
    u = unit(z.to(torch.complex128))
    n1 = u.shape[-1]
    P = u[:, :, None] * u.conj()[:, None, :]
    iu = torch.triu_indices(n1, n1, 1, device=u.device)
    off = P[:, iu[0], iu[1]] * math.sqrt(2.0)
    return torch.cat([P.diagonal(dim1=1, dim2=2).real, off.real, off.imag], 1)


def _tree_coords(z: torch.Tensor, fac) -> np.ndarray:
    """:func:`embed` on X, less one constant direction per factor (the trace, tr u u^H = 1: its diagonal part is
    rotated onto the n_i directions orthogonal to (1, ..., 1)): the same distances, a k-d tree of lower dimension."""
    out = []
    for sl, t in fac:
        e = embed(z[:, sl]).cpu()
        n1 = sl.stop - sl.start
        helmert = torch.linalg.qr(torch.eye(n1, dtype=e.dtype) - 1.0 / n1)[0][:, : n1 - 1]  # orthonormal, _|_ (1..1)
        out.append(math.sqrt(t) * torch.cat([e[:, :n1] @ helmert, e[:, n1:]], 1))
    return torch.cat(out, 1).numpy()


class NearestIndex:
    """Exact nearest points of a fixed set under :func:`fs_distance` (with X: the product distance); distances
    recomputed with :func:`fs_distance` (exact near 0). Queries on any device; the tree lives on the CPU.

    One P^n: a k-d tree on :func:`embed` (monotone in d_FS, so its nearest point is the FS-nearest). A product
    (m > 1): the tree on the sqrt(t_i)-scaled product embedding E gives K candidates and, from the exact distance
    D_c of the closest of them, a bound: every point at distance <= D_c has |dE| <= sqrt(2) D_c (2 sin^2 x <= 2 x^2).
    Rows whose K-th candidate lies beyond that radius are complete; the others query the ball of that radius.
    The answer is the exact minimum of the candidates' exact distances (ties: any of the tied points).
    """

    K = 2  # candidates per query from the tree on products (the ball rarely holds more: few rows need a ball query)

    def __init__(self, z: torch.Tensor, X=None):
        from scipy.spatial import cKDTree

        if z.ndim != 2 or len(z) == 0:
            raise ValueError(f"NearestIndex needs a non-empty [N, n+1] point set, got {tuple(z.shape)}")
        self.X, self.fac = X, factors(X, z)
        self.product = self.fac is not None and len(self.fac) > 1
        self.scale = 1.0 if self.fac is None else math.sqrt(self.fac[0][1])  # one factor: d = sqrt(t) d_FS
        self.z = z.to(torch.complex128)
        self.tree = cKDTree(_tree_coords(self.z, self.fac) if self.product else embed(self.z).cpu().numpy())

    def query(self, q: torch.Tensor, upper: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance [N], index [N]) of each query point's nearest indexed point.

        upper [N]: a known distance to some indexed point (e.g. the one a noised point came from); it bounds
        the search (much faster for points near the set), and the answer is still exact.
        """
        if self.product:
            return self._query_product(q, upper)
        factors(self.X, q)
        E = embed(q).cpu().numpy()
        if upper is None:
            _, idx = self.tree.query(E, k=1)
        else:
            upper = upper.cpu() / self.scale
            bound = (math.sqrt(2.0) * torch.sin(upper.clamp(max=math.pi / 2)) * (1 + 1e-9) + 1e-15).numpy()
            idx = np.empty(len(E), dtype=np.int64)
            order = np.argsort(bound)  # cKDTree takes one scalar bound: query in groups of similar bounds
            for chunk in np.array_split(order, max(1, min(32, len(order) // 256))):
                if len(chunk):
                    idx[chunk] = self.tree.query(E[chunk], k=1, distance_upper_bound=float(bound[chunk].max()))[1]
            missing = idx >= len(self.z)
            if missing.any():  # nothing within the bound (only if the bound was not attained): search fully
                idx[missing] = self.tree.query(E[missing], k=1)[1]
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return fs_distance(q.to(torch.complex128), self.z[idx.to(self.z.device)].to(q.device), self.X), idx.to(q.device)

    def self_query(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance [N], index [N]) from each indexed point to its nearest OTHER indexed point."""
        if self.product:
            k = min(self.K + 1, len(self.z))
            ed, idx = self.tree.query(self.tree.data, k=k)
            ed, idx = ed.reshape(len(idx), k), idx.reshape(len(idx), k)
            d, best = self._refine(self.z.cpu(), self.tree.data, idx, ed, np.full(len(idx), np.inf), True)
            return d.to(self.z.device), best
        _, idx = self.tree.query(self.tree.data, k=2)
        n = np.arange(len(idx))
        other = torch.as_tensor(np.where(idx[:, 0] == n, idx[:, 1], idx[:, 0]))
        return fs_distance(self.z, self.z[other], self.X), other

    # ------------------------------------------------------------------ products
    def _query_product(self, q: torch.Tensor, upper: torch.Tensor | None):
        qc = q.detach().to("cpu", torch.complex128)
        E = _tree_coords(qc, factors(self.X, qc))
        k, n = min(self.K, len(self.z)), len(self.z)
        if upper is None:
            ed, idx = self.tree.query(E, k=k)
            limit = np.full(len(E), np.inf)
        else:  # every point at distance <= upper has |dE| <= sqrt(2) upper: a bounded (faster) tree search
            limit = upper.detach().cpu().double().numpy()
            bound = math.sqrt(2.0) * limit * (1 + 1e-9) + 1e-12
            ed, idx = np.full((len(E), k), np.inf), np.full((len(E), k), n, dtype=np.int64)
            order = np.argsort(bound)
            for chunk in np.array_split(order, max(1, min(32, len(order) // 256))):
                if len(chunk):
                    a, b = self.tree.query(E[chunk], k=k, distance_upper_bound=float(bound[chunk].max()))
                    ed[chunk], idx[chunk] = a.reshape(len(chunk), k), b.reshape(len(chunk), k)
            lost = idx[:, 0] >= n
            if lost.any():  # nothing within the bound (upper not attained): search without it
                a, b = self.tree.query(E[lost], k=k)
                ed[lost], idx[lost], limit[lost] = a.reshape(-1, k), b.reshape(-1, k), np.inf
        d, best = self._refine(qc, E, idx.reshape(len(E), k), ed.reshape(len(E), k), limit, False)
        return d.to(q.device), best.to(q.device)

    def _refine(self, q, E, idx, ed, limit, self_pairs: bool):
        """Exact nearest from tree candidates idx / embedded distances ed [Q, K] (missing: index N, inf), completed
        by ball queries where needed; limit [Q]: a distance the answer is known not to exceed (inf: none)."""
        n, rows = len(self.z), np.arange(len(idx))
        valid = idx < n
        if self_pairs:
            valid &= idx != rows[:, None]
        safe = np.where(valid, idx, 0)
        zc = self.z.cpu()
        S = torch.as_tensor(safe)
        D = torch.cat([fs_distance(q[a : a + 4096, None, :], zc[S[a : a + 4096]], self.X) for a in range(0, len(q), 4096)])
        D = D.numpy()
        D[~valid] = np.inf
        j = D.argmin(1)
        best, dbest = safe[rows, j], D[rows, j]
        radius = math.sqrt(2.0) * np.minimum(dbest, limit) * (1 + 1e-9) + 1e-12
        # complete: every indexed point is a candidate, or the K-th candidate lies beyond the radius
        open_ = ~((idx.shape[1] >= n) | (ed[:, -1] > radius))
        if open_.any():
            r = rows[open_]
            balls = self.tree.query_ball_point(E[r], radius[r], return_sorted=False)
            sizes = np.fromiter((len(b) for b in balls), np.int64, len(balls))
            owner = np.repeat(r, sizes)
            cand = np.fromiter((i for b in balls for i in b), np.int64, int(sizes.sum()))
            if self_pairs:
                keep = cand != owner
                owner, cand = owner[keep], cand[keep]
        if open_.any() and len(owner):
            dc = fs_distance(q[torch.as_tensor(owner)], zc[torch.as_tensor(cand)], self.X).numpy()
            order = np.lexsort((dc, owner))  # by row, then distance: the first of each row is its nearest
            owner, cand, dc = owner[order], cand[order], dc[order]
            first = np.r_[True, owner[1:] != owner[:-1]]
            better = dc[first] < dbest[owner[first]]
            best[owner[first][better]], dbest[owner[first][better]] = cand[first][better], dc[first][better]
        best = torch.as_tensor(best, dtype=torch.int64)
        return fs_distance(q, zc[best], self.X), best


def nearest_neighbours(z: torch.Tensor, w: torch.Tensor | None = None, X=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest point of w (or of z itself, excluding i) for each z_i: -> (distance [N], index [N])."""
    if w is None:
        return NearestIndex(z, X).self_query()
    return NearestIndex(w, X).query(z)


def nearest_neighbour_stats(z: torch.Tensor, w: torch.Tensor | None = None, X=None) -> dict:
    """min / mean / max of the nearest-neighbour distance (Fig. 3 right)."""
    d, _ = nearest_neighbours(z, w, X)
    return {"min": float(d.min()), "mean": float(d.mean()), "max": float(d.max())}
