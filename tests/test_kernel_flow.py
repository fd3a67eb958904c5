"""Frozen-kernel metric flows (mflow.flows.kernel, mflow.flows.kernel_module, mflow.data.clustered): eq. 2.12 against dense references,
chart handling, prediction, PD policies, checkpoints, bad input, DDP."""
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from mflow import losses
from mflow.data.clustered import ClusterBatchSampler, ClusteredDataModule, cluster_points
from mflow.data.clustering import check_labels
from mflow.geometry import charts, volume
from mflow.geometry.distance import nearest_neighbours
from mflow.geometry.presets import manifold
from mflow.geometry.points import sample
from mflow.callbacks import NTKDrift
from mflow.flows import FrozenKernelFlow, KernelFlow
from mflow.flows.checkpoint import seal
from mflow.geometry.forms import (
    NotPositiveDefiniteError,
    ambient_frame,
    chart_change,
    chart_frame,
    dagger,
    form_to_chart,
    gradient_to_ambient,
    gradient_to_chart,
    hermitian_part,
    pairing,
)
from mflow.kernels import Kernel
from mflow.kernels.registry import kernel as make_kernel
from mflow.models.metric import hermitian, invariant_features
from mflow.ntk import metric_ntk, real_components

ROOT = Path(__file__).resolve().parent.parent
GAUSS = {"sigma": 0.3}


@pytest.fixture(scope="module")
def pts(quintic):
    return sample(quintic, 90, seed=11)


@pytest.fixture(scope="module")
def split(pts):
    train, test = pts[:60], pts[60:]
    kappa = float(volume.kappa(train.weights, volume.real_det(train.g_fs), train.omega_sq))
    return train, test, kappa


QUINTIC = manifold("fermat_quintic")


def flow(train, kappa, labels=None, kernel="gaussian", kernel_params=None, **kw):
    params = (GAUSS if kernel == "gaussian" else {}) if kernel_params is None else kernel_params
    return FrozenKernelFlow(QUINTIC, make_kernel(kernel, QUINTIC, **params), **kw).attach(train, kappa, labels)


def second_chart(surface, z):
    """For each point, the chart of its second-largest coordinate (another valid chart at the same point)."""
    patch2 = charts.choose_patch(surface, z, rank=1)
    z2 = charts.to_patch(surface, z, patch2)
    return patch2, charts.choose_elim(surface, surface.gradient(z2), patch2)


def sigma_grad(points, g, kappa):
    g = g.clone().requires_grad_(True)
    loss = losses.sigma_loss(g, {"weights": points.weights, "omega_sq": points.omega_sq}, torch.tensor(kappa, dtype=torch.float64))
    return hermitian_part(torch.autograd.grad(loss, g)[0])


# ----------------------------------------------------------------------------- dense references
def dense_update(surface, points, G, K, mode):
    """sum_b K_ab G~_ab, all pairs at once (no loop over points): the reference for eq. 2.12."""
    n, m = len(points), G.shape[-1]
    a, b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if mode == "transform":  # the correction G(x_b) moved into the chart of x_a as a form, at x_b
        T = chart_change(surface, points.z[b], points.patch[b], points.elim[b], points.patch[a], points.elim[a])
        Gt = form_to_chart(T, G[b]).reshape(n, n, m, m)
        return torch.einsum("ab,abij->aij", K.to(Gt.dtype), Gt)
    if mode == "ambient":  # E_ab = F(x_a) F(x_b)^H
        F = ambient_frame(surface, points.z, points.pullback)
        E = (F[a] @ dagger(F[b])).reshape(n, n, m, m)
        return torch.einsum("ab,abij,bjk,ablk->ail", K.to(E.dtype), E, G, E.conj())
    return torch.einsum("ab,bij->aij", K.to(G.dtype), G)  # literal: components added as they are


EMPIRICAL = {"depth": 1, "width": 32, "sigma_w": 1.2, "sigma_b": 0.1, "seed": 3}


@pytest.mark.parametrize("mode", ["ambient", "transform"])
@pytest.mark.parametrize("cache_mb", [0.0, 64.0])
@pytest.mark.parametrize("name,params", [("gaussian", GAUSS), ("empirical", EMPIRICAL)], ids=["gaussian", "empirical"])
def test_one_step_is_eq_2_12_dense(quintic, split, mode, cache_mb, name, params):
    train, _, kappa = split
    lr = 1e-4 if name == "gaussian" else 1e-6  # the empirical NTK is ~100x larger
    f = flow(train, kappa, kernel=name, kernel_params=params, chart_mode=mode, lr=lr, block=16, cache_mb=cache_mb,
             pd_policy="backtrack", max_backtracks=80)
    K = make_kernel(name, **params).matrix(train)
    G = sigma_grad(train, train.g_fs, kappa)
    U = dense_update(quintic, train, G, K, mode)
    assert torch.allclose(f._update(torch.arange(60), torch.arange(60), G, None, shard=False), U, rtol=1e-10, atol=1e-12)
    info = f.flow_step()
    # transform mode: a correction moved to the chart of a distant x can be ~1e15 x larger (|T| up to ~6e7 on
    # these points, where x's chart is degenerate at x'), so even lr = 1e-4 needs backtracking; ambient mode does not
    assert (info["scale"] == 1.0) == (mode == "ambient")
    want = train.g_fs - lr * info["scale"] * U
    assert torch.allclose(f.metric, want, rtol=1e-10, atol=1e-13)
    assert torch.allclose(f.coeff, lr * info["scale"] * G, rtol=1e-10, atol=1e-17)
    # the kernel expansion reproduces the state at the train points
    g_pred = f.kernel_sum(f.rows(torch.arange(f.n_train)), f.rows(torch.arange(f.n_train)), f.coeff)
    assert torch.allclose(train.g_fs - g_pred, f.metric, rtol=1e-10, atol=1e-13)


def test_reject_mode_keeps_one_chart_and_adds_components(quintic, pts):
    kappa = float(volume.kappa(pts.weights, volume.real_det(pts.g_fs), pts.omega_sq))
    f = flow(pts, kappa, chart_mode="reject", lr=1e-4)
    cid = charts.chart_id(quintic, pts.patch, pts.elim)
    ids, counts = torch.unique(cid, return_counts=True)
    kept = pts[cid == ids[counts.argmax()]]
    assert f.n_train == int(counts.max()) and torch.equal(f.train_z, kept.z)
    assert (f.row_of >= 0).sum() == f.n_train
    f.flow_step()
    K = make_kernel("gaussian", **GAUSS).matrix(kept)
    G = sigma_grad(kept, kept.g_fs, kappa)
    assert torch.allclose(f.metric, kept.g_fs - 1e-4 * dense_update(quintic, kept, G, K, "reject"), rtol=1e-10, atol=1e-13)
    # a point of another chart gets the reference-chart prediction transformed as a form
    other = pts[cid != ids[counts.argmax()]][:5]
    ref = f.ref_chart
    z_ref, J_ref = chart_frame(quintic, other.z, ref[0].expand(5), ref[1].expand(5))
    S_ref = (make_kernel("gaussian", **GAUSS).matrix(z_ref, kept.z).to(torch.complex128)[:, :, None, None] * f.coeff).sum(1)
    T = chart_change(quintic, other.z, ref[0].expand(5), ref[1].expand(5), other.patch, other.elim)
    assert torch.allclose(f.predict_metric(other), other.g_fs - form_to_chart(T, S_ref), rtol=1e-9, atol=1e-13)


def test_unclustered_blocked_apply_equals_dense_and_never_builds_the_matrix(quintic, split, monkeypatch):
    train, test, kappa = split
    f = flow(train, kappa, lr=1e-4, block=7, cache_mb=0.0)
    monkeypatch.setattr(type(f.kernel), "matrix", lambda *a, **k: pytest.fail("cache_mb=0 must not build K"))
    rows = torch.arange(0, 60, 3)  # a mini batch B: every train point is updated from B
    f.flow_step(rows)
    K = make_kernel("gaussian", **GAUSS).block(train, train[rows])
    G = sigma_grad(train[rows], train.g_fs[rows], kappa)
    F = ambient_frame(quintic, train.z, train.pullback)
    E = F[:, None] @ dagger(F[rows])[None]
    want = train.g_fs - 1e-4 * torch.einsum("ab,abij,bjk,ablk->ail", K.to(E.dtype), E, G, E.conj())
    assert torch.allclose(f.metric, want, rtol=1e-10, atol=1e-13)
    # prediction at new points: g_FS - sum_x' k C~, blocked, equals the dense sum
    Kt = make_kernel("gaussian", **GAUSS).block(test, train)
    Ft = ambient_frame(quintic, test.z, test.pullback)
    Et = Ft[:, None] @ dagger(F)[None]
    pred = test.g_fs - torch.einsum("ab,abij,bjk,ablk->ail", Kt.to(Et.dtype), Et, f.coeff, Et.conj())
    assert torch.allclose(f.predict_metric(test), pred, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("mode", ["ambient", "transform"])
def test_delta_kernel_predicts_the_nearest_train_points_update(quintic, split, mode):
    train, test, kappa = split
    f = flow(train, kappa, kernel="delta", chart_mode=mode, lr=0.05)
    for _ in range(3):
        f.flow_step()
    assert torch.allclose(f.predict_metric(train, use_state=False), f.metric)
    _, nn = nearest_neighbours(test.z, train.z)
    C = f.coeff[nn]
    if mode == "ambient":
        E = ambient_frame(quintic, test.z, test.pullback) @ dagger(ambient_frame(quintic, train.z[nn], train.pullback[nn]))
        upd = E @ C @ dagger(E)
    else:
        T = chart_change(quintic, train.z[nn], train.patch[nn], train.elim[nn], test.patch, test.elim)
        upd = form_to_chart(T, C)
    assert torch.allclose(f.predict_metric(test), test.g_fs - upd, rtol=1e-10, atol=1e-14)
    # on the train set the Delta kernel is the identity: each point flows on its own gradient
    g = f.metric.clone()
    G = sigma_grad(train, g, kappa)
    f.flow_step()
    assert torch.allclose(f.metric, g - 0.05 * (G if mode == "transform" else train.g_fs @ G @ train.g_fs), rtol=1e-10, atol=1e-14)


def test_clustered_flow_updates_one_cluster_and_predicts_from_the_nearest_cluster(quintic, split):
    train, test, kappa = split
    labels = cluster_points(train, quintic, 3, 60, seed=0)
    f = flow(train, kappa, labels, lr=1e-3)
    rows = (labels == 1).nonzero().flatten()
    f.flow_step(rows)
    untouched = labels != 1
    assert torch.equal(f.metric[untouched], train.g_fs[untouched])
    K = make_kernel("gaussian", **GAUSS).matrix(train[rows])
    G = sigma_grad(train[rows], train.g_fs[rows], kappa)
    want = train.g_fs[rows] - 1e-3 * dense_update(quintic, train[rows], G, K, "ambient")
    assert torch.allclose(f.metric[rows], want, rtol=1e-10, atol=1e-13)
    _, nn = nearest_neighbours(test.z, train.z)
    in1 = labels[nn] == 1
    assert torch.equal(f.predict_metric(test)[~in1], test.g_fs[~in1])
    assert not torch.allclose(f.predict_metric(test)[in1], test.g_fs[in1])
    assert torch.allclose(f.predict_metric(train, use_state=False), f.metric, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("clustered", [False, True], ids=["unclustered", "clustered"])
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalized"])
@pytest.mark.parametrize("mode", ["ambient", "transform", "reject"])
def test_the_kernel_expansion_at_the_train_points_is_the_flowed_state(split, clustered, normalize, mode):
    """g_FS - sum k C at the train points, by the kernel (use_state=False), equals the state the steps built; the
    shortcut that returns the state for exactly the train points is checked against it."""
    train, _, kappa = split
    labels = cluster_points(train, QUINTIC, 3, 60, seed=0) if clustered else None
    f = flow(train, kappa, labels, lr=1e-6 if mode == "transform" else 1e-3, normalize=normalize, chart_mode=mode,
             max_backtracks=80)
    for _ in range(3):
        f.flow_step()
    kept = train[f.row_of >= 0]
    assert not torch.allclose(f.metric, kept.g_fs, rtol=1e-6, atol=0)  # the flow moved
    expanded = f.predict_metric(kept, use_state=False)
    assert torch.allclose(expanded, f.metric, rtol=1e-9, atol=1e-13)
    assert torch.equal(f.predict_metric(kept), f.metric)


# ----------------------------------------------------------------------------- charts
def test_gradient_moves_contragrediently_pairing_is_chart_invariant(quintic, pts):
    patch2, elim2 = second_chart(quintic, pts.z)
    T = chart_change(quintic, pts.z, pts.patch, pts.elim, patch2, elim2)
    z2, J2 = chart_frame(quintic, pts.z, patch2, elim2)
    assert torch.allclose(form_to_chart(T, pts.g_fs), charts.pull_back(J2, charts.fs_metric(quintic, z2)), atol=1e-13)
    gen = torch.Generator().manual_seed(0)
    G = hermitian_part(torch.randn(len(pts), 3, 3, dtype=torch.complex128, generator=gen))
    dg = hermitian_part(torch.randn(len(pts), 3, 3, dtype=torch.complex128, generator=gen))
    assert torch.allclose(pairing(gradient_to_chart(T, G), form_to_chart(T, dg)), pairing(G, dg), rtol=1e-10, atol=1e-12)
    # and it is the gradient of the same loss written in the other chart: L(g_to) = L(T^-1 g_to T^-H)
    Ti = torch.linalg.inv(T)
    g_to = form_to_chart(T, pts.g_fs).requires_grad_(True)
    batch = {"weights": pts.weights, "omega_sq": pts.omega_sq}
    loss = losses.ultra_local_square(form_to_chart(Ti, g_to), batch, torch.tensor(0.0176, dtype=torch.float64))
    (G_to,) = torch.autograd.grad(loss, g_to)
    g_from = pts.g_fs.clone().requires_grad_(True)
    (G_from,) = torch.autograd.grad(losses.ultra_local_square(g_from, batch, torch.tensor(0.0176, dtype=torch.float64)), g_from)
    assert torch.allclose(G_to, gradient_to_chart(T, G_from), rtol=1e-9, atol=1e-9 * float(G_to.abs().max()))


def test_ambient_mode_is_chart_free(quintic, split):
    train, test, kappa = split
    patch2, elim2 = second_chart(quintic, test.z)
    T = chart_change(quintic, test.z, test.patch, test.elim, patch2, elim2)
    z2, J2 = chart_frame(quintic, test.z, patch2, elim2)
    F1, F2 = ambient_frame(quintic, test.z, test.pullback), ambient_frame(quintic, z2, J2)
    assert torch.allclose(F1 @ dagger(F1), test.g_fs, atol=1e-14)
    phase = (F2 * (T @ F1).conj()).sum((-1, -2)) / ((T @ F1).abs() ** 2).sum((-1, -2))
    assert torch.allclose(phase.abs(), torch.ones(len(test), dtype=torch.float64))
    assert torch.allclose(F2, phase[:, None, None] * (T @ F1), atol=1e-13)
    G = sigma_grad(test, test.g_fs, kappa)
    assert torch.allclose(gradient_to_ambient(F1, G), gradient_to_ambient(F2, gradient_to_chart(T, G)), atol=1e-12)
    # the flow's prediction at a point written in another chart is the same form, transformed
    f = flow(train, kappa, lr=1e-3)
    f.flow_step()
    d1 = {"z": test.z, "patch": test.patch, "elim": test.elim, "pullback": test.pullback, "g_fs": test.g_fs}
    d2 = {"z": z2, "patch": patch2, "elim": elim2, "pullback": J2, "g_fs": form_to_chart(T, test.g_fs)}
    assert torch.allclose(f.predict_metric(d2), form_to_chart(T, f.predict_metric(d1)), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- positive definiteness
def test_pd_policies(split):
    train, _, kappa = split
    big = 1e4
    f = flow(train, kappa, kernel="delta", lr=big, chart_mode="transform", pd_policy="stop")
    with pytest.raises(NotPositiveDefiniteError, match="pd_policy=stop"):
        f.flow_step()
    assert torch.equal(f.metric, train.g_fs) and int(f.flow_steps) == 0  # nothing applied

    f = flow(train, kappa, kernel="delta", lr=big, chart_mode="transform", pd_policy="backtrack")
    info = f.flow_step()
    assert 0 < info["scale"] < 1 and info["backtracks"] == int(f.pd_counts[0]) > 0
    assert not torch.equal(f.metric, train.g_fs)
    assert (torch.linalg.eigvalsh(f.metric) > 0).all()
    G = sigma_grad(train, train.g_fs, kappa)
    assert torch.allclose(f.metric, train.g_fs - big * info["scale"] * G)

    f = flow(train, kappa, kernel="delta", lr=big, chart_mode="transform", pd_policy="backtrack", max_backtracks=2)
    with pytest.raises(NotPositiveDefiniteError, match="halving the step 2 times"):
        f.flow_step()

    lr = big  # the points with eta > 1 go non-PD, those with eta < 1 do not
    f = flow(train, kappa, kernel="delta", lr=lr, chart_mode="transform", pd_policy="clip")
    trial = train.g_fs - lr * G
    bad = torch.linalg.cholesky_ex(trial)[1] != 0
    assert 0 < bad.sum() < len(bad)
    info = f.flow_step()
    assert info["clipped"] == int(bad.sum()) == int(f.pd_counts[1]) and info["skipped"] == 0
    assert torch.equal(f.metric[bad], train.g_fs[bad])  # skipped there
    assert torch.allclose(f.metric[~bad], trial[~bad])
    assert torch.equal(f.coeff[bad], torch.zeros_like(f.coeff[bad]))  # consistent with predictions
    assert torch.allclose(f.predict_metric(train[:59])[~bad[:59]], trial[:59][~bad[:59]])

    f = flow(train, kappa, kernel="delta", lr=lr, chart_mode="transform", pd_policy="continue")
    info = f.flow_step()  # the whole step, non-PD points and all, counted
    assert info["not_pd"] == int(bad.sum()) and info["scale"] == 1.0 and torch.allclose(f.metric, trial)


def test_one_pd_vocabulary():
    """One PDPolicy for every flow (mflow.flows.base): a flow refuses what it cannot do in one line; the old network
    value raise names its new name."""
    from mflow.choices import NETWORK_PD_POLICIES, NetworkPDPolicy
    from mflow.flows.base import PD_POLICIES, PDPolicy
    from mflow.flows.network import NetworkFlow

    assert PD_POLICIES == ("stop", "continue", "backtrack", "clip") and NETWORK_PD_POLICIES == ("stop", "continue")
    assert inspect.signature(KernelFlow).parameters["pd_policy"].annotation in (PDPolicy, "PDPolicy")
    assert inspect.signature(NetworkFlow).parameters["pd_policy"].annotation in (NetworkPDPolicy, "NetworkPDPolicy")
    X = manifold("fermat_quintic")
    assert NetworkFlow(X, width=4, pd_policy="continue").hparams.pd_policy == "continue"
    for policy in ("backtrack", "clip"):
        with pytest.raises(ValueError, match=f"cannot do pd_policy={policy}: it takes stop or continue"):
            NetworkFlow(X, width=4, pd_policy=policy)
    for cls in (NetworkFlow, KernelFlow):
        with pytest.raises(ValueError, match="pd_policy 'raise' is now called 'stop'.*pd_policy=stop"):
            cls(X, pd_policy="raise")
        with pytest.raises(ValueError, match="pd_policy must be one of stop, continue, backtrack, clip; got 'x'"):
            cls(X, pd_policy="x")


# ----------------------------------------------------------------------------- Lightning, checkpoints
def _dm(tmp_path, **kw):
    kw.setdefault("n_clusters", 2)
    kw.setdefault("cluster_batch_size", 40)
    return ClusteredDataModule(n_points=160, val_fraction=0.25, test_fraction=0.25, batch_size=32,
                               cache_dir=str(tmp_path / "data"), seed=5, **kw)


def _trainer(tmp_path, **kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(tmp_path), inference_mode=False, **kw)


def test_fit_validate_test_and_checkpoint_round_trip(tmp_path):
    dm = _dm(tmp_path)
    model = KernelFlow(QUINTIC, kernel="gaussian", kernel_params={"sigma": 0.05}, lr=0.03, reduction="sum", steps_per_batch=2)
    drift = NTKDrift()  # on in the network configs: a kernel flow has no network, so it only warns
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=False, callbacks=[drift])
    with pytest.warns(UserWarning, match="NTKDrift does nothing for KernelFlow"):
        trainer.fit(model, datamodule=dm)
    assert not drift.series and not (tmp_path / "ntk_drift.json").exists()
    assert int(model.flow.flow_steps) == 3 * 2 * 2  # epochs x clusters x steps per batch
    m = trainer.callback_metrics
    assert m["train/gain"] > 1.5 and float(m["val/sigma"]) > 0 and "val/gain" in m
    (res,) = trainer.test(model, datamodule=dm, verbose=False)
    assert res["test/sigma"] == pytest.approx(float(model.sigma_on(dm.test)), rel=1e-9)
    # gain = sigma_FS / sigma (the paper's, everywhere); sigma_init / sigma is reduction_from_init
    assert float(m["val/gain"]) == pytest.approx(float(dm.val.sigma()) / float(m["val/sigma"]), rel=1e-9)
    assert res["test/gain"] == pytest.approx(float(dm.test.sigma()) / res["test/sigma"], rel=1e-9)
    assert float(m["train/gain"]) == pytest.approx(float(dm.train.sigma()) / float(m["train/sigma"]), rel=1e-9)
    ckpt = tmp_path / "flow.ckpt"
    trainer.save_checkpoint(ckpt)
    meta = torch.load(ckpt, weights_only=False)["mflow"]
    assert meta["kind"] == "kernel_flow" and meta["kernel_params"] == {"sigma": 0.05}
    back = KernelFlow.load_from_checkpoint(ckpt)
    assert back.flow.n_train == model.flow.n_train and bool(back.flow.clustered)
    for split in (dm.train, dm.val, dm.test):
        assert torch.equal(back.predict_metric(split), model.predict_metric(split))
    # resuming the fit continues the flow from the checkpoint
    model2 = KernelFlow(QUINTIC, kernel="gaussian", kernel_params={"sigma": 0.05}, lr=0.03, reduction="sum", steps_per_batch=2)
    _trainer(tmp_path, max_epochs=4, enable_checkpointing=False).fit(model2, datamodule=dm, ckpt_path=ckpt)
    assert int(model2.flow.flow_steps) == 16
    # checkpoints of another kind / kernel are refused
    bad = torch.load(ckpt, weights_only=False)
    bad["mflow"]["kind"] = "network"
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="corrupt"):  # changed content: the checksum no longer matches
        KernelFlow.load_from_checkpoint(tmp_path / "bad.ckpt")
    torch.save(seal(bad), tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="not a 'kernel_flow' one"):
        KernelFlow.load_from_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="kernel, params, chart_mode"):
        KernelFlow.load_from_checkpoint(ckpt, kernel_params={"sigma": 0.1})


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_clear_errors(quintic, split, tmp_path):
    train, _, kappa = split
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        KernelFlow(QUINTIC, kernel="gaussian", kernel_params={"sigma": -1.0})
    with pytest.raises(ValueError, match="sigma_w"):
        KernelFlow(QUINTIC, kernel="relu", kernel_params={"depth": 1, "sigma_w": 0.0})
    with pytest.raises(ValueError, match="bad kernel_params"):
        KernelFlow(QUINTIC, kernel="gaussian", kernel_params={"width": 1.0})
    with pytest.raises(ValueError, match="unknown kernel"):
        KernelFlow(QUINTIC, kernel="laplace")
    with pytest.raises(ValueError, match="not a metric loss"):
        KernelFlow(QUINTIC, loss="ricci")
    for kw in ({"lr": -1.0}, {"lr_step_decay": 0.0}, {"chart_mode": "x"}, {"pd_policy": "x"}, {"block": 0}):
        with pytest.raises(ValueError):
            KernelFlow(QUINTIC, **kw)
    # an empty cluster
    labels = torch.zeros(len(train), dtype=torch.int64)
    labels[:30] = 2
    with pytest.raises(ValueError, match=r"cluster\(s\) \[1\] of 3 are empty"):
        check_labels(labels, len(train), 3)
    with pytest.raises(ValueError, match="are empty"):
        flow(train, kappa, labels)
    # points of another manifold: another P^n, or the same P^4 but another quintic
    k3 = sample(manifold("fermat_quartic"), 20, seed=0)
    with pytest.raises(ValueError, match="another manifold"):
        flow(k3, kappa)
    dwork = sample(manifold("dwork", psi=0.5), 20, seed=0)
    with pytest.raises(ValueError, match="not on fermat_quintic"):
        flow(dwork, kappa)
    with pytest.raises(ValueError, match="not on fermat_quintic"):
        cluster_points(dwork, quintic, 2, 20)
    # NaNs
    nan = train[:10]
    nan.weights = nan.weights.clone()
    nan.weights[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        flow(nan, kappa)
    with pytest.raises(ValueError, match="NaN"):
        cluster_points(nan, quintic, 2, 10)
    # datamodule arguments
    with pytest.raises(ValueError, match="n_clusters"):
        _dm(tmp_path, n_clusters=0)
    with pytest.raises(ValueError, match="merge"):
        _dm(tmp_path, merge="best")
    with pytest.raises(ValueError, match="exceeds cluster_batch_size = 10"):
        _dm(tmp_path, n_clusters=20, cluster_batch_size=10)
    with pytest.raises(ValueError, match="linkage"):
        _dm(tmp_path, linkage="single")
    dm = _dm(tmp_path, n_clusters=100, cluster_batch_size=200)
    with pytest.raises(ValueError, match="exceeds the 80 train points"):
        dm.setup()


def test_cluster_sampler_shares_clusters_out_without_repeats():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0, 1, 1, 0])
    one = [b.tolist() for b in ClusterBatchSampler(labels, 3, shuffle=True, seed=1)]
    assert sorted(map(tuple, one)) == [(0, 3, 7, 10), (1, 4, 8, 9), (2, 5, 6)]
    ranks = [[b.tolist() for b in ClusterBatchSampler(labels, 3, True, 1, num_replicas=2, rank=r)] for r in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2] and ranks[1][-1] == []  # padded with an empty batch
    assert sorted(map(tuple, [b for r in ranks for b in r if b])) == sorted(map(tuple, one))


# ----------------------------------------------------------------------------- DDP
DDP_SCRIPT = r'''
import sys, torch, lightning as L
from mflow.data.clustered import ClusteredDataModule
from mflow.data.datamodule import CYDataModule
from mflow.flows import KernelFlow
devices, cache, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
res = {}
for clustered in (True, False):
    kw = dict(n_points=200, val_fraction=0.25, test_fraction=0.25, batch_size=100 if clustered else 200, cache_dir=cache, seed=2)
    dm = ClusteredDataModule(n_clusters=3, cluster_batch_size=100, **kw) if clustered else CYDataModule(**kw)
    model = KernelFlow(dm.surface, kernel="gaussian", kernel_params={"sigma": 0.05}, lr=0.03, reduction="sum", cache_mb=0.0, block=16,
                       lr_step_decay=0.9)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=3,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        inference_mode=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    f = model.flow
    res[clustered] = {"metric": f.metric, "coeff": f.coeff, "steps": int(f.flow_steps), "pd": f.pd_counts.tolist(), "val_sigma": float(trainer.callback_metrics["val/sigma"])}
if trainer.is_global_zero:
    torch.save(res, out)
if torch.distributed.is_initialized():  # a process group left to interpreter exit can abort in gloo's threads
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
'''


def test_ddp_two_processes_match_one(tmp_path):
    """2 CPU processes (gloo) give the same flow as one: clusters shared out / kernel rows shared out (~15 s)."""
    script = tmp_path / "ddp_flow.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = {}
    for devices in (1, 2):
        out = tmp_path / f"out{devices}.pt"
        p = subprocess.run([sys.executable, str(script), str(devices), str(tmp_path / "data"), str(out)],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        res[devices] = torch.load(out)
    for clustered, steps in ((True, 9), (False, 3)):
        one, two = res[1][clustered], res[2][clustered]
        assert torch.allclose(one["metric"], two["metric"], rtol=1e-12, atol=1e-15)
        assert torch.allclose(one["coeff"], two["coeff"], rtol=1e-12, atol=1e-15)
        assert one["val_sigma"] == pytest.approx(two["val_sigma"], rel=1e-10)
        assert one["steps"] == two["steps"] == steps and one["pd"] == two["pd"]
        assert one["coeff"].abs().max() > 0


# ----------------------------------------------------------------------------- ambient mode is a metric-NTK flow
class FeatureKernel(Kernel):
    """k(x, x') = phi(x) . phi(x') for random cosine features of u u^H (a function on P^n, chart-independent)."""

    uses = "z"

    def __init__(self, n1: int, n_features: int = 40, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(n_features, n1 * n1, dtype=torch.float64, generator=g) * 2.0
        self.b = torch.rand(n_features, dtype=torch.float64, generator=g) * 2 * math.pi

    def phi(self, z):
        return torch.cos(invariant_features(z) @ self.W.T + self.b) / math.sqrt(len(self.b))

    def _block(self, za, zb):
        return self.phi(za) @ self.phi(zb).T


class AmbientFormModel(torch.nn.Module):
    """g(x) = g_FS(x) + F(x) A(x) F(x)^H with A = sum_c a_c(x) e_c, e_c an orthonormal basis of Hermitian
    (n+1)x(n+1) matrices (under Re tr(A^H B)) and a_c(x) = theta_c . phi(x) independent linear models, each of
    scalar kernel k = phi . phi': the model whose metric-NTK the ambient chart mode claims to flow with."""

    def __init__(self, surface, kernel: FeatureKernel):
        super().__init__()
        self.surface, self.kernel = surface, kernel
        n1 = surface.n_coords
        self.theta = torch.nn.Parameter(torch.zeros(n1 * n1, len(kernel.b), dtype=torch.float64))
        off = n1 * (n1 - 1) // 2
        scale = torch.cat([torch.ones(n1, dtype=torch.float64), torch.full((2 * off,), 2**-0.5, dtype=torch.float64)])
        self.register_buffer("scale", scale)

    def forward(self, z, patch, elim):
        J = charts.pullback(self.surface, self.surface.gradient(z), patch, elim)
        A = hermitian((self.kernel.phi(z) @ self.theta.T) * self.scale, z.shape[-1])
        F = ambient_frame(self.surface, z, J)
        return charts.pull_back(J, charts.fs_metric(self.surface, z)) + F @ A @ dagger(F)


def test_the_ambient_step_is_the_metric_ntk_flow_of_an_ambient_form_model(quintic, split):
    """eq. 2.12 with the model's own empirical metric-NTK (mflow.ntk.metric_ntk, Jacobian method), in the real
    components of g, equals one ambient-mode step of the frozen flow with the scalar kernel k."""
    train, _, kappa = split
    k = FeatureKernel(quintic.n_coords)
    model = AmbientFormModel(quintic, k)
    Theta = metric_ntk(model, train, kind="full", method="jacobian")  # [N, N, 9, 9]
    r = real_components(train.g_fs).clone().requires_grad_(True)  # dL/dr at g = g_FS
    batch = {"weights": train.weights, "omega_sq": train.omega_sq}
    (dLdr,) = torch.autograd.grad(losses.sigma_loss(hermitian(r, 3), batch, torch.tensor(kappa, dtype=torch.float64)), r)
    lr = 1e-2
    dr = -lr * torch.einsum("abik,bk->ai", Theta, dLdr)
    f = FrozenKernelFlow(quintic, k, lr=lr, chart_mode="ambient").attach(train, kappa)
    f.flow_step()
    assert torch.allclose(real_components(f.metric - train.g_fs), dr, rtol=1e-9, atol=1e-13)
    assert float(dr.abs().max()) > 1e-5 * float(train.g_fs.abs().max())  # a step that moved the metric


def test_the_rescaling_trick_is_reachable_from_a_config(quintic, split, tmp_path):
    """kernel: scaled (eq. 2.16): h(x) h(x') k(x, x') with h = det g_FS^p (eq. 2.28's volume factor) or w^p."""
    from mflow.cli.train import main

    train, _, _ = split
    base = make_kernel("gaussian", **GAUSS).matrix(train)
    for h, value in (("det_g_fs", volume.real_det(train.g_fs) ** -0.25), ("weight", train.weights**-0.25)):
        k = make_kernel("scaled", quintic, kernel="gaussian", kernel_params=GAUSS, h=h, power=-0.25)
        assert torch.allclose(k.matrix(train), value[:, None] * base * value[None, :], rtol=1e-12)
        assert torch.allclose(k.matrix(train.z), k.matrix(train), rtol=1e-12)  # from z alone, as the flow calls it
    trainer = main([
        "--config", str(ROOT / "conf" / "kernel_gaussian.yaml"), "--model.kernel=scaled",
        "--model.kernel_params={kernel: gaussian, kernel_params: {sigma: 30.0, inverse: true}, h: det_g_fs, power: -0.25}",
        "--data.n_points=400", "--trainer.fast_dev_run=1", "--wandb=off", f"--run_dir={tmp_path / 'run'}",
        f"--data.cache_dir={tmp_path / 'data'}",
    ])
    assert type(trainer.lightning_module.flow.kernel).__name__ == "Scaled" and trainer.state.finished
    with pytest.raises(ValueError, match="kernel 'scaled' takes"):
        KernelFlow(QUINTIC, kernel="scaled", kernel_params={"sigma": 1.0})


# ----------------------------------------------------------------------------- the network's own metric-NTK
def _network_checkpoint(module, path):
    import lightning

    ck = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0, "global_step": 0,
          "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(ck)
    torch.save(seal(ck), path)
    return path


def test_the_network_ntk_flow_of_a_linearized_model_is_its_sgd_trajectory(quintic, split, tmp_path):
    """eq. 2.10-2.12: SGD on the linearised network moves g by -lr Theta_0 dL/dr, with Theta_0 its metric-NTK; the
    frozen flow with kernel network_ntk (base: the network) of its checkpoint takes the same steps, and predicts the
    same metric at test points, to round-off."""
    from mflow.flows import NetworkFlow

    train, test, kappa = split
    module = NetworkFlow(QUINTIC, head="multfs", depth=2, width=16, activation="relu", out_scale=0.3, linearize=True,
                         optimizer="sgd", init_seed=3)
    ckpt = _network_checkpoint(module, tmp_path / "linearized.ckpt")
    model, lr, steps = module.model, 0.05, 3
    batch = train.as_batch()
    k = torch.tensor(kappa, dtype=torch.float64)
    for _ in range(steps):  # plain full-batch SGD on the sigma loss (NetworkFlow's training step with optimizer sgd)
        model.zero_grad()
        losses.sigma_loss(model(train.z, train.patch, train.elim), batch, k).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    with torch.no_grad():
        g_train, g_test = model(train.z, train.patch, train.elim), model(test.z, test.patch, test.elim)
    flow_module = KernelFlow(QUINTIC, kernel="network_ntk", kernel_params={"checkpoint": str(ckpt), "base": "network"}, lr=lr,
                             reduction="mean", pd_policy="stop")
    f = flow_module.flow.attach(train, kappa)
    for _ in range(steps):
        f.flow_step()
    assert not torch.allclose(g_train, f.base_metric(train.as_batch()), rtol=1e-6, atol=0)  # the steps moved g
    assert torch.allclose(f.metric, g_train, rtol=1e-9, atol=1e-13)
    assert torch.allclose(f.predict_metric(test), g_test, rtol=1e-9, atol=1e-13)
    # base fs: the same corrections, added to g_FS (the after kernel's flow)
    fs = KernelFlow(QUINTIC, kernel="network_ntk", kernel_params={"checkpoint": str(ckpt)}, lr=lr).flow.attach(train, kappa)
    assert torch.equal(fs.metric, train.g_fs)
    # a kernel flow checkpoint refuses a network checkpoint that changed since
    ck = {"state_dict": flow_module.state_dict(), "hyper_parameters": dict(flow_module.hparams)}
    flow_module.on_save_checkpoint(ck)
    _network_checkpoint(NetworkFlow(QUINTIC, head="multfs", depth=2, width=16, activation="relu", linearize=True, init_seed=4), ckpt)
    with pytest.raises(ValueError, match="has changed"):
        KernelFlow(QUINTIC, kernel="network_ntk", kernel_params={"checkpoint": str(ckpt), "base": "network"}).on_load_checkpoint(ck)


def test_the_network_ntk_kernel_runs_from_the_command_line(tmp_path):
    from mflow.cli.train import main
    from mflow.flows import NetworkFlow

    ckpt = _network_checkpoint(NetworkFlow(QUINTIC, head="multfs", depth=2, width=8, init_seed=1), tmp_path / "net.ckpt")
    trainer = main([
        "--config", str(ROOT / "conf" / "kernel_gaussian.yaml"), "--model.kernel=network_ntk",
        f"--model.kernel_params={{checkpoint: {ckpt}}}", "--model.normalize=false", "--model.lr=0.01",
        "--data.n_points=300", "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1", "--wandb=off",
        f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}",
    ])
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert type(trainer.lightning_module.flow.kernel).__name__ == "NetworkNTK" and s["gain"]["train"] > 1
