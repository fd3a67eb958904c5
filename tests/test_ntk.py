"""The empirical metric-NTK (eq. 2.7), the linearised model (eq. 2.10-2.11) and the NTK callbacks."""
import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mflow import ntk
from mflow.geometry import charts
from mflow.geometry.points import features, sample
from mflow.ntk.linearized import LinearizedModel
from mflow.models.metric import HEADS, POTENTIAL_HEADS, MetricModel, hermitian
from mflow.models.mlp import MLP
from mflow.ntk.drift import (
    analytic_relu_network_kernel,
    cka,
    kernel_distance,
    network_kernel,
    relative_change,
)

TOL = 1e-10  # float64 agreement between implementations


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny kernels are Python- and dispatch-bound: one intra-op thread is faster (and kinder to a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pts(quintic):
    return sample(quintic, 24, seed=5)


@pytest.fixture(scope="module")
def by_chart(quintic):
    """300 points and the indices of those in the three most populated charts (few charts: few vmap calls)."""
    p = sample(quintic, 300, seed=6)
    cid = charts.chart_id(quintic, p.patch, p.elim)
    ids, counts = cid.unique(return_counts=True)
    return p, [(cid == c).nonzero()[:, 0] for c in ids[counts.argsort(descending=True)[:3]]]


@pytest.fixture(scope="module")
def xa(by_chart):
    """7 points in two charts."""
    p, (a, b, _) = by_chart
    return p[torch.cat([a[:4], b[:3]])]


@pytest.fixture(scope="module")
def xb(by_chart):
    """4 points in a third chart."""
    p, (_, _, c) = by_chart
    return p[c[:4]]


def _model(quintic, head, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"depth": 2, "width": 6, "out_scale": 0.3, **kw}
    return MetricModel(quintic, head, features="invariant" if head in POTENTIAL_HEADS else "chart", **kw)


def _close(a, b, tol=TOL):
    assert a.shape == b.shape
    err = float((a - b).detach().abs().max())
    assert err <= tol * max(1.0, float(b.detach().abs().max())), err


def test_real_components_are_hermitians_inputs():
    v = torch.randn(5, 9, dtype=torch.float64)
    g = hermitian(v, 3)
    assert torch.equal(ntk.real_components(g), v)
    assert ntk.component_names(3)[:4] == ["g00", "g11", "g22", "Re g01"] and ntk.component_names(3)[-1] == "Im g12"


@pytest.mark.parametrize("head", HEADS)
def test_implementations_agree_for_every_head(quintic, xa, xb, head):
    """jacobian, vp (and structured where it applies) to 1e-10, on one set and on two; trace and diagonal are the full kernel's."""
    m = _model(quintic, head)
    full = ntk.metric_ntk(m, xa, kind="full", method="jacobian", block=3)  # several blocks, mirrored
    assert full.shape == (7, 7, 9, 9)
    _close(ntk.metric_ntk(m, xa, kind="full", method="vp", chunk=3), full)
    cross = ntk.metric_ntk(m, xa, xb, kind="full", method="vp", chunk=3, block=4)
    idx = torch.arange(9)
    _close(ntk.metric_ntk(m, xa, xb, kind="diagonal", method="jacobian"), cross[:, :, idx, idx])
    _close(ntk.metric_ntk(m, xb, kind="trace", method="vp"), ntk.metric_ntk(m, xb, kind="trace", method="jacobian"))
    if head in POTENTIAL_HEADS:  # g is a derivative of the net: no dense-layer factorisation
        with pytest.raises(ntk.StructureError):
            ntk.metric_ntk(m, xa, method="structured")
    else:
        _close(ntk.metric_ntk(m, xa, method="structured", block=4), full)
        _close(ntk.metric_ntk(m, xa, xb, kind="trace", method="structured"), cross[:, :, idx, idx].sum(-1))


@pytest.mark.parametrize("method", ["jacobian", "vp", "structured"])
def test_metric_ntk_fn_is_the_kernel_as_a_function_of_points_and_parameters(quintic, xa, xb, method):
    """neural-tangents' empirical_ntk_fn style: fixed kind and method, (xa, xb, params) -> kernel; parameters other
    than the model's current ones give the kernel there (checked against the model moved to them)."""
    m = _model(quintic, "multfs")
    fn = ntk.metric_ntk_fn(m, kind="diagonal", method=method)
    _close(fn(xa, xb), ntk.metric_ntk(m, xa, xb, kind="diagonal", method="jacobian"))
    moved = {k: v + 0.1 * torch.randn_like(v) for k, v in ntk.trainable(m).items()}
    other = _model(quintic, "multfs")
    other.load_state_dict(moved, strict=False)
    _close(fn(xa, params=moved), ntk.metric_ntk(other, xa, kind="diagonal", method="jacobian"))
    assert not torch.allclose(fn(xa, params=moved), fn(xa))
    with pytest.raises(ValueError, match="method must be one of"):
        ntk.metric_ntk_fn(m, method="fast")


def test_kernel_matches_finite_difference_jacobian(quintic, xa):
    m = _model(quintic, "multfs", depth=1, width=3, out_scale=0.5)
    p = xa[:3]
    params = dict(m.named_parameters())
    J = []
    h = 1e-6
    with torch.no_grad():
        for t in params.values():
            flat = t.view(-1)
            for i in range(flat.numel()):
                flat[i] += h
                up = ntk.real_components(m(p.z, p.patch, p.elim))
                flat[i] -= 2 * h
                down = ntk.real_components(m(p.z, p.patch, p.elim))
                flat[i] += h
                J.append((up - down) / (2 * h))
    J = torch.stack(J, -1)  # [N, C, P]
    _close(ntk.output_jacobian(ntk.metric_output(m), ntk.trainable(m), p), J, 1e-7)
    expected = torch.einsum("aiP,bkP->abik", J, J)
    for method in ("jacobian", "vp", "structured"):
        K = ntk.metric_ntk(m, p, method=method)
        assert torch.allclose(K, expected, rtol=1e-6, atol=1e-9 * float(expected.abs().max()))


def test_symmetry_and_positivity(quintic, xa, xb):
    """Theta_ijkl(x, x') = Theta_klij(x', x), and Theta(x, x) is a PSD matrix over (point, component)."""
    m = _model(quintic, "matrixfs")
    _close(ntk.metric_ntk(m, xb, xa, method="jacobian"), ntk.metric_ntk(m, xa, xb, method="jacobian").permute(1, 0, 3, 2))
    K = ntk.metric_ntk(m, xa, method="vp")
    _close(K, K.permute(1, 0, 3, 2), 1e-14)
    M = K.permute(0, 2, 1, 3).reshape(63, 63)
    assert float(torch.linalg.eigvalsh(M).min()) > -1e-12 * float(M.abs().max())


class PerComponent(nn.Module):
    """One scalar MLP per real component of g (eq. 2.19): g = herm(v), v_c = net_c(x)."""

    def __init__(self, m=3, width=5):
        super().__init__()
        self.m = m
        self.nets = nn.ModuleList(MLP(10, 1, 1, width, "tanh", "ntk", 1.3, 0.2) for _ in range(m * m))

    def forward(self, z, patch, elim):
        x = features(z)
        return hermitian(torch.cat([net(x) for net in self.nets], -1), self.m)


def test_independent_component_networks_give_delta_delta_kernel(xa, xb):
    """eq. 2.20-2.23: off-diagonal component blocks vanish exactly; diagonal ones are each net's own NTK."""
    torch.manual_seed(0)
    model = PerComponent()
    for method in ("jacobian", "structured"):
        K = ntk.metric_ntk(model, xa, xb, method=method)
        eye = torch.eye(9, dtype=torch.bool)
        assert torch.all(K[:, :, ~eye] == 0)
        for c, net in enumerate(model.nets):
            own = ntk.output_ntk(
                lambda p, z, pa, el, net=net: functional_call(net, p, (features(z),)),
                ntk.trainable(net), xa, xb, kind="trace",
            )
            _close(K[:, :, c, c], own)


def test_rescaling_trick(quintic, xa, xb):
    """eq. 2.16: outputs multiplied by h(x) have the kernel h(x) h(x') Theta."""
    m = _model(quintic, "addfs")

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = m

        def forward(self, z, patch, elim):
            return h(z)[:, None, None] * self.inner(z, patch, elim)

    def h(z):
        return 1 + (z.abs() ** 2).sum(-1) / 3

    K = ntk.metric_ntk(m, xa, xb, method="jacobian")
    K_h = ntk.metric_ntk(Scaled(), xa, xb, method="jacobian")
    _close(K_h, h(xa.z)[:, None, None, None] * h(xb.z)[None, :, None, None] * K)


@pytest.mark.parametrize("head", ["multfs", "phifs"])
def test_linearized_model_equals_model_at_init_and_keeps_its_kernel(quintic, xa, head):
    m = _model(quintic, head)
    lin = LinearizedModel(m)
    assert lin.head == head and lin.surface is m.surface and lin.m == 3
    assert sorted(n for n, _ in lin.named_parameters()) == sorted(f"theta.{n.replace('.', '__')}" for n, _ in m.named_parameters())
    _close(lin(xa.z, xa.patch, xa.elim), m(xa.z, xa.patch, xa.elim), 1e-14)
    K0 = ntk.metric_ntk(m, xa, method="jacobian")
    _close(ntk.metric_ntk(lin, xa, method="jacobian"), K0)  # eq. 2.11 at theta_0
    torch.manual_seed(1)
    with torch.no_grad():  # the same parameter move for both
        for name, p in m.named_parameters():
            d = 0.5 * torch.randn_like(p)
            p += d
            lin.theta[name.replace(".", "__")] += d
    assert float(lin.displacement()) > 0
    _close(ntk.metric_ntk(lin, xa, method="vp"), K0)  # eq. 2.11: constant
    assert relative_change(ntk.metric_ntk(m, xa, method="jacobian"), K0) > 1e-3  # the network's kernel moved
    # g^L is affine in theta: g^L(theta) - g(theta_0) = J(theta_0)(theta - theta_0)
    g_lin = lin(xa.z, xa.patch, xa.elim)
    assert not torch.allclose(g_lin, m(xa.z, xa.patch, xa.elim))


def test_linearized_model_trains_with_correct_gradients(quintic, xa):
    lin = LinearizedModel(_model(quintic, "multfs"))
    w = lin.theta["net__net__0__weight"]

    def loss():
        g = lin(xa.z, xa.patch, xa.elim)
        return (torch.linalg.det(g).real ** 2).sum()

    (grad,) = torch.autograd.grad(loss(), w)
    d = torch.randn_like(w)
    h = 1e-6
    with torch.no_grad():
        w += h * d
        up = loss()
        w -= 2 * h * d
        down = loss()
        w += h * d
    assert torch.allclose((grad * d).sum(), (up - down) / (2 * h), rtol=1e-6)
    # the frozen theta_0 lives in buffers: an optimizer step moves theta only
    t0 = {k: v.clone() for k, v in lin.theta0().items()}
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    opt.zero_grad()
    loss().backward()
    opt.step()
    assert all(torch.equal(t0[k], v) for k, v in lin.theta0().items())
    assert float(lin.displacement()) > 0
    sd = lin.state_dict()
    assert "base.net.net.0.weight" in sd and "theta.net__net__0__weight" in sd


def test_sgd_step_of_the_linearized_model_is_the_frozen_ntk_flow(quintic, xa):
    """One SGD step of NetworkFlow(linearize=True, optimizer=sgd) is eq. 2.12 with the empirical NTK at
    initialisation: dr(x) = -lr sum_x' Theta_0(x, x') dL/dr(x') on the real components r of g."""
    from mflow import losses
    from mflow.flows.network import NetworkFlow

    flow = NetworkFlow(quintic, head="multfs", depth=2, width=6, out_scale=0.3, optimizer="sgd", lr=0.05, linearize=True,
                       loss_weights={"ultra_local_square": 1.0})
    batch, kappa = xa.as_batch(), torch.tensor(0.0176, dtype=torch.float64)
    theta0 = ntk.metric_ntk(flow.model.base, xa, method="jacobian", params=flow.model.theta0())  # at theta_0
    r = ntk.real_components(flow.model(xa.z, xa.patch, xa.elim).detach()).requires_grad_(True)
    (dL_dr,) = torch.autograd.grad(losses.ultra_local_square(hermitian(r, 3), batch, kappa), r)
    expected = -0.05 * torch.einsum("abik,bk->ai", theta0, dL_dr)

    opt = flow.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.SGD)
    before = r.detach()
    loss, _ = losses.total_loss(flow.model, batch, kappa, flow.loss_weights)
    loss.backward()
    opt.step()
    _close(ntk.real_components(flow.model(xa.z, xa.patch, xa.elim).detach()) - before, expected, 1e-12)
    with pytest.raises(ValueError, match="optimizer"):
        NetworkFlow(quintic, optimizer="lbfgs")


def test_ntk_vector_products_match_the_kernel(quintic, xa, xb):
    m = _model(quintic, "multfs")
    K = ntk.metric_ntk(m, xa, xb, method="jacobian")
    v = torch.randn(3, len(xb), 9, dtype=torch.float64)
    _close(ntk.ntk_vp(m, xa, xb, v[0]), torch.einsum("abik,bk->ai", K, v[0]))
    _close(ntk.ntk_vp(m, xa, xb, v, block=2), torch.einsum("abik,nbk->nai", K, v))


def test_model_that_cannot_be_vmapped_falls_back(quintic, xa):
    m = _model(quintic, "addfs")

    class Branchy(nn.Module):  # data-dependent Python control flow: no vmap over points
        def __init__(self):
            super().__init__()
            self.inner = m

        def forward(self, z, patch, elim):
            g = self.inner(z, patch, elim)
            return 2 * g if float(z.abs().max()) > 10 else g

    _close(ntk.metric_ntk(Branchy(), xa, method="jacobian"), ntk.metric_ntk(m, xa, method="vp"))


def test_memory_guard_raises_with_the_size_before_computing(quintic, pts):
    m = _model(quintic, "multfs")
    with pytest.raises(ntk.NTKTooLarge, match=r"GiB.*limit of 1 MiB") as e:
        ntk.metric_ntk(m, (pts.z.repeat(60, 1), pts.patch.repeat(60), pts.elim.repeat(60)), max_bytes=2**20)
    assert e.value.needed_bytes > e.value.limit_bytes == 2**20
    assert isinstance(e.value, ValueError)
    with pytest.raises(ntk.NTKTooLarge, match="output"):
        ntk.metric_plan(m, pts, kind="full", method="vp", max_bytes=10_000)
    # a budget that only fits the Jacobian in parameter groups: the same kernel, computed group by group
    m = _model(quintic, "multfs", width=40)
    for budget in (int(2**25 * 0.9**k) for k in range(40)):
        try:
            p = ntk.metric_plan(m, pts, method="jacobian", max_bytes=budget)
        except ntk.NTKTooLarge:
            continue
        if len(p.parameter_groups) > 1:
            break
    assert len(p.parameter_groups) > 1 and p.total_bytes <= budget
    _close(ntk.metric_ntk(m, pts, method="jacobian", max_bytes=budget), ntk.metric_ntk(m, pts, method="structured"))


def test_bad_arguments_are_refused(quintic, xa):
    m = _model(quintic, "multfs")
    with pytest.raises(ValueError, match="kind must be one of"):
        ntk.metric_ntk(m, xa, kind="trace2")
    with pytest.raises(ValueError, match="method must be one of"):
        ntk.metric_ntk(m, xa, method="magic")
    with pytest.raises(TypeError, match="CYPoints"):
        ntk.metric_ntk(m, xa.z)


def test_drift_measures():
    K0 = torch.rand(6, 6, dtype=torch.float64)
    K0 = K0 @ K0.T
    assert relative_change(K0, K0) == 0 and abs(kernel_distance(3 * K0, K0)) < 1e-15
    assert abs(cka(2 * K0 + 5, K0) - 1) < 1e-12  # invariant to scale and to constant shifts
    assert 0 < kernel_distance(K0 + torch.eye(6, dtype=torch.float64), K0) < 1


def test_network_kernel_approaches_the_analytic_relu_ntk(quintic, xa):
    """The ReLU MLP in NTK parametrisation: empirical network kernel -> out_scale^2 K_ReLU x I as width grows."""
    dist = []
    for width in (32, 512):
        m = _model(quintic, "addfs", width=width, activation="relu", parametrization="ntk", sigma_w=1.4, sigma_b=0.2)
        Ka = analytic_relu_network_kernel(m, xa)
        dist.append(relative_change(network_kernel(m, xa), Ka))
        _close(ntk.metric_ntk(m, xa), network_kernel(m, xa))  # addfs: r(g) = r(g_FS) + v
    assert dist[1] < 0.25 and dist[1] < dist[0]
    assert analytic_relu_network_kernel(_model(quintic, "addfs"), xa) is None  # GELU: no analytic kernel here


# ----------------------------------------------------------------------------- callbacks end to end
def _cli_args(tmp_path, *extra):
    cfg = tmp_path / "callbacks.yaml"
    cfg.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: mflow.callbacks.NTKDrift\n      init_args: {n_probe: 12, every_n_steps: 3}\n"
        "    - class_path: mflow.callbacks.SigmaGain\n      init_args: {n_train: 100}\n"
    )
    return [
        "--config", str(cfg), f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}",
        "--data.n_points=600", "--data.batch_size=64", "--wandb=off", "--model.width=8", "--model.depth=1",
        "--model.activation=relu", "--model.parametrization=ntk", "--test=false", *extra,
    ]


def test_drift_and_gain_callbacks_log_write_and_survive_a_resume(tmp_path):
    from mflow.cli.train import main

    run = tmp_path / "run"
    trainer = main(_cli_args(tmp_path, "--trainer.max_epochs=1"))
    first = json.loads((run / "ntk_drift.json").read_text())
    steps = [e["step"] for e in first["series"]]
    n = trainer.global_step  # measured at 0, every 3 steps and at the end of the epoch
    assert steps == sorted(set(list(range(0, n, 3)) + [n])) and first["kind"] == "trace" and first["n_probe"] == 12
    assert (run / "ntk_drift.png").stat().st_size > 1000
    last = first["series"][-1]
    assert 0 < last["relative_change"] < 1 and 0 <= last["kernel_distance"] < 1 and 0 < last["cka"] <= 1
    assert last["velocity"] > 0 and math.isfinite(last["analytic_distance"])
    summary = json.loads((run / "summary.json").read_text())["ntk_drift"]  # the last values, in summary.json
    assert summary == {k: last[k] for k in summary} and set(summary) >= {"relative_change", "cka", "analytic_distance"}
    header = next((run / "csv").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    for col in ("ntk/relative_change", "ntk/kernel_distance", "ntk/cka", "ntk/velocity", "ntk/analytic_distance",
                "train/gain", "train/reduction_from_init", "val/gain", "val/reduction_from_init", "test/gain",
                "test/sigma", "train/sigma"):
        assert col in header
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("NTKDrift"))
    assert state["K0"].shape == (12, 12) and len(state["series"]) == len(steps)

    main(["--trainer.max_epochs=2", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])  # the run's own settings
    second = json.loads((run / "ntk_drift.json").read_text())
    assert second["K0_norm"] == first["K0_norm"]  # K_0 restored, not recomputed at the resumed weights
    assert second["series"][: len(steps)] == first["series"]
    assert second["series"][-1]["step"] == 2 * n and second["series"][-1]["relative_change"] > 0


def test_drift_figure_is_logged_to_wandb_loggers(tmp_path):
    """At fit end the PNG goes to W&B as a wandb.Image when the logger is a WandbLogger (no run started here)."""
    from lightning.pytorch.loggers import WandbLogger

    from mflow.callbacks import NTKDrift

    logged = []

    class Run:
        def log(self, d):
            logged.append(d)

    lg = WandbLogger.__new__(WandbLogger)
    lg._experiment = Run()

    class Trainer:
        loggers = [lg]

    cb = NTKDrift()
    cb.series = [
        {"step": 0, "relative_change": 0.0, "kernel_distance": 0.0, "cka": 1.0, "velocity": None, "analytic_distance": 0.3},
        {"step": 5, "relative_change": 0.1, "kernel_distance": 0.01, "cka": 0.99, "velocity": 0.02, "analytic_distance": 0.31},
    ]
    js, png = cb.write(tmp_path, Trainer())
    assert json.loads(js.read_text())["series"][1]["step"] == 5 and png.stat().st_size > 1000
    import wandb

    assert len(logged) == 1 and isinstance(logged[0]["ntk/drift"], wandb.Image)


def test_structured_refuses_parameters_used_outside_their_layer(quintic, xa):
    """A weight read directly by the head is invisible to the layer hooks: the spot check catches it."""
    m = _model(quintic, "addfs")

    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = m

        def forward(self, z, patch, elim):
            w = self.inner.net.net[0].weight
            return self.inner(z, patch, elim) + (w**2).sum() * torch.eye(3, dtype=torch.complex128)

    with pytest.raises(ntk.StructureError, match="does not reproduce"):
        ntk.metric_ntk(Sneaky(), xa, method="structured")
    _close(ntk.metric_ntk(Sneaky(), xa, method="auto"), ntk.metric_ntk(Sneaky(), xa, method="vp"))
