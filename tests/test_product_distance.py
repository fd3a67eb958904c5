"""The distance on products of projective spaces, sqrt(sum_i t_i d_i^2) (mflow.geometry.distance), and what uses it:
NearestIndex, the FS-distance kernels, clustering. For one P^n with t = 1 everything must stay bit-identical."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mflow.data.clustering import batched_clustering, cluster_batch
from mflow.geometry.distance import (NearestIndex, embed, fs_distance, fs_distance_block, fs_distance_matrix,
                                     nearest_neighbour_stats, nearest_neighbours)
from mflow.geometry.points import sample
from mflow.geometry.presets import manifold
from mflow.kernels.analytic import DeltaKernel, GaussianFS
from mflow.kernels.registry import kernel

BICUBIC_T = (1.0, 3.0)
TETRA_T = (0.5, 1.0, 2.0, 4.0)


def rand_z(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64))


def reference(z, w, X):
    """Independent: per-factor eq. 3.2, arccos(|<z, w>| / (|z| |w|)), in numpy, combined as sqrt(sum t_i d_i^2)."""
    z, w = z.numpy(), w.numpy()
    total = 0.0
    for sl, t in zip(X.factor_slices, X.kahler):
        a, b = z[..., sl], w[..., sl]
        c = np.abs((a.conj() * b).sum(-1)) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        total = total + t * np.arccos(np.clip(c, 0.0, 1.0)) ** 2
    return torch.as_tensor(np.sqrt(total))


def at_distances(z, X, eps, seed):
    """Points w with FS distance exactly eps_i from z in factor i: w_i = cos(eps_i) u_i + sin(eps_i) v_i, v_i _|_ u_i."""
    v = rand_z(len(z), z.shape[1], seed)
    w = torch.empty_like(z)
    for i, sl in enumerate(X.factor_slices):
        u = z[:, sl] / torch.linalg.vector_norm(z[:, sl], dim=-1, keepdim=True)
        p = v[:, sl] - (u.conj() * v[:, sl]).sum(-1, keepdim=True) * u
        p = p / torch.linalg.vector_norm(p, dim=-1, keepdim=True)
        w[:, sl] = math.cos(eps[i]) * u + math.sin(eps[i]) * p
    return w


@pytest.fixture(scope="module")
def bicubic():
    return manifold("bicubic").with_kahler(BICUBIC_T)


@pytest.fixture(scope="module")
def tetra():
    return manifold("tetraquadric").with_kahler(TETRA_T)


@pytest.fixture(scope="module")
def quintic():
    return manifold("fermat_quintic")


# ----------------------------------------------------------------------------- the distance
@pytest.mark.parametrize("name", ["bicubic", "tetra"])
def test_product_distance_matches_the_per_factor_formula(name, request):
    X = request.getfixturevalue(name)
    z, w = sample(X, 300, 0).z, sample(X, 200, 1).z
    ref = reference(z[:, None, :], w[None, :, :], X)  # far pairs: arccos is accurate to ~1e-12 there
    assert torch.allclose(fs_distance_matrix(z, w, block=64, X=X), ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(fs_distance_block(z, w, X), ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(fs_distance(z[:200], w, X), ref.diagonal(), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(fs_distance(z[:200], w, X), fs_distance(z[:200], w), rtol=1e-3)  # not P^{D-1}'s


@pytest.mark.parametrize("name", ["bicubic", "tetra"])
def test_product_distance_is_exact_near_zero(name, request):
    X = request.getfixturevalue(name)
    z = sample(X, 50, 2).z
    m = len(X.dims)
    for scale in (1e-7, 1e-4, 0.3):  # w's coordinates hold the offset to ~1e-16 absolute: rtol 1e-16 / scale
        eps = [scale * (1 + k) / m for k in range(m)]
        w = at_distances(z, X, eps, 3)
        want = math.sqrt(sum(t * e**2 for t, e in zip(X.kahler, eps)))
        for d in (fs_distance(z, w, X), fs_distance_block(z, w, X).diagonal(), fs_distance_matrix(z, w, X=X).diagonal()):
            assert torch.allclose(d, torch.full_like(d, want), rtol=1e-7, atol=0)  # arccos: ~10% off at 1e-7


@pytest.mark.parametrize("name", ["bicubic", "tetra"])
def test_metric_axioms_and_rescaling(name, request):
    X = request.getfixturevalue(name)
    z, w, y = (sample(X, 400, s).z for s in (4, 5, 6))
    w[:100] = at_distances(z[:100], X, [1e-6] * len(X.dims), 7)  # near pairs too
    assert torch.all(fs_distance(z, z, X) == 0)
    assert torch.all(fs_distance_block(z, z, X).diagonal() == 0)
    assert torch.all(fs_distance_matrix(z, X=X).diagonal() == 0)
    assert torch.allclose(fs_distance(z, w, X), fs_distance(w, z, X), rtol=1e-12, atol=1e-15)
    M = fs_distance_matrix(z, X=X)
    assert torch.allclose(M, M.T, rtol=1e-12, atol=1e-15)
    dzw, dwy, dzy = fs_distance(z, w, X), fs_distance(w, y, X), fs_distance(z, y, X)
    assert torch.all(dzy <= dzw + dwy + 1e-12) and torch.all(dzw <= dzy + dwy + 1e-12)
    assert torch.all(M[:, None, :50] <= M[:, :50, None] + M[None, :50, :50] + 1e-12)  # all triples of 50 points
    lam = rand_z(len(z), len(X.dims), 8)  # one complex factor per P^n_i
    zs = z * lam[:, X.factor_of]
    assert torch.allclose(fs_distance(zs, w, X), fs_distance(z, w, X), rtol=1e-10, atol=1e-14)
    assert torch.allclose(fs_distance_matrix(zs, w, X=X), fs_distance_matrix(z, w, X=X), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError):
        fs_distance(z[:, :-1], w[:, :-1], X)  # coordinates of another space


def test_one_factor_with_t_scales_by_sqrt_t(quintic):
    Xt = quintic.with_kahler((2.5,))
    z, w = sample(quintic, 300, 9).z, sample(quintic, 200, 10).z
    s = math.sqrt(2.5)
    assert torch.allclose(fs_distance(z[:200], w, Xt), s * fs_distance(z[:200], w), rtol=1e-15, atol=0)
    assert torch.allclose(fs_distance_matrix(z, w, X=Xt), s * fs_distance_matrix(z, w), rtol=1e-15, atol=0)
    d0, i0 = NearestIndex(w).query(z)
    d, i = NearestIndex(w, Xt).query(z, upper=s * fs_distance(z, w[:1].expand(len(z), -1)))
    assert torch.equal(i, i0) and torch.allclose(d, s * d0, rtol=1e-15, atol=0)
    ds, js = nearest_neighbours(w, X=Xt)
    assert torch.equal(js, nearest_neighbours(w)[1]) and torch.allclose(ds, s * nearest_neighbours(w)[0], rtol=1e-15)


# ----------------------------------------------------------------------------- nearest neighbours
@pytest.mark.parametrize("name", ["bicubic", "tetra"])
@pytest.mark.parametrize("K", [None, 1])  # K = 1: most rows go through the ball query
def test_nearest_index_is_exact(name, K, request):
    X = request.getfixturevalue(name)
    z, q = sample(X, 2000, 11).z, sample(X, 400, 12).z
    z[1999] = z[5] * 2j  # a duplicate (another representative of the same point)
    q[:200] = at_distances(z[100:300], X, [0.02] * len(X.dims), 13)  # queries near indexed points
    index = NearestIndex(z, X)
    if K is not None:
        index.K = K
    full = fs_distance_matrix(q, z, X=X)
    want_d, want_i = full.min(1)
    for upper in (None, fs_distance(q, z[100:500], X), full[torch.arange(len(q)), want_i] + 1e-13):
        d, i = index.query(q, upper=upper)
        assert torch.equal(i, want_i)
        assert torch.allclose(d, want_d, rtol=1e-12, atol=1e-15)
    self_full = fs_distance_matrix(z, X=X).fill_diagonal_(math.inf)
    ds, js = index.self_query()
    assert torch.allclose(ds, self_full.min(1).values, rtol=1e-12, atol=1e-15)
    assert ds[5] == 0 and ds[1999] == 0 and js[5] == 1999 and js[1999] == 5
    assert torch.allclose(self_full[torch.arange(len(z)), js], ds, rtol=1e-12, atol=1e-15)
    want_j = self_full.argmin(1)
    untied = (want_j != 5) & (want_j != 1999)  # points next to the duplicate may take either copy
    assert torch.equal(js[untied], want_j[untied])
    stats = nearest_neighbour_stats(q, z, X)
    assert stats["max"] == pytest.approx(float(want_d.max()), rel=1e-12)


# ----------------------------------------------------------------------------- kernels
def test_gaussian_kernel_on_a_product(bicubic):
    pts, other = sample(bicubic, 300, 14), sample(bicubic, 200, 15)
    D = reference(pts.z[:, None, :], other.z[None, :, :], bicubic)
    k = GaussianFS(0.5, space=bicubic)
    assert torch.allclose(k.matrix(pts, other, block=128), torch.exp(-D / (2 * 0.5)), rtol=1e-10, atol=1e-14)
    ks = GaussianFS(0.7, squared=True, space=bicubic)
    assert torch.allclose(ks.matrix(pts, other), torch.exp(-(D**2) / (2 * 0.7**2)), rtol=1e-10, atol=1e-14)
    ki = GaussianFS(3.0, inverse=True, space=bicubic)
    assert torch.allclose(ki.block(pts.features, other), torch.exp(-3.0 * D / 2), rtol=1e-10, atol=1e-14)
    assert k != GaussianFS(0.5) and k == GaussianFS(0.5, space=bicubic.with_kahler(BICUBIC_T))
    assert k != GaussianFS(0.5, space=bicubic.with_kahler((1.0, 1.0)))
    assert kernel("gaussian", bicubic, sigma=0.5) == k
    assert kernel("scaled", bicubic, kernel="gaussian", kernel_params={"sigma": 0.5}, h="weight").kernel == k
    with pytest.raises(ValueError):
        k.matrix(pts.z[:, :5])  # wrong number of coordinates
    with pytest.raises(ValueError):
        k.matrix(torch.cat([pts.z[:3, :3], torch.zeros(3, 3, dtype=torch.complex128)], 1))  # a factor is 0


@pytest.mark.parametrize("name", ["bicubic", "tetra"])
@pytest.mark.parametrize("squared", [False, True])
def test_gaussian_apply_float64_and_float32(name, squared, request):
    X = request.getfixturevalue(name)
    pts, other = sample(X, 700, 16), sample(X, 500, 17).z
    other[:300] = at_distances(pts.z[:300], X, [0.003 * (i + 1) for i in range(len(X.dims))], 18)  # near pairs
    other[300] = pts.z[301]  # identical points
    k = GaussianFS(0.2, squared=squared, space=X)
    v = torch.randn(len(other), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    K = k.matrix(pts, other)
    assert torch.allclose(K, k._of_distance(reference(pts.z[:, None], other[None], X)), rtol=1e-6)  # arccos ref: ~1e-8
    exact = K @ v
    f64 = k.apply(pts, other, v, block=256)
    assert torch.allclose(f64, exact, rtol=1e-12, atol=1e-12)
    f32 = k.apply(pts, other, v, block=256, dtype=torch.float32)
    assert 0 < (f32 - exact).abs().max() / exact.abs().max() < 1e-6  # > 0: it is the float32 path
    if not squared:  # per row too (without the exact recomputation of near pairs: ~1e-4)
        assert ((f32 - exact).abs() / (K.abs() @ v.abs())).max() < 2e-6


def test_delta_kernel_on_a_product(tetra):
    train, test = sample(tetra, 1000, 19).z, sample(tetra, 300, 20).z
    v = torch.randn(len(train), 2, dtype=torch.float64)
    nearest = fs_distance_matrix(test, train, X=tetra).argmin(1)
    for k in (DeltaKernel(tetra), kernel("delta", tetra)):
        assert torch.equal(k.apply(test, train, v), v[nearest])
        assert torch.equal(k.matrix(test, train).argmax(1), nearest)
    assert not torch.equal(DeltaKernel().apply(test, train, v), v[nearest])  # P^7's nearest points differ
    assert "kahler=(0.5, 1.0, 2.0, 4.0)" in repr(DeltaKernel(tetra)) and repr(DeltaKernel()) == "DeltaKernel()"


# ----------------------------------------------------------------------------- clustering
def test_clustering_follows_the_product_distance(bicubic):
    """Two blobs in each factor (4 groups); with t = (100, 0.01) two clusters split by factor 1, with (0.01, 100) by
    factor 2 (points of P^2 x P^2, not on X: the distance does not care)."""
    g = torch.Generator().manual_seed(21)
    centres = rand_z(2, 3, 22)
    a, b = torch.randint(0, 2, (200,), generator=g), torch.randint(0, 2, (200,), generator=g)
    z = torch.cat([centres[a], centres[b]], 1) + 0.05 * rand_z(200, 6, 23)
    for t, truth in (((100.0, 0.01), a), ((0.01, 100.0), b)):
        X = bicubic.with_kahler(t)
        for labels in (cluster_batch(z, 2, X), batched_clustering(z, 2, 70, seed=1, X=X)):
            assert torch.equal(labels, truth) or torch.equal(labels, 1 - truth)


# ----------------------------------------------------------------------------- the quintic: bit-identical
def test_quintic_is_bit_identical_to_no_manifold(quintic):
    z, w = sample(quintic, 500, 24).z, sample(quintic, 300, 25).z
    w[:50] = z[:50] * (1 + 1e-9j)
    assert torch.equal(fs_distance(z[:300], w, quintic), fs_distance(z[:300], w))
    assert torch.equal(fs_distance_block(z, w, quintic), fs_distance_block(z, w))
    assert torch.equal(fs_distance_matrix(z, w, 128, X=quintic), fs_distance_matrix(z, w, 128))
    assert torch.equal(embed(z, quintic), embed(z))
    upper = fs_distance(w, z[:300])
    for args in ((w,), (w, upper)):
        a, b = NearestIndex(z, quintic).query(*args), NearestIndex(z).query(*args)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    a, b = NearestIndex(z, quintic).self_query(), NearestIndex(z).self_query()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    v = torch.randn(len(w), 2, dtype=torch.float64)
    for sq in (False, True):
        k, k0 = GaussianFS(0.3, squared=sq, space=quintic), GaussianFS(0.3, squared=sq)
        assert k == k0 and kernel("gaussian", quintic, sigma=0.3, squared=sq) == k0
        assert torch.equal(k.matrix(z, w, block=200), k0.matrix(z, w, block=200))
        for dt in (torch.float64, torch.float32):
            assert torch.equal(k.apply(z, w, v, block=200, dtype=dt), k0.apply(z, w, v, block=200, dtype=dt))
    assert torch.equal(DeltaKernel(quintic).apply(w, z, z.real), DeltaKernel().apply(w, z, z.real))
    assert torch.equal(cluster_batch(z, 5, quintic), cluster_batch(z, 5))
    assert torch.equal(batched_clustering(z, 5, 200, seed=3, X=quintic), batched_clustering(z, 5, 200, seed=3))
