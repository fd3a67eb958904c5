"""Complete intersections in products of projective spaces, checked against things no one here computed:
published topological numbers (intersection numbers, Euler characteristics from the configuration), the
Monte-Carlo volume of J^d at several Kaehler moduli against the intersection numbers, and a volume of another
metric in the class."""
import math

import pytest
import torch

from mflow.geometry import curvature, volume
from mflow.geometry.cicy import CompleteIntersection, NotCalabiYauError
from mflow.geometry.montecarlo import weighted_mean_error
from mflow.geometry.points import cy_points, sample
from mflow.geometry.presets import EULER, manifold, two_cubics
from mflow.geometry.sampling import sample_points

PRESETS = {
    "bicubic": lambda **kw: manifold("bicubic", **kw),
    "p1p3": lambda **kw: manifold("p1p3", **kw),
    "tetraquadric": lambda **kw: manifold("tetraquadric", **kw),
    "two_cubics": lambda **kw: manifold("two_cubics", psi=0.5, **kw),
    "fermat_quintic": lambda **kw: manifold("fermat_quintic", **kw),
}


def test_refuses_what_is_not_a_calabi_yau_complete_intersection():
    X = manifold("bicubic")
    with pytest.raises(NotCalabiYauError, match="not Calabi-Yau"):  # a (3, 2) hypersurface in P2 x P2
        CompleteIntersection(torch.tensor([[3, 0, 0, 2, 0, 0], [0, 3, 0, 0, 2, 0]]), torch.ones(2), dims=(2, 2))
    k = torch.tensor([[3, 0, 0, 3, 0, 0], [2, 0, 0, 3, 0, 0]])
    with pytest.raises(NotCalabiYauError, match="not homogeneous in every factor"):
        CompleteIntersection(k, torch.ones(2), dims=(2, 2))
    with pytest.raises(NotCalabiYauError, match="coordinates"):
        CompleteIntersection(k, torch.ones(2), dims=(2, 3))
    with pytest.raises(NotCalabiYauError, match="Kaehler moduli"):
        X.with_kahler((1.0, -1.0))
    with pytest.raises(NotCalabiYauError, match="Kaehler moduli"):
        X.with_kahler((1.0,))
    with pytest.raises(NotCalabiYauError, match="singular"):
        two_cubics(0.0)


def test_singular_points_are_refused():
    """x0^3 y0^3 = 0 in P2 x P2 has the right degrees but dp vanishes wherever p does."""
    bad = CompleteIntersection(torch.tensor([[3, 0, 0, 3, 0, 0]]), torch.ones(1), dims=(2, 2))
    z = torch.tensor([[0, 1, 0.5, 0.2, 1, 0.3]], dtype=torch.complex128)
    with pytest.raises(NotCalabiYauError, match="singular"):
        cy_points(bad, z)


def test_intersection_numbers_and_euler_characteristics_are_the_published_ones():
    """int J_1^a1 ... J_m^am (Huebsch's bestiary; cymetric and pyCICY give the same) and chi from the configuration
    matrix, against the literature's values (quintic -200, bicubic -162, (2,4) in P1 x P3 -168, tetraquadric -128,
    two cubics in P5 -144)."""
    bic, p1p3, tq, tc = (PRESETS[n]() for n in ("bicubic", "p1p3", "tetraquadric", "two_cubics"))
    assert [bic.intersection_number(a) for a in [(3, 0), (2, 1), (1, 2), (0, 3)]] == [0, 3, 3, 0]
    assert [p1p3.intersection_number(a) for a in [(1, 2), (0, 3), (2, 1)]] == [4, 2, 0]
    assert tq.intersection_number((1, 1, 1, 0)) == 2 and tq.intersection_number((2, 1, 0, 0)) == 0
    assert tc.intersection_number((3,)) == 9 and manifold("fermat_quintic").intersection_number((3,)) == 5
    for name, chi in EULER.items():
        X = manifold(name, psi=0.5) if name == "two_cubics" else manifold(name)
        assert X.euler_number() == chi, name
    assert bic.volume((1.0, 2.0)) == 3 * 3 * 1 * 4 + 3 * 3 * 1 * 2  # 3 d_122 t1 t2^2 + 3 d_112 t1^2 t2
    with pytest.raises(ValueError, match="summing to dim"):
        bic.intersection_number((1, 1))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_mc_volume_of_j_is_the_intersection_polynomial_at_several_moduli(name):
    """mean(w det g_t / |Omega|^2) on fresh points = int_X J^d = sum d_ijk t_i t_j t_k for J = sum t_i J_i, within
    4 MC standard errors and 2%. The weights do not depend on t (the points' density is the sum over sampling
    schemes of prod_i J_i^{n_i - k_i}), so only the right density and mixed discriminants make this hold at every
    t; at t = (1, ..., 1) it holds by construction for some presets, so the moduli here are unequal."""
    X = PRESETS[name]()
    P = sample(X, 20_000, seed=3)
    m = len(X.dims)
    for t in [tuple(1.0 + 0.7 * i for i in range(m)), tuple(2.0 - 0.4 * i for i in range(m)),
              tuple(0.5 + (i % 2) for i in range(m))]:
        Y = X.with_kahler(t)
        v = P.weights * volume.real_det(cy_points(Y, P.z, drop_ties=False).g_fs) / P.omega_sq
        err = weighted_mean_error(v, system=P.system)[1]  # points of a sampling system counted together
        assert abs(float(v.mean()) - Y.volume()) < max(4 * err, 1e-9 * Y.volume()), (t, float(v.mean()), Y.volume())
        assert abs(float(v.mean()) / Y.volume() - 1) < 0.02


def test_mc_volume_of_another_metric_in_the_class():
    """J' = J + d dbar f (f = sum_i t_i |z_i|^4 / (2 pi |z_i|^4)-type function on P2 x P2) has the same volume: its
    det g' differs from det g_FS point by point (0.2x-3x here), the MC volume with the FS-based weights does not."""
    X = manifold("bicubic", kahler=(1.0, 1.8))
    P = sample(X, 30_000, seed=8)

    def potential(z):
        out = 0.0
        for t, s in zip(X.kahler, X.factor_slices):
            r2 = (z[:, s].abs() ** 2).sum(-1)
            out = out + t * (torch.log(r2) + 0.6 * (z[:, s].abs() ** 4).sum(-1) / r2**2)
        return out / math.pi

    g = curvature.tangent_ddbar(potential, P.z, P.pullback)
    ratio = volume.real_det(g) / volume.real_det(P.g_fs)
    assert float(ratio.min()) < 0.8 and float(ratio.max()) > 1.5
    v = P.weights * volume.real_det(g) / P.omega_sq
    err = weighted_mean_error(v, system=P.system)[1]
    assert abs(float(v.mean()) - X.volume()) < 4 * err and err < 0.01 * X.volume()


def test_every_system_gives_all_its_points():
    """Each random system of the two cubics in P5 (a plane in P5) meets X in 9 points, all distinct and on X; the
    bicubic's lines (one per factor) in 3."""
    gen = torch.Generator().manual_seed(0)
    X = PRESETS["two_cubics"]()
    z = sample_points(X, 9 * 200, gen).reshape(200, 9, -1)
    assert float(X.residual(z.reshape(-1, 6)).max()) < 1e-10
    u = z / z.norm(dim=-1, keepdim=True)
    overlap = (u[:, :, None, :].conj() * u[:, None, :, :]).sum(-1).abs()
    overlap = overlap - torch.eye(9)
    assert float(overlap.max()) < 1 - 1e-6  # no root found twice
    Y = PRESETS["bicubic"]()
    assert float(Y.residual(sample_points(Y, 6000, gen)).max()) < 1e-10


def test_three_equations_are_refused_with_a_message():
    k = torch.cat([3 * torch.eye(7, dtype=torch.int64)[:3], 2 * torch.eye(7, dtype=torch.int64)[3:5],
                   2 * torch.eye(7, dtype=torch.int64)[5:7]])
    X = CompleteIntersection(k, torch.ones(7), dims=(6,), owner=torch.tensor([0, 0, 0, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="K <= 2"):
        sample(X, 10, 0)
