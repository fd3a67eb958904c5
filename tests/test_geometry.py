"""Geometry checked against independent computations (closed forms, finite differences, MC)."""
import math

import pytest
import torch

from mflow.geometry import charts, curvature, distance, volume
from mflow.geometry.cicy import CompleteIntersection, NotCalabiYauError
from mflow.geometry.montecarlo import weighted_mean_error
from mflow.geometry.presets import dwork, fermat, manifold, random_cy
from mflow.geometry.points import cy_points, points_in_chart, sample

SURFACES = {
    "quintic": lambda: manifold("fermat_quintic"),
    "quartic": lambda: manifold("fermat_quartic"),
    "cubic": lambda: manifold("fermat_cubic"),
    "dwork": lambda: dwork(0.3 + 0.1j),
    "random": lambda: random_cy(4, seed=3),
    "bicubic": lambda: manifold("bicubic", kahler=(1.0, 1.7)),
    "p1p3": lambda: manifold("p1p3", kahler=(0.8, 1.3)),
    "tetraquadric": lambda: manifold("tetraquadric", kahler=(1.0, 1.2, 0.7, 2.0)),
    "two_cubics": lambda: manifold("two_cubics", psi=0.5 + 0.2j, kahler=(1.4,)),
}


# ---------------------------------------------------------------- polynomial
def test_refuses_non_cy_polynomials():
    with pytest.raises(NotCalabiYauError, match="not homogeneous"):
        CompleteIntersection(torch.tensor([[5, 0, 0, 0, 0], [1, 1, 0, 0, 0]]), torch.ones(2))
    with pytest.raises(NotCalabiYauError, match="not Calabi-Yau"):
        CompleteIntersection(4 * torch.eye(5, dtype=torch.int64), torch.ones(5))
    with pytest.raises(NotCalabiYauError, match="singular"):
        dwork(1.0)
    with pytest.raises(ValueError, match="unknown manifold"):
        manifold("quintic3000")


def test_singular_point_is_refused():
    # z0^4 z1 + z1^4 z2 ... is fine, but z0^5 alone is singular everywhere on X
    cone = CompleteIntersection(torch.tensor([[5, 0, 0, 0, 0]]), torch.ones(1))
    z = torch.tensor([[0, 1, 0.5, 0.3, 0.2]], dtype=torch.complex128)
    with pytest.raises(NotCalabiYauError, match="singular"):
        cy_points(cone, z)


@pytest.mark.parametrize("name", SURFACES)
def test_gradient_matches_complex_finite_differences(name):
    X = SURFACES[name]()
    z = torch.randn(7, X.n_coords, dtype=torch.complex128)
    h = 1e-6
    eye = torch.eye(X.n_coords, dtype=torch.complex128)
    fd = torch.stack([(X(z + h * eye[i]) - X(z - h * eye[i])) / (2 * h) for i in range(X.n_coords)], -1)
    assert torch.allclose(X.gradient(z), fd, rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", SURFACES)
def test_sampled_points_lie_on_x(name):
    X = SURFACES[name]()
    P = sample(X, 2000, seed=1)
    assert len(P) == 2000
    assert float(X.residual(P.z).max()) < 1e-10
    assert torch.all(P.z.gather(-1, charts.patch_coordinates(X, P.patch)) == 1)
    assert torch.all(P.z.abs() <= 1 + 1e-15)


def test_fs_sigma_and_kappa_of_the_quintic(quintic):
    """Published FS figures (docs/conventions.md section 5): sigma ~0.372-0.375, kappa ~0.01764 (cymetric
    normalisation)."""
    P = sample(quintic, 100_000, seed=0)
    det = volume.real_det(P.g_fs)
    k = volume.kappa(P.weights, det, P.omega_sq)
    assert abs(float(k) / 0.01764 - 1) < 0.01
    assert abs(float(volume.sigma(P.weights, det, P.omega_sq)) - 0.372) < 0.006


def test_mc_volume_of_another_metric_in_the_class_is_the_intersection_number(quintic):
    """int_X J'^3 is topological: for J' = d dbar (1/pi)(log |z|^2 + sum |z_i|^4 / 2|z|^4) (the FS class plus
    d dbar of a function on P^4: another metric in the same class), the MC volume mean(w det g' / |Omega|^2) on
    fresh points is the intersection number 5 within its MC error. That holds only if the weights are the CY/FS
    density ratio and the points FS-distributed; it is not true by construction (the weights are normalised
    with g_FS, and det g' / det g_FS ranges over 0.14-1.7 on these points)."""
    P = sample(quintic, 40_000, seed=12)

    def potential(z):
        r2 = (z.abs() ** 2).sum(-1)
        return (torch.log(r2) + 0.5 * (z.abs() ** 4).sum(-1) / r2**2) / math.pi

    g2 = curvature.tangent_ddbar(potential, P.z, P.pullback)
    ratio = volume.real_det(g2) / volume.real_det(P.g_fs)
    assert float(ratio.max() / ratio.min()) > 5  # a genuinely different metric
    v = P.weights * volume.real_det(g2) / P.omega_sq
    err = weighted_mean_error(v, system=P.system)[1]  # points of a sampling system counted together
    assert abs(float(v.mean()) - 5.0) < 4 * err and err < 0.01


def test_sigma_vanishes_when_eta_is_one():
    w = torch.rand(50, dtype=torch.float64)
    om = torch.rand(50, dtype=torch.float64) + 0.5
    assert float(volume.sigma(w, 3.0 * om, om)) < 1e-15


# ---------------------------------------------------------------- charts, pullback, FS metric
@pytest.mark.parametrize("n1", [3, 4, 5, 7])
def test_local_indices_are_the_sorted_remaining_coordinates_and_vmap(n1):
    X = fermat(n1 - 1)
    pairs = torch.tensor([(p, e) for p in range(n1) for e in range(n1) if p != e])
    loc = charts.local_indices(X, pairs[:, 0], pairs[:, 1])
    want = torch.tensor([[j for j in range(n1) if j not in (p, e)] for p, e in pairs.tolist()])
    assert torch.equal(loc, want)
    dp = torch.randn(len(pairs), 1, n1, dtype=torch.complex128)
    one = lambda d, p, e: charts.pullback(X, d[None], p[None], e[None])[0]  # noqa: E731
    assert torch.equal(torch.func.vmap(one)(dp, pairs[:, 0], pairs[:, 1]), charts.pullback(X, dp, pairs[:, 0], pairs[:, 1]))


def test_chart_codes_of_a_product():
    """patch / elim codes decode to one patch coordinate per factor and K increasing eliminated ones, and the
    local coordinates are the rest, in order (two cubics: K = 2; tetraquadric: four factors)."""
    for X in (SURFACES["two_cubics"](), SURFACES["tetraquadric"](), SURFACES["bicubic"]()):
        P = sample(X, 300, seed=4)
        pc, ec, loc = (charts.patch_coordinates(X, P.patch), charts.elim_coordinates(X, P.elim),
                       charts.local_indices(X, P.patch, P.elim))
        assert pc.shape == (len(P), len(X.dims)) and ec.shape == (len(P), X.K) and loc.shape == (len(P), X.dim)
        assert torch.equal(X.factor_of[pc], torch.arange(len(X.dims)).expand(len(P), -1))  # one patch per factor
        assert torch.all(ec[:, 1:] > ec[:, :-1]) if X.K > 1 else True
        every = torch.sort(torch.cat([pc, ec, loc], -1), -1).values
        assert torch.equal(every, torch.arange(X.n_coords).expand(len(P), -1))  # a partition of the coordinates
        assert torch.all(loc[:, 1:] > loc[:, :-1])
        ids = charts.chart_id(X, P.patch, P.elim)
        assert torch.equal(torch.stack(charts.chart_of_id(X, ids)), torch.stack([P.patch, P.elim]))
        # the patch coordinate is each factor's largest, the eliminated minor the largest allowed one
        for s in X.factor_slices:
            assert torch.all(P.z[:, s].abs().amax(-1) <= 1 + 1e-15)


def _local_chart_map(X, z0, patch, elim):
    """x (complex local coordinates, [B, d]) -> z on X, the K eliminated coordinates by Newton."""
    loc = charts.local_indices(X, patch[None], elim[None])[0]
    E = charts.elim_coordinates(X, elim[None])[0]

    def z_of(x):
        z = z0.expand(len(x), -1).clone()
        z[:, loc] = z0[loc] + x
        for _ in range(30):
            z[:, E] = z[:, E] - torch.linalg.solve(X.gradient(z)[:, :, E], X(z)[..., None])[..., 0]
        return z

    return z_of


def _fd_ddbar(F, m, h=1e-4):
    """d_a dbar_b F at x = 0 by central differences over the 2m real coordinates."""
    D = 2 * m
    E = torch.eye(D, dtype=torch.float64) * h
    shifts = []
    for i in range(D):
        for j in range(D):
            shifts += [E[i] + E[j], E[i] - E[j], -E[i] + E[j], -E[i] - E[j]]
    x = torch.stack(shifts)
    vals = F(torch.complex(x[:, :m], x[:, m:])).reshape(D, D, 4)
    H = (vals[..., 0] - vals[..., 1] - vals[..., 2] + vals[..., 3]) / (4 * h * h)
    return curvature.ddbar_from_real_hessian(H[None])[0]


def test_pullback_is_tangent(quintic):
    P = sample(quintic, 500, seed=2)
    assert float((P.pullback @ quintic.gradient(P.z).transpose(1, 2)).abs().max()) < 1e-12
    for X in (SURFACES["two_cubics"](), SURFACES["bicubic"]()):  # J dp^T = 0 for every equation
        P = sample(X, 500, seed=2)
        assert float((P.pullback @ X.gradient(P.z).transpose(1, 2)).abs().max()) < 1e-11


def test_ambient_fs_metric_is_ddbar_of_kaehler_potential():
    z = torch.randn(20, 5, dtype=torch.complex128)
    K = lambda x: torch.log((torch.complex(x[:, :5], x[:, 5:]).abs() ** 2).sum(-1)) / math.pi
    H = curvature.per_point_hessian(K, torch.cat([z.real, z.imag], -1))
    assert torch.allclose(curvature.ddbar_from_real_hessian(H), charts.fs_metric(fermat(4), z), atol=1e-13)
    # in P2 x P2 with moduli t: sum_i (t_i / pi) log |z_i|^2
    X = manifold("bicubic", kahler=(0.7, 2.5))
    z = torch.randn(20, 6, dtype=torch.complex128)
    K = lambda x: sum(t * torch.log((torch.complex(x[:, :6], x[:, 6:])[:, s].abs() ** 2).sum(-1))  # noqa: E731
                      for t, s in zip(X.kahler, X.factor_slices)) / math.pi
    H = curvature.per_point_hessian(K, torch.cat([z.real, z.imag], -1))
    assert torch.allclose(curvature.ddbar_from_real_hessian(H), charts.fs_metric(X, z), atol=1e-13)


@pytest.mark.parametrize("name", ["quintic", "quartic", "random", "bicubic", "two_cubics", "tetraquadric"])
def test_pulled_back_fs_metric_matches_finite_differences_along_x(name):
    X = SURFACES[name]()
    P = sample(X, 4, seed=5)
    for i in range(len(P)):
        z_of = _local_chart_map(X, P.z[i], P.patch[i], P.elim[i])
        K = lambda x: sum(t * torch.log((z_of(x)[:, s].abs() ** 2).sum(-1))  # noqa: E731
                          for t, s in zip(X.kahler, X.factor_slices)) / math.pi
        g_fd = _fd_ddbar(K, X.dim)
        assert torch.allclose(P.g_fs[i], g_fd, rtol=1e-5, atol=1e-7)


def _other_chart(X, z):
    """For each point, the valid chart (patch, elim) that is second best by |z_patch| in every factor."""
    patch = charts.choose_patch(X, z, rank=1)
    z = charts.to_patch(X, z, patch)
    dp = X.gradient(z)
    return z, dp, patch, charts.choose_elim(X, dp, patch)


@pytest.mark.parametrize("name", ["quintic", "bicubic", "two_cubics", "tetraquadric"])
def test_weights_eta_and_metric_transform_between_charts(name):
    X = SURFACES[name]()
    P = sample(X, 300, seed=7)
    z2, dp2, patch2, elim2 = _other_chart(X, P.z)
    assert bool((patch2 != P.patch).all())
    Q = points_in_chart(X, z2, dp2, patch2, elim2)  # weights, |Omega|^2, g_FS computed in the other chart
    assert torch.allclose(Q.weights, P.weights, rtol=1e-8)
    det1, det2 = volume.real_det(P.g_fs), volume.real_det(Q.g_fs)
    assert torch.allclose(volume.eta(det2, Q.omega_sq, 1.0), volume.eta(det1, P.omega_sq, 1.0), rtol=1e-8)
    # a (1,1)-tensor moves with T = dx^old/dx^new
    T = charts.chart_jacobian(X, z2, Q.pullback, P.patch, P.elim)
    assert torch.allclose(T @ P.g_fs @ T.conj().transpose(-1, -2), Q.g_fs, rtol=1e-8, atol=1e-11)


# ---------------------------------------------------------------- curvature
@pytest.mark.parametrize("name", ["quintic", "quartic", "bicubic", "two_cubics"])
def test_fs_ricci_form_matches_finite_differences(name):
    X = SURFACES[name]()
    P = sample(X, 3, seed=11)
    ric = curvature.ricci_form(curvature.fs_metric_fn(X), P.z, P.patch, P.elim, P.pullback)
    assert torch.allclose(ric, ric.conj().transpose(-1, -2), atol=1e-12)
    for i in range(len(P)):
        z_of = _local_chart_map(X, P.z[i], P.patch[i], P.elim[i])

        def logdet(x):
            z = z_of(x)
            n = len(z)
            J = charts.pullback(X, X.gradient(z), P.patch[i].expand(n), P.elim[i].expand(n))
            return volume.log_det(charts.pull_back(J, charts.fs_metric(X, z)))

        assert torch.allclose(ric[i], -_fd_ddbar(logdet, X.dim), rtol=1e-4, atol=1e-5)


def test_flat_metric_on_the_cubic_curve_is_ricci_flat():
    """On a torus |Omega|^2 dz dzbar is the exact flat CY metric: its Ricci form vanishes."""
    X = manifold("fermat_cubic")
    P = sample(X, 500, seed=0)
    flat = lambda z, patch, elim: charts.omega_sq(X, X.gradient(z), elim).to(torch.complex128)[:, None, None]
    ric = curvature.ricci_form(flat, P.z, P.patch, P.elim, P.pullback)
    scale = curvature.ricci_form(curvature.fs_metric_fn(X), P.z, P.patch, P.elim, P.pullback).abs().max()
    assert float(ric.abs().max()) < 1e-10 * float(scale)


def test_ricci_scalar_of_a_round_sphere():
    """P^1 with g = (1/pi) / (1 + |w|^2)^2 (potential (1/pi) log|z|^2) is Einstein: Ric = 2 pi g, R = 2 pi."""
    z = torch.randn(30, 2, dtype=torch.complex128)
    w = torch.zeros(30, 2, dtype=torch.float64)
    base = z[:, 1] / z[:, 0]

    def logg(x):
        ww = base + torch.complex(x[:, 0], x[:, 1])
        return torch.log(1 / (math.pi * (1 + ww.abs() ** 2) ** 2))

    ric = -curvature.ddbar_from_real_hessian(curvature.per_point_hessian(logg, w))[:, 0, 0]
    g = 1 / (math.pi * (1 + base.abs() ** 2) ** 2)
    assert torch.allclose(ric.real, 2 * math.pi * g, rtol=1e-10)
    assert torch.allclose(curvature.ricci_scalar(g[:, None, None].to(torch.complex128), ric[:, None, None]),
                          torch.full((30,), 2 * math.pi, dtype=torch.float64))


# ---------------------------------------------------------------- FS distance
def test_fs_distance_properties():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 5, dtype=torch.complex128, generator=g)
    w = torch.randn(200, 5, dtype=torch.complex128, generator=g)
    v = torch.randn(200, 5, dtype=torch.complex128, generator=g)
    assert torch.all(distance.fs_distance(z, z) == 0)
    lam = torch.complex(torch.randn(200, 1, dtype=torch.float64), torch.randn(200, 1, dtype=torch.float64))
    assert torch.allclose(distance.fs_distance(z, w), distance.fs_distance(w, z), atol=1e-15)
    assert torch.allclose(distance.fs_distance(lam * z, w), distance.fs_distance(z, w), atol=1e-14)
    d = distance.fs_distance
    assert torch.all(d(z, v) <= d(z, w) + d(w, v) + 1e-14)
    cos = ((z.conj() * w).sum(-1).abs() / (z.norm(dim=-1) * w.norm(dim=-1)))
    assert torch.allclose(d(z, w), torch.arccos(cos), atol=1e-12)
    assert float(d(z, w).max()) <= math.pi / 2


def test_fs_distance_is_exact_near_zero():
    u = torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.complex128)
    v = torch.tensor([[0, 1j, 0, 0, 0]], dtype=torch.complex128)
    for t in [1e-3, 1e-7, 1e-11]:
        w = math.cos(t) * u + math.sin(t) * v
        assert abs(float(distance.fs_distance(u * (2 - 1j), w)) / t - 1) < 1e-8


def test_blocked_distances_and_nearest_neighbours():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 5, dtype=torch.complex128, generator=g)
    full = distance.fs_distance(z[:, None], z[None])
    assert torch.allclose(distance.fs_distance_matrix(z, block=64), full)
    d, idx = distance.nearest_neighbours(z)  # k-d tree on the embedding u u^H, against all pairs
    ref = full + torch.diag(torch.full((300,), 10.0, dtype=torch.float64))
    assert torch.equal(idx, ref.argmin(-1))
    assert torch.allclose(d, ref.min(-1).values)
    w = z[:50] * 1.7j
    d2, idx2 = distance.nearest_neighbours(w, z)
    assert torch.equal(idx2, torch.arange(50)) and float(d2.max()) < 1e-7


def test_ricci_measure_in_blocks_is_the_measure_of_all_points_at_once():
    """ricci_measure_on computes the Ricci form `block` points at a time: the measure cannot depend on the block."""
    X = manifold("fermat_quintic")
    P = sample(X, 60, seed=3)
    fs = curvature.fs_metric_fn(X)
    whole, n = curvature.ricci_measure_on(fs, P, X.dim, block=1000)
    assert n == 60 and whole > 0
    assert curvature.ricci_measure_on(fs, P, X.dim, block=7)[0] == pytest.approx(whole, rel=1e-12)
