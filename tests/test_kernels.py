"""Frozen kernels (mflow.kernels): analytic NTKs and the empirical NTK vs Monte Carlo, FS kernels, the interface."""
import math

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from mflow.geometry.points import as_features, sample
from mflow.kernels import CosineNTK, DeltaKernel, EmpiricalNTK, GaussianFS, ReluNTK, Scaled, kernel
from mflow.models.cosine import CosineNet, normalising_amplitude
from mflow.models.mlp import MLP


@pytest.fixture(scope="module")
def pts(quintic):
    return sample(quintic, 60, seed=3)


def empirical_ntk(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """sum_I df(x)/dtheta_I df(x')/dtheta_I for a scalar-output net: x [N, D] -> [N, N]."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, xi):
        return functional_call(net, p, (xi[None],)).reshape(())

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    flat = torch.cat([j.reshape(len(x), -1) for j in jac.values()], 1)
    return flat @ flat.T


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- ReLU NTK
@pytest.mark.parametrize("depth,sigma_w,sigma_b", [(2, 1.5, 0.3), (1, 5.716, 2.0)])
def test_relu_ntk_matches_monte_carlo(pts, depth, sigma_w, sigma_b):
    x = pts.features[:8]
    k = ReluNTK(depth, sigma_w, sigma_b)
    analytic = k.matrix(pts[:8])
    assert torch.allclose(analytic, k.matrix(x))  # CYPoints and features give the same kernel
    mean_err, avg_err = {}, {}
    for width in (64, 256, 1024):
        emp = []
        for s in range(4):
            torch.manual_seed(1000 * width + s)
            emp.append(empirical_ntk(MLP(x.shape[1], 1, depth, width, "relu", "ntk", sigma_w, sigma_b), x))
        mean_err[width] = sum(rel(e, analytic) for e in emp) / len(emp)
        avg_err[width] = rel(torch.stack(emp).mean(0), analytic)
    assert mean_err[64] > mean_err[256] > mean_err[1024], mean_err
    assert avg_err[1024] < 0.05, avg_err


def test_relu_ntk_closed_form():
    sw, sb, d = 1.7, 0.4, 3
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    q = float(x.square().sum()) / d
    # 1 hidden layer, x = x': Theta = sw^2 (sw^2 q + sb^2) + sb^2
    assert float(ReluNTK(1, sw, sb).block(x, x)) == pytest.approx(sw**2 * (sw**2 * q + sb**2) + sb**2, rel=1e-12)
    # orthogonal inputs, no bias: c = pi/2, Theta = sw^4 |x||x'| / (2 pi d)
    a = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64)
    assert float(ReluNTK(1, sw, 0.0).block(a, b)) == pytest.approx(sw**4 * 3 * 2 / (2 * math.pi * d), rel=1e-12)
    # zero input with sigma_b = 0 is finite (no 0/0)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    assert torch.isfinite(ReluNTK(3, sw, 0.0).block(zero, a)).all()


# ----------------------------------------------------------------------------- cosine net
def test_cosine_net_ntk_tends_to_eq_2_35():
    d, sigma_w = 2, 1.3
    net = CosineNet(d, 200_000, sigma_w=sigma_w, generator=torch.Generator().manual_seed(0))
    assert [n for n, _ in net.named_parameters()] == ["a"]  # eq. 2.33: NTK w.r.t. a only
    x = torch.randn(6, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    emp = empirical_ntk(net, x)
    assert torch.allclose(emp, net.features(x) @ net.features(x).T)  # eq. 2.33
    analytic = CosineNTK(sigma_w, d).matrix(x)
    assert rel(emp, analytic) < 0.01
    assert analytic.diagonal() == pytest.approx(torch.full((6,), net.amplitude**2 / 2, dtype=torch.float64))


@pytest.mark.parametrize("d,sigma_w", [(1, 0.7), (1, 4.0), (2, 2.5)])
def test_cosine_ntk_is_normalised_gaussian(d, sigma_w):
    k = CosineNTK(sigma_w, d)
    width = math.sqrt(d) / sigma_w  # eq. 2.37
    assert k.width == pytest.approx(width)
    h = width / 10  # a Riemann sum of a Gaussian is exact to round-off at this spacing
    g = torch.arange(-9 * width, 9 * width + h / 2, h, dtype=torch.float64)
    grid = torch.cartesian_prod(*[g] * d).reshape(-1, d)
    mass = float(k.matrix(torch.zeros(1, d, dtype=torch.float64), grid, block=len(grid)).sum()) * h**d
    assert mass == pytest.approx(1.0, rel=1e-9)
    # eq. 2.36 as printed is the square root of the normalising A
    printed = 2**0.25 * (sigma_w / math.sqrt(2 * math.pi * d)) ** (d / 4)
    assert printed**2 == pytest.approx(normalising_amplitude(sigma_w, d))
    # explicit amplitude: eq. 2.35 with that A
    x = torch.tensor([[0.3] * d], dtype=torch.float64)
    y = torch.tensor([[-0.2] * d], dtype=torch.float64)
    val = 3.0**2 / 2 * math.exp(-(sigma_w**2) * d * 0.25 / (2 * d))
    assert float(CosineNTK(sigma_w, d, amplitude=3.0).block(x, y)) == pytest.approx(val, rel=1e-12)


# ----------------------------------------------------------------------------- FS kernels
def test_gaussian_fs(pts):
    z = pts.z[:10]
    for k in (GaussianFS(0.3), GaussianFS(0.3, squared=True)):
        m = k.matrix(pts[:10])
        assert torch.equal(m.diagonal(), torch.ones(10, dtype=torch.float64))
        assert torch.allclose(m, m.T, atol=1e-14)
        phase = torch.exp(1j * torch.rand(10, 1, dtype=torch.float64)) * 2.5
        assert torch.allclose(k.matrix(z * phase), m, atol=1e-13)  # projective invariance
        assert torch.allclose(k.matrix(as_features(z)), m)  # [Re z, Im z] input
    for i, j in [(0, 1), (2, 7), (4, 9)]:
        u, v = z[i], z[j]
        d = math.acos(float(abs(torch.vdot(u, v)) / (u.norm() * v.norm())))  # eq. 3.2
        assert float(GaussianFS(0.3).block(z[i : i + 1], z[j : j + 1])) == pytest.approx(math.exp(-d / 0.6), rel=1e-10)
        sq = GaussianFS(0.3, squared=True).block(z[i : i + 1], z[j : j + 1])
        assert float(sq) == pytest.approx(math.exp(-(d**2) / (2 * 0.09)), rel=1e-10)
        inv = GaussianFS(30.0, inverse=True).block(z[i : i + 1], z[j : j + 1])
        assert float(inv) == pytest.approx(math.exp(-30.0 * d / 2), rel=1e-10)  # Table 1's sigma as 1/width
    assert float(GaussianFS(0.3, zero_below=10.0).block(z[:1], z[1:2])) == 1.0


def test_table_1_gaussian_as_printed_is_almost_constant(pts):
    """eq. 3.5 with sigma = 30: exp(-d/60) >= exp(-pi/120) = 0.974 for every pair (d <= pi/2), so the
    kernel cannot localise; read as an inverse width it is local (the nearest neighbours dominate)."""
    printed = GaussianFS(30.0).matrix(pts[:300])
    assert float(printed.min()) >= math.exp(-math.pi / 120) - 1e-12
    inverse = GaussianFS(30.0, inverse=True).matrix(pts[:300])
    assert float(inverse.median()) < 1e-6


def test_delta_kernel_selects_nearest_train_point(pts):
    train = pts.z[:40]
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:15]
    noise = 1e-4 * torch.randn(15, train.shape[1], dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    query = train[perm] + noise
    k = DeltaKernel()
    m = k.matrix(query, train)
    assert m.shape == (15, 40)
    assert torch.equal(m.sum(1), torch.ones(15, dtype=torch.float64))
    assert torch.equal(m.argmax(1), perm)
    v = torch.randn(40, 3, 3, dtype=torch.float64)
    assert torch.equal(k.apply(query, train, v, block=7), v[perm])
    assert torch.equal(k.matrix(train), torch.eye(40, dtype=torch.float64))  # train on train: identity


# ----------------------------------------------------------------------------- interface
KERNELS = [
    ReluNTK(3, 1.4, 0.2),
    CosineNTK(2.0, 10),
    GaussianFS(0.5),
    GaussianFS(0.2, squared=True),
    DeltaKernel(),
    Scaled(GaussianFS(0.5), lambda p: 1 + p.z.abs()[:, 0] ** 2),
    EmpiricalNTK(depth=2, width=16, sigma_w=1.3, sigma_b=0.2),
]


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: repr(k)[:20])
def test_apply_equals_matrix_product_for_any_block(pts, k):
    xa, xb = pts[:23], pts[20:]
    full = k.matrix(xa, xb, block=1000)
    assert full.shape == (23, 40) and full.dtype == torch.float64
    # arccos near c = 0 turns round-off of order 1e-16 into ~1e-8 (ReLU NTK at coincident points)
    assert rel(k.matrix(xa, xb, block=7), full) < 1e-8
    v = torch.randn(40, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = (full @ v.reshape(40, -1)).reshape(23, 3, 3)
    for block in (1000, 16, 5):
        assert rel(k.apply(xa, xb, v, block=block), want) < 1e-8
    vc = torch.complex(v, v.flip(0))  # complex (Hermitian-metric) updates
    want_c = (full.to(vc.dtype) @ vc.reshape(40, -1)).reshape(23, 3, 3)
    assert rel(k.apply(xa, xb, vc, block=9), want_c) < 1e-8
    assert torch.allclose(k.block(xa[:3], xb[:4]), k.matrix(xa[:3], xb[:4]))


def test_scaled_kernel_is_h_h_k(pts):
    h = lambda p: p.weights.sqrt()  # noqa: E731
    for base in (ReluNTK(2, 1.1, 0.5), GaussianFS(0.4), DeltaKernel()):
        s = Scaled(base, h)
        xa, xb = pts[:12], pts[12:30]
        want = h(xa)[:, None] * base.matrix(xa, xb) * h(xb)[None, :]  # eq. 2.16
        assert torch.allclose(s.matrix(xa, xb, block=5), want)
        assert torch.allclose(s.block(xa, xb), want)
        v = torch.randn(18, 2, dtype=torch.float64)
        assert torch.allclose(s.apply(xa, xb, v, block=4), want @ v)


def test_empirical_ntk_is_the_finite_difference_ntk_of_its_network(pts):
    """k(x, x') = sum_I df(x)/dtheta_I df(x')/dtheta_I, each derivative by a central difference in theta_I."""
    k = EmpiricalNTK(depth=1, width=3, activation="gelu", parametrization="standard", sigma_w=1.2, sigma_b=0.3, seed=4)
    K = k.matrix(pts[:5])
    assert torch.equal(K, EmpiricalNTK(1, 3, "gelu", "standard", 1.2, 0.3, seed=4).matrix(pts[:5]))  # a fixed function
    x = as_features(pts[:5])
    net = k.network(x.shape[1])
    cols, h = [], 1e-6
    with torch.no_grad():
        for p in net.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                flat[i] += h
                up = net(x)[:, 0]
                flat[i] -= 2 * h
                down = net(x)[:, 0]
                flat[i] += h
                cols.append((up - down) / (2 * h))
    J = torch.stack(cols, 1)
    assert rel(K, J @ J.T) < 1e-8


def test_empirical_ntk_tends_to_the_analytic_relu_ntk(pts):
    analytic = ReluNTK(2, 1.4, 0.3).matrix(pts[:20])
    err = {w: sum(rel(EmpiricalNTK(2, w, sigma_w=1.4, sigma_b=0.3, seed=s).matrix(pts[:20]), analytic) for s in range(3)) / 3
           for w in (32, 1024)}
    assert err[1024] < 0.1 and err[1024] < err[32] / 3  # Monte Carlo error ~ width^-1/2


def test_registry_and_bad_parameters(pts):
    assert kernel("gaussian", sigma=30.0) == GaussianFS(30.0)
    assert isinstance(kernel("delta"), DeltaKernel)
    assert isinstance(kernel("empirical", width=8), EmpiricalNTK)
    bad = [
        lambda: kernel("laplace"),
        lambda: ReluNTK(0, 1.0, 0.0),
        lambda: ReluNTK(1.5, 1.0, 0.0),
        lambda: ReluNTK(True, 1.0, 0.0),
        lambda: ReluNTK(2, 0.0, 0.0),
        lambda: ReluNTK(2, -1.0, 0.0),
        lambda: ReluNTK(2, float("nan"), 0.0),
        lambda: ReluNTK(2, 1.0, -0.1),
        lambda: ReluNTK(2, 1.0, float("inf")),
        lambda: ReluNTK(2, "wide", 0.1),
        lambda: CosineNTK(0.0, 2),
        lambda: CosineNTK(1.0, 0),
        lambda: CosineNTK(1.0, 2, amplitude=-1.0),
        lambda: CosineNTK(1.0, 3).matrix(torch.zeros(2, 2)),  # wrong input width
        lambda: CosineNet(2, 0),
        lambda: GaussianFS(0.0),
        lambda: GaussianFS(float("nan")),
        lambda: GaussianFS(1.0).matrix(pts, block=0),
        lambda: GaussianFS(1.0).apply(pts[:5], pts[:6], torch.ones(5)),  # v has Nb = 6 rows
        lambda: GaussianFS(1.0).matrix(torch.full((3, 5), float("nan"), dtype=torch.complex128)),
        lambda: GaussianFS(1.0).matrix(torch.zeros(3, 5, dtype=torch.complex128)),  # z = 0
        lambda: GaussianFS(1.0).matrix(torch.ones(3, 5)),  # odd-width features
        lambda: ReluNTK(2, 1.0, 0.0).matrix(torch.empty(0, 4)),
        lambda: Scaled(GaussianFS(1.0), lambda p: torch.ones(3)).matrix(pts[:5]),  # h has wrong length
        lambda: Scaled("gaussian", lambda p: p),
        lambda: EmpiricalNTK(width=0),
        lambda: EmpiricalNTK(activation="swish"),
        lambda: EmpiricalNTK(parametrization="abc"),
        lambda: EmpiricalNTK(sigma_w=0.0),
    ]
    for f in bad:
        with pytest.raises(ValueError):
            f()


@pytest.mark.parametrize("inverse,squared", [(True, False), (False, True)])
def test_matrix_free_gaussian_apply_in_both_precisions(pts, inverse, squared):
    """The tiled apply (cos^2 d from one matrix product of the embeddings u u^H) against the exact kernel matrix:
    to round-off in float64, within 1e-6 in float32 (close pairs recomputed exactly); points repeated so that some
    pairs are at distance 0, where arccos loses the digits (eq. 3.4)."""
    z = torch.cat([pts.z, pts.z[:7] * (1.5 - 0.5j)])  # the same points of P^4, rescaled
    k = GaussianFS(30.0 if inverse else 0.3, squared=squared, inverse=inverse)
    v = torch.randn(len(z), 3, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    ref = torch.einsum("ab,bij->aij", k.matrix(z).to(v.dtype), v)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        out = k.apply(z, z, v, block=16, dtype=dtype)
        assert float((out - ref).abs().max() / ref.abs().max()) < tol, dtype


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gaussian_apply_on_cuda_equals_the_cpu(pts):
    k = GaussianFS(30.0, inverse=True)
    v = torch.randn(len(pts), 9, dtype=torch.float64)
    assert torch.allclose(k.apply(pts, pts, v, device="cuda"), k.apply(pts, pts, v), rtol=1e-10, atol=1e-12)
