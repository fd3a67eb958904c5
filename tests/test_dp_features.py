"""The invariant_dp features (mflow.models.dp_features): log |dp_k|^2_FS of the member, its closed-form jets along X,
and the phifs head on them, against independent computations (closed forms and nested autodiff)."""

import pytest
import torch

from mflow.geometry import curvature
from mflow.geometry.points import sample
from mflow.geometry.presets import manifold
from mflow.models.dp_features import dp_norm, dp_norm_jets
from mflow.models.metric import MetricModel

NAMES = ["fermat_quintic", "bicubic", "p1p3", "tetraquadric", "two_cubics"]


@pytest.fixture(scope="module", params=NAMES)
def member(request):
    X = manifold(request.param)
    return X, sample(X, 24, seed=5)


def test_fermat_quintic_value_is_the_closed_form(quintic):
    """|dp|^2 = 25 sum |z_i|^8 for p = sum z_i^5, so N = 25 sum |z_i|^8 / |z|^8."""
    p = sample(quintic, 50, seed=1)
    r = (p.z.abs() ** 2).sum(-1)
    expected = torch.log(25 * (p.z.abs() ** 8).sum(-1) / r**4)
    assert torch.allclose(dp_norm(quintic, p.z)[:, 0], expected, rtol=0, atol=1e-12)


def test_value_is_a_function_on_the_ambient_space(member):
    X, p = member
    lam = torch.tensor([0.3 + 2j, -1.7, 0.5j, 4.0], dtype=p.z.dtype)[X.factor_of]  # one scale per factor P^n_i
    assert torch.allclose(dp_norm(X, p.z * lam), dp_norm(X, p.z), rtol=0, atol=1e-12)


def test_jets_match_nested_autodiff(member):
    X, p = member
    u, du, ddu = dp_norm_jets(X, p.z, p.pullback)
    m = p.pullback.shape[1]
    a, b = torch.triu_indices(m, m)
    for k in range(X.K):
        f = lambda w, k=k: dp_norm(X, w)[:, k]  # noqa: E731
        d = curvature.tangent_del(f, p.z, p.pullback)  # [N, m]
        dd = curvature.tangent_ddbar(f, p.z, p.pullback)[:, a, b]  # [N, P]
        assert torch.allclose(u[:, k], f(p.z), atol=1e-12)
        assert torch.allclose(torch.complex(du[0, ..., k], du[1, ..., k]), d, atol=1e-10)
        assert torch.allclose(torch.complex(ddu[0, ..., k], ddu[1, ..., k]), dd, atol=1e-10)


def test_phifs_on_invariant_dp_is_fs_plus_ddbar_phi(member):
    X, p = member
    torch.manual_seed(0)
    model = MetricModel(X, "phifs", depth=2, width=16, features="invariant_dp", out_scale=0.3)
    ref = p.g_fs + curvature.tangent_ddbar(model.phi, p.z, p.pullback)
    g = model(p.z, p.patch, p.elim)
    assert torch.allclose(g.detach(), ref.detach(), rtol=1e-10, atol=1e-13)
    assert model.net.net[0].weight.shape[1] == sum((n + 1) ** 2 for n in X.dims) + X.K


def test_invariant_dp_is_refused_outside_phifs(quintic):
    with pytest.raises(ValueError, match="invariant_dp"):
        MetricModel(quintic, "multfs", features="invariant_dp")
