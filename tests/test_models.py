"""Metric heads and losses against independent computations."""

import pytest
import torch

from mflow import losses
from mflow.geometry import curvature
from mflow.geometry.points import sample
from mflow.models.metric import HEADS, POTENTIAL_HEADS, MetricModel, hermitian, invariant_features


@pytest.fixture(scope="module")
def pts(quintic):
    return sample(quintic, 64, seed=3)


def _model(quintic, head, **kw):
    torch.manual_seed(0)
    return MetricModel(quintic, head, depth=2, width=16, features="invariant" if head in POTENTIAL_HEADS else "chart", **kw)


@pytest.mark.parametrize("head", HEADS)
def test_heads_are_hermitian_positive_definite_at_initialisation(quintic, pts, head):
    g = _model(quintic, head)(pts.z, pts.patch, pts.elim).detach()
    assert torch.allclose(g, g.conj().transpose(-1, -2), atol=1e-14)
    assert float(torch.linalg.eigvalsh(g).min()) > 0


def test_hermitian_builder_roundtrip():
    v = torch.randn(5, 9, dtype=torch.float64)
    H = hermitian(v, 3)
    assert torch.allclose(H.diagonal(dim1=-2, dim2=-1).real, v[:, :3])
    assert torch.allclose(H[:, 0, 1], torch.complex(v[:, 3], v[:, 6]))
    assert torch.allclose(H, H.conj().transpose(-1, -2))


def test_invariant_features_do_not_depend_on_scaling():
    z = torch.randn(10, 5, dtype=torch.complex128)
    lam = torch.complex(torch.randn(10, 1, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64))
    assert torch.allclose(invariant_features(z), invariant_features(lam * z))
    assert invariant_features(z).shape == (10, 25)


def test_phifs_is_fs_plus_ddbar_phi_by_finite_differences(quintic, pts):
    """phifs head vs an independent finite-difference d dbar phi in ambient coordinates, pulled back."""
    m = _model(quintic, "phifs", out_scale=1.0)
    p = pts[:4]
    g = m(p.z, p.patch, p.elim).detach()
    h = 1e-4
    n1 = 5
    E = torch.eye(2 * n1, dtype=torch.float64) * h
    for i in range(len(p)):
        def phi(x):  # real coordinates (Re z, Im z) of P^n
            return m.phi(torch.complex(x[:, :n1], x[:, n1:])).detach()

        x0 = torch.cat([p.z[i].real, p.z[i].imag])
        H = torch.zeros(2 * n1, 2 * n1, dtype=torch.float64)
        for a in range(2 * n1):
            for b in range(2 * n1):
                xs = torch.stack([x0 + E[a] + E[b], x0 + E[a] - E[b], x0 - E[a] + E[b], x0 - E[a] - E[b]])
                f = phi(xs)
                H[a, b] = (f[0] - f[1] - f[2] + f[3]) / (4 * h * h)
        ddbar = curvature.ddbar_from_real_hessian(H[None])[0]
        J = p.pullback[i]
        expected = p.g_fs[i] + J @ ddbar @ J.conj().T
        assert torch.allclose(g[i], expected, rtol=1e-5, atol=1e-7)


def test_phifs_kaehler_loss_is_round_off_and_others_are_not(quintic, pts):
    b = pts[:32].as_batch()
    k = torch.tensor(0.0176, dtype=torch.float64)
    assert float(losses.kaehler_loss(_model(quintic, "phifs", out_scale=1.0), b, k)) < 1e-20
    assert float(losses.kaehler_loss(_model(quintic, "addfs", out_scale=0.01), b, k)) > 1e-8


def test_transition_loss_vanishes_for_fs_and_not_for_a_network(quintic, pts):
    b = pts.as_batch()
    k = torch.tensor(0.0176, dtype=torch.float64)

    class FS(torch.nn.Module):
        surface = quintic

        def forward(self, z, patch, elim):
            return curvature.fs_metric_fn(quintic)(z, patch, elim)

    assert float(losses.transition_loss(FS(), b, k)) < 1e-24
    assert float(losses.transition_loss(_model(quintic, "multfs", out_scale=0.3), b, k)) > 1e-6


def test_sigma_loss_is_zero_when_eta_is_one(quintic, pts):
    b = pts.as_batch()
    # g = (kappa |Omega|^2)^{1/3} * I has eta = 1 exactly
    k = torch.tensor(0.02, dtype=torch.float64)
    g = ((k * pts.omega_sq) ** (1 / 3))[:, None, None] * torch.eye(3, dtype=torch.complex128)
    assert float(losses.sigma_loss(g, b, k)) < 1e-14
    assert float(losses.ultra_local_square(g, b, k)) < 1e-28
    assert abs(float(losses.ultra_local_entropy(g, b, k))) < 1e-14


@pytest.mark.parametrize("name", ["sigma", "ultra_local_square", "volume", "kaehler", "transition", "two_derivative"])
def test_loss_gradients_match_finite_differences(quintic, pts, name):
    m = _model(quintic, "multfs", out_scale=0.5)
    b = pts[:16].as_batch()
    k = torch.tensor(0.0176, dtype=torch.float64)
    p = m.net.net[0].weight
    loss, _ = losses.total_loss(m, b, k, {name: 1.0})
    (grad,) = torch.autograd.grad(loss, p)
    direction = torch.randn_like(p)
    h = 1e-6
    with torch.no_grad():
        p += h * direction
        up = losses.total_loss(m, b, k, {name: 1.0})[0]
        p -= 2 * h * direction
        down = losses.total_loss(m, b, k, {name: 1.0})[0]
        p += h * direction
    fd = (up - down) / (2 * h)
    assert torch.allclose((grad * direction).sum(), fd, rtol=1e-5, atol=1e-12)


def test_phifs_sigma_gradient_matches_finite_differences(quintic, pts):
    m = _model(quintic, "phifs", out_scale=0.5)
    b = pts[:8].as_batch()
    k = torch.tensor(0.0176, dtype=torch.float64)
    p = m.net.net[2].weight
    (grad,) = torch.autograd.grad(losses.sigma_loss(m(b["z"], b["patch"], b["elim"]), b, k), p)
    d = torch.randn_like(p)
    h = 1e-6
    f = lambda: losses.sigma_loss(m(b["z"], b["patch"], b["elim"]), b, k).detach()
    with torch.no_grad():
        p += h * d
    up = f()
    with torch.no_grad():
        p -= 2 * h * d
    down = f()
    with torch.no_grad():
        p += h * d
    assert torch.allclose((grad * d).sum(), (up - down) / (2 * h), rtol=1e-5)


def test_loss_weights_are_validated():
    with pytest.raises(ValueError, match="unknown loss"):
        losses.check_weights({"sigmaa": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        losses.check_weights({"sigma": -1.0})
    with pytest.raises(ValueError, match="at least one"):
        losses.check_weights({"sigma": 0.0})


def test_unknown_head_and_features_are_refused(quintic):
    with pytest.raises(ValueError, match="choose activation gelu"):
        MetricModel(quintic, "phifs", activation="relu")
    with pytest.raises(ValueError, match="head must be one of"):
        MetricModel(quintic, "multFS2")
    with pytest.raises(ValueError, match="features must be one of"):
        MetricModel(quintic, "multfs", features="pixels")
    with pytest.raises(ValueError, match="unknown activation"):
        MetricModel(quintic, "multfs", activation="swish9")


@pytest.mark.parametrize("features", ["chart", "invariant"])
@pytest.mark.parametrize("act", ["gelu", "tanh", "cos"])
def test_taylor_mode_ddbar_matches_nested_autodiff(quintic, pts, features, act):
    """PhiFS's forward-propagated d dbar phi equals torch.func's jacrev(grad) along X."""
    torch.manual_seed(1)
    m = MetricModel(quintic, "phifs", depth=2, width=16, activation=act, features=features, out_scale=1.0)
    p = pts[:16]
    ref = curvature.tangent_ddbar(m.phi, p.z, p.pullback)
    assert torch.allclose(m.ddbar_phi(p.z, p.pullback), ref, rtol=1e-10, atol=1e-14)


def test_bihomogeneous_potential_is_log_of_a_degree_D_polynomial_and_its_metric_its_d_dbar(quintic, pts):
    """Q(u(z)) |z|^(2D) is bihomogeneous of degree (D, D) (checked on a rescaled z), the head's g is g_FS plus the
    independent nested-autodiff d dbar of phi = log Q / (D pi), and g is Kaehler: d g is symmetric."""
    torch.manual_seed(2)
    m = MetricModel(quintic, "bihomogeneous", depth=2, width=8, out_scale=0.3)
    assert m.features == "invariant" and m.net.degree == 4
    p = pts[:16]
    lam = torch.complex(torch.randn(16, 1, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64))

    def P(z):  # P(z, zbar) = Q(u) |z|^(2D)
        return m.net(invariant_features(z))[:, 0] * (z.abs() ** 2).sum(-1) ** m.net.degree

    assert torch.allclose(P(lam * p.z), (lam[:, 0].abs() ** 8) * P(p.z), rtol=1e-12)
    ref = p.g_fs + curvature.tangent_ddbar(m.phi, p.z, p.pullback)
    assert torch.allclose(m(p.z, p.patch, p.elim), ref, rtol=1e-10, atol=1e-14)
    assert float(losses.kaehler_loss(m, p.as_batch(), 3).detach()) < 1e-20
    with pytest.raises(ValueError, match="features: invariant"):
        MetricModel(quintic, "bihomogeneous", features="chart")


def test_bihomogeneous_head_learns(quintic):
    """40 Adam steps on the sigma loss lower sigma on held-out points: every parameter is trained through the jets."""
    from mflow.geometry import volume

    torch.manual_seed(0)
    train, test = sample(quintic, 512, seed=5), sample(quintic, 512, seed=6)
    m = MetricModel(quintic, "bihomogeneous", depth=2, width=16)
    b = train.as_batch()
    k = volume.kappa(train.weights, torch.linalg.det(train.g_fs).real, train.omega_sq)

    def test_sigma():
        with torch.no_grad():
            return float(volume.sigma(test.weights, torch.linalg.det(m(test.z, test.patch, test.elim)).real, test.omega_sq))

    before = test_sigma()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    for _ in range(40):
        opt.zero_grad()
        losses.sigma_loss(m(b["z"], b["patch"], b["elim"]), b, k).backward()
        assert all(p.grad is not None and p.grad.abs().max() > 0 for p in m.parameters())
        opt.step()
    assert test_sigma() < 0.7 * before


@pytest.mark.parametrize("head", ["multfs", "phifs", "bihomogeneous"])
def test_float32_network_gives_the_float64_metric_to_single_precision(quintic, pts, head):
    kw = {"features": "invariant", "activation": "gelu"} if head in POTENTIAL_HEADS else {}
    m64 = MetricModel(quintic, head, depth=2, width=16, out_scale=0.3, **kw)
    m32 = MetricModel(quintic, head, depth=2, width=16, out_scale=0.3, precision="float32", **kw)
    m32.load_state_dict(m64.state_dict())
    g64, g32 = (m(pts.z, pts.patch, pts.elim).detach() for m in (m64, m32))
    assert g32.dtype == torch.complex128
    assert float((g32 - g64).abs().max() / g64.abs().max()) < 1e-5
    assert float((g32 - g64).abs().max()) > 0  # the float32 path was taken


def test_metric_ntk_of_a_float32_network_equals_its_jacobian_kernel(quintic, pts):
    """structured (float32 layer inputs, float64 Gram products) and jacobian agree on a float32 network."""
    from mflow.ntk import metric_ntk

    m = MetricModel(quintic, "multfs", depth=2, width=16, out_scale=0.3, precision="float32")
    p = pts[:12]
    K = metric_ntk(m, p, kind="trace", method="jacobian")
    assert K.dtype == torch.float64
    assert torch.allclose(metric_ntk(m, p, kind="trace", method="structured"), K, rtol=1e-5)
    assert torch.allclose(metric_ntk(m, p, kind="trace"), K, rtol=1e-5)


def test_compiled_training_forward_equals_the_eager_one_and_evaluation_stays_eager(quintic, pts):
    m = MetricModel(quintic, "phifs", depth=2, width=16, features="invariant", out_scale=0.3, compile=True)
    eager = MetricModel(quintic, "phifs", depth=2, width=16, features="invariant", out_scale=0.3)
    eager.load_state_dict(m.state_dict())
    p = pts[:32]
    g = m(p.z, p.patch, p.elim)
    assert set(m._compiled) == {"ddbar"}
    assert torch.allclose(g, eager(p.z, p.patch, p.elim), rtol=1e-12, atol=1e-15)
    g.real.sum().backward()  # gradients flow through the compiled function, as through the eager one
    eager(p.z, p.patch, p.elim).real.sum().backward()
    for q, r in zip(m.parameters(), eager.parameters()):  # (None: a parameter g does not depend on, e.g. phi's bias)
        zero = torch.zeros_like(q)
        assert torch.allclose(zero if q.grad is None else q.grad, zero if r.grad is None else r.grad, rtol=1e-10, atol=1e-14)
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in m.parameters())
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    m.eval()
    m(pts.z, pts.patch, pts.elim)  # another batch shape: no compilation in evaluation
    m.train()
    with torch.no_grad():
        m(pts.z, pts.patch, pts.elim)  # nor without gradients (fit-start sigmas, NTK probes)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
