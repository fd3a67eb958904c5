"""Everything mflow runs, on complete intersections in products: train.py (every head with every loss, a moduli
family, frozen kernels with the product distance, clustered), evaluate.py (noised points both ways), the
metric-NTK methods, NTK drift."""
import json

import pytest
import torch

from mflow import losses
from mflow.cli.errors import run
from mflow.cli.train import main as train_main
from mflow.evaluation import cli as evaluate_cli
from mflow.evaluation import noise
from mflow.geometry import distance
from mflow.geometry.points import sample
from mflow.geometry.presets import manifold
from mflow.models.metric import HEADS, MetricModel
from mflow.ntk import metric_ntk

MANIFOLDS = {"bicubic": ["--data.manifold=bicubic", "--data.kahler=[1.0, 1.7]"],
             "two_cubics": ["--data.manifold=two_cubics", "--data.psi=0.5"]}


def _train(tmp_path, name, *extra, config=None):
    first = [f"--config={config}"] if config else []  # a config file first: what follows overrides it
    return train_main([*first, f"--run_dir={tmp_path / name}", f"--data.cache_dir={tmp_path / 'data'}", "--data.n_points=500",
                       "--data.batch_size=100", "--wandb=off", "--trainer.max_epochs=1",
                       "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra])


@pytest.mark.parametrize("where", MANIFOLDS)
def test_train_and_evaluate_a_network_and_a_clustered_kernel_flow(tmp_path, where):
    torch.set_num_threads(1)
    net = _train(tmp_path, "net", *MANIFOLDS[where], "--model.width=8", "--model.depth=1", "--model.head=phifs",
                 "--model.activation=gelu", "--model.features=invariant")
    s = json.loads((tmp_path / "net" / "summary.json").read_text())
    assert s["manifold"]["name"] == where and s["ntk_drift"] is not None and s["ricci_measure_val"] > 0
    assert net.lightning_module.surface.dim == 3
    _train(tmp_path, "kernel", *MANIFOLDS[where], "--data.n_clusters=2",
           "--data.cluster_batch_size=200", "--model.steps_per_batch=3", "--model.lr=0.01",
           config="conf/kernel_gaussian.yaml")
    k = json.loads((tmp_path / "kernel" / "summary.json").read_text())
    assert k["gain"]["train"] > 1  # the frozen flow fits its train points
    out = tmp_path / "ev"
    ckpts = [str(tmp_path / r / "checkpoints" / "last.ckpt") for r in ("net", "kernel")]
    assert run(evaluate_cli.main, "evaluate.py", ["--ckpt_path", *ckpts, "--out_dir", str(out), "--n_test", "200",
                                                    "--n_noise", "50", "--ricci_points", "10", "--mode", "both",
                                                    "--noise_levels", "1e-4", "--distances", "0.05", "--quiet"]) == 0
    rep = json.loads((out / "eval.json").read_text())
    for r in rep["checkpoints"]:
        assert r["manifold"]["name"] == where and r["test"]["n"] == 200
        onx = r["noised"]["manifold"][0]
        assert onx["n"] > 0 and abs(onx["distance_to_train"]["mean"] / 0.05 - 1) < 0.1


def test_every_head_and_loss_trains_on_the_bicubic(tmp_path):
    """One optimizer step of every head with every loss term switched on, and a moduli family."""
    X = manifold("bicubic", kahler=(1.0, 1.7))
    P = sample(X, 64, 0)
    batch = P.as_batch()
    for head in HEADS:
        model = MetricModel(X, head=head, depth=1, width=8, activation="gelu", out_scale=0.01)
        total, parts = losses.total_loss(model, batch, torch.tensor(0.3), {k: 1.0 for k in losses.LOSSES})
        total.backward()
        assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values()), head
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), head
    fam = _train(tmp_path, "family", "--model.width=8", "--model.depth=1", config="conf/bicubic_family.yaml")
    s = json.loads((tmp_path / "family" / "summary.json").read_text())
    assert fam.lightning_module.model.moduli_input and s["gain"]["train"] > 0


def test_family_network_input_and_kappa_of_the_class(tmp_path):
    """A moduli family: each point's g_FS is that of its own t, its kappa that class's (eq. B.10 on the train
    split at that t), and the network sees t (changing t changes g beyond g_FS)."""
    from mflow.data.datamodule import CYDataModule
    from mflow.geometry import volume
    from mflow.geometry.points import cy_points

    dm = CYDataModule("bicubic", kahler_range=[[1.0, 1.0], [0.5, 2.0]], n_points=3000, cache=False)
    dm.setup()
    b = dm.batch_of("val")
    t = b["kahler"]
    assert float(t[:, 0].min()) == 1.0 and 0.5 <= float(t[:, 1].min()) < float(t[:, 1].max()) <= 2.0
    i = int(t[:, 1].argmax())
    one = cy_points(dm.surface.with_kahler(tuple(t[i].tolist())), dm.val.z[i : i + 1], drop_ties=False)
    assert torch.allclose(b["g_fs"][i], one.g_fs[0], atol=1e-13)
    at_t = cy_points(dm.surface.with_kahler(tuple(t[i].tolist())), dm.train.z, drop_ties=False)
    k = volume.kappa(at_t.weights, volume.real_det(at_t.g_fs), at_t.omega_sq)
    assert float(b["kappa"][i]) == pytest.approx(float(k), rel=1e-9)
    model = MetricModel(dm.surface, head="phifs", depth=1, width=8, activation="gelu", moduli_input=True, out_scale=1.0)
    p = dm.val[:4]
    g1 = model(p.z, p.patch, p.elim, kahler=torch.tensor([1.0, 1.0]))
    g2 = model(p.z, p.patch, p.elim, kahler=torch.tensor([1.0, 1.5]))
    fs1 = model(p.z, p.patch, p.elim, kahler=torch.tensor([1.0, 1.0])) - model.ddbar_phi(p.z, p.pullback, torch.tensor([1.0, 1.0]))
    assert not torch.allclose(g2 - g1, 0.5 * (fs1 - fs1) + (g2 - g1).mean() * 0)  # g moves with t
    with pytest.raises(ValueError, match="moduli_input"):
        _train(tmp_path, "bad", "--data.manifold=bicubic", "--data.kahler_range=[[1, 1], [0.5, 2]]")


def test_metric_ntk_methods_agree_on_a_complete_intersection():
    X = manifold("two_cubics", psi=0.5)
    P = sample(X, 12, 3)
    for head in ("multfs", "phifs"):  # structured: for heads whose g is not a derivative of the net
        model = MetricModel(X, head=head, depth=2, width=8, activation="gelu", out_scale=0.1)
        methods = ("jacobian", "vp", "structured") if head == "multfs" else ("jacobian", "vp")
        K = {m: metric_ntk(model, P, kind="full", method=m) for m in methods}
        assert all(torch.allclose(K["jacobian"], K[m], atol=1e-12) for m in methods), head


def test_on_manifold_noise_moves_along_the_product_geodesic():
    X = manifold("tetraquadric", kahler=(1.0, 2.0, 0.5, 1.5))
    P = sample(X, 200, 5)
    out = noise.manifold_noised(X, P, 0.1, torch.Generator().manual_seed(0))
    assert out.dropped < 10 and float(out.residual.max()) < 1e-10
    d = distance.fs_distance(P.z[out.origin], out.points.z, X)
    assert torch.allclose(d, out.offset) and float((d / 0.1 - 1).abs().max()) < 0.1


def test_pd_policy_continue_trains_through_non_positive_definite_points(tmp_path):
    """addfs with out_scale 1 is not positive definite at many points from the first step: pd_policy=stop (the
    default) stops with a message naming the option, pd_policy=continue trains and reports them."""
    args = ["--model.head=addfs", "--model.out_scale=1.0", "--model.width=8", "--model.depth=1"]
    with pytest.raises(Exception, match="pd_policy=continue"):
        _train(tmp_path, "stop", *args)
    _train(tmp_path, "continue", *args, "--model.pd_policy=continue")
    s = json.loads((tmp_path / "continue" / "summary.json").read_text())
    assert s["not_positive_definite"]["val"] > 0 and s["model"]["pd_policy"] == "continue"
    with pytest.raises(ValueError, match="pd_policy must be one of stop, continue; got 'sometimes'"):
        _train(tmp_path, "bad", "--model.pd_policy=sometimes")
    with pytest.raises(ValueError, match="pd_policy 'raise' is now called 'stop'"):
        _train(tmp_path, "old", "--model.pd_policy=raise")


def test_ambient_forms_do_not_depend_on_the_chart_in_a_product():
    """F^H G F (the kernel flow's ambient form) is the same whichever chart G is written in: every factor's phase is
    fixed by the frame (mflow.geometry.forms.ambient_frame), and F F^H = g_FS."""
    from mflow.geometry import charts, forms

    X = manifold("bicubic", kahler=(1.0, 1.7))
    P = sample(X, 200, 1)
    patch2 = charts.choose_patch(X, P.z, rank=1)
    z2 = charts.to_patch(X, P.z, patch2)
    elim2 = charts.choose_elim(X, X.gradient(z2), patch2)
    J2 = charts.pullback(X, X.gradient(z2), patch2, elim2)
    G1 = torch.randn(200, 3, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    G1 = G1 + G1.conj().transpose(-1, -2)
    G2 = forms.gradient_to_chart(forms.chart_change(X, P.z, P.patch, P.elim, patch2, elim2), G1)
    F1, F2 = forms.ambient_frame(X, P.z, P.pullback), forms.ambient_frame(X, z2, J2)
    assert torch.allclose(forms.gradient_to_ambient(F1, G1), forms.gradient_to_ambient(F2, G2), atol=1e-12)
    assert torch.allclose(F1 @ F1.conj().transpose(-1, -2), P.g_fs, atol=1e-13)


def test_presets_defaults_from_a_config():
    """psi None is each preset's own default (two_cubics is singular at psi = 0)."""
    from mflow.geometry.presets import surface_from_args

    assert surface_from_args("two_cubics").params["psi"] == [0.5, 0.0]
    assert surface_from_args("dwork").params["psi"] == [0.0, 0.0]
    assert surface_from_args("bicubic", kahler=[1, 2]).kahler == (1.0, 2.0)
