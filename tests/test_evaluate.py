"""evaluate.py (mflow.evaluation) and the noised test points (mflow.evaluation.noise), on tiny checkpoints."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mflow import evaluation
from mflow.evaluation import cli as evaluate_cli
from mflow.evaluation import noise
from mflow.evaluation.report import DEFAULT_SEED
from mflow.cli.errors import run
from mflow.cli.train import main as train_main
from mflow.data.pointset import save_pointset
from mflow.flows.checkpoint import seal
from mflow.flows.network import NetworkFlow
from mflow.geometry import volume
from mflow.geometry.distance import NearestIndex, fs_distance, fs_distance_matrix
from mflow.geometry.presets import manifold
from mflow.geometry.points import sample

def evaluate_py(args):
    """python evaluate.py ARGS, in-process: the exit status."""
    return run(evaluate_cli.main, "evaluate.py", args)


SMALL = ["--n_test", "300", "--n_noise", "120", "--n_distance", "300", "--ricci_points", "20", "--quiet",
         "--noise_levels", "1e-6", "1e-4", "1e-2", "--distances", "0.003", "0.03", "0.2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("tiny")
    train_main([
        f"--run_dir={d / 'run'}", f"--data.cache_dir={d / 'data'}", "--data.n_points=600", "--data.batch_size=64",
        "--wandb=off", "--trainer.max_epochs=1", "--model.width=8", "--model.depth=1", "--test=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])
    return d / "run" / "checkpoints" / "last.ckpt"


def _files(root: Path) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- the whole command
def test_eval_json_has_train_test_noised_sections_and_gains(tiny_ckpt, tmp_path):
    out = tmp_path / "ev"
    assert evaluate_py(["--ckpt_path", str(tiny_ckpt), "--out_dir", str(out), *SMALL]) == 0
    rep = json.loads((out / "eval.json").read_text())
    assert (out / "gain_vs_distance.png").stat().st_size > 1000
    (r,) = rep["checkpoints"]
    assert r["kind"] == "network" and r["manifold"]["name"] == "fermat_quintic"
    for s in ("train", "test"):
        assert r[s]["gain"] == pytest.approx(r[s]["sigma_fs"] / r[s]["sigma"])
        assert r[s]["ricci"]["model"] > 0 and r[s]["ricci"]["fs"] > 0
    assert r["train"]["n"] == 480 and r["test"]["n"] == 300 and r["test"]["seed"] == DEFAULT_SEED
    # one epoch on 480 points barely moves the metric from its initial value (near g_FS)
    assert 0.37 < r["test"]["sigma_fs"] < 0.4 and r["train"]["sigma"] == pytest.approx(r["train"]["sigma_fs"], rel=0.15)
    gauss, onx = r["noised"]["gaussian"], r["noised"]["manifold"]
    assert [e["variance"] for e in gauss] == [1e-6, 1e-4, 1e-2] and [e["distance"] for e in onx] == [0.003, 0.03, 0.2]
    for e in gauss + onx:
        assert e["n"] > 0 and e["gain"] == pytest.approx(e["sigma_fs"] / e["sigma"])
    dist = [e["distance_to_train"]["mean"] for e in gauss]
    assert dist[0] < dist[1] < dist[2]  # distance grows with the variance
    assert gauss[0]["residual"]["mean"] > 0  # the paper's points are only near X
    for e in onx:
        assert e["residual"]["max"] <= 1e-10 and e["dropped"] == 0
        assert abs(e["distance_to_origin"]["mean"] / e["distance"] - 1) < 0.1
        assert e["distance_to_train"]["mean"] <= e["distance_to_origin"]["mean"] + 1e-12
    assert r["test"]["distance_to_train"]["mean"] > dist[0]


def test_default_output_goes_next_to_the_checkpoint_and_target_gain_prints_n(tiny_ckpt, capsys):
    args = ["--ckpt_path", str(tiny_ckpt), *[a for a in SMALL if a != "--quiet"], "--mode", "gaussian", "--target_gain", "1.0", "--fit", "0.968", "-0.184"]
    assert evaluate_py(args) == 0
    rep = json.loads((tiny_ckpt.parent / "eval" / "eval.json").read_text())
    (need,) = rep["points_needed"]
    assert need["curve"] == "gaussian" and need["fit"] == {"a": 0.968, "b": -0.184}
    assert "points needed for test gain 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input: clear error, nothing written
def _variants(ckpt: Path, d: Path) -> dict:
    ck = torch.load(ckpt, weights_only=False)
    out = {"missing": (d / "nope.ckpt", "does not exist")}
    raw = ckpt.read_bytes()
    (d / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    out["corrupt"] = (d / "truncated.ckpt", "corrupt or")
    foreign = {k: v for k, v in ck.items() if k != "mflow"}
    torch.save(foreign, d / "foreign.ckpt")
    out["foreign"] = (d / "foreign.ckpt", "not an mflow checkpoint")
    newer = seal({**ck, "mflow": {**ck["mflow"], "format": 3}})
    torch.save(newer, d / "newer.ckpt")
    out["newer"] = (d / "newer.ckpt", "format 3")
    wrong = seal({**ck, "mflow": {**ck["mflow"], "surface": manifold("fermat_quartic").to_dict()}})
    torch.save(wrong, d / "wrong_manifold.ckpt")  # the manifold record is not the one of its fingerprint
    out["wrong_manifold"] = (d / "wrong_manifold.ckpt", "manifold record does not match its fingerprint")
    tampered = torch.load(ckpt, weights_only=False)
    w = tampered["state_dict"]["model.net.net.0.weight"]
    w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(math.inf, dtype=w.dtype))  # one weight off by one ulp
    torch.save(tampered, d / "tampered.ckpt")
    out["tampered"] = (d / "tampered.ckpt", "does not match its checksum")
    diverged = torch.load(ckpt, weights_only=False)
    diverged["state_dict"]["model.net.net.0.weight"][0, 0] = math.inf
    torch.save(seal(diverged), d / "diverged.ckpt")
    out["diverged"] = (d / "diverged.ckpt", "non-finite value in model.net.net.0.weight")
    return out


def test_bad_checkpoints_give_clear_errors_and_write_nothing(tiny_ckpt, tmp_path, capsys):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    cases = _variants(tiny_ckpt, bad_dir)
    before = _files(tmp_path) | _files(tiny_ckpt.parent.parent)
    for name, (path, message) in cases.items():
        with pytest.raises(evaluation.EvaluationError, match=message):
            evaluation.evaluate([path], tmp_path / "out", n_test=50, n_noise=10, quiet=True)
        # the command: exit status 2, the message on stderr; a good checkpoint beside a bad one changes nothing
        assert evaluate_py(["--ckpt_path", str(tiny_ckpt), str(path), "--out_dir", str(tmp_path / "out"), *SMALL]) == 2
        assert message in capsys.readouterr().err
    assert evaluate_py(["--ckpt_path", str(cases["foreign"][0]), *SMALL]) == 2  # default out dir: not created
    assert not (tmp_path / "out").exists() and not (bad_dir / "eval").exists()
    assert _files(tmp_path) | _files(tiny_ckpt.parent.parent) == before


def test_a_checkpoint_of_the_old_layout_still_loads(tiny_ckpt, tmp_path):
    """Format 1 (no checksum), the old class path, NetworkFlow's seed before it became init_seed: migrated in one
    place (mflow.flows.checkpoint), which evaluate.py and NetworkFlow.load_from_checkpoint both go through."""
    ck = torch.load(tiny_ckpt, weights_only=False)
    hp = {k: v for k, v in ck["hyper_parameters"].items() if k != "init_seed"}
    hp["_class_path"] = "mflow.modules.NetworkFlow"
    meta = {k: v for k, v in ck["mflow"].items() if k != "checksum"}
    old = tmp_path / "old.ckpt"
    torch.save({**ck, "hyper_parameters": {**hp, "seed": 0}, "mflow": {**meta, "format": 1}}, old)
    with pytest.warns(UserWarning, match="before mflow checkpoints carried checksums"):
        loaded = evaluation.load_checkpoint(old)
    assert loaded.module.hparams.init_seed == 0 and loaded.class_path == "mflow.flows.network.NetworkFlow"
    with pytest.warns(UserWarning, match="checksums"):
        direct = NetworkFlow.load_from_checkpoint(old)
    assert direct.hparams.init_seed == 0
    state = loaded.module.state_dict()
    assert all(torch.equal(v.cpu(), state[k]) for k, v in ck["state_dict"].items())


def test_test_points_of_another_manifold_are_refused(tiny_ckpt, tmp_path):
    quartic = manifold("fermat_quartic")
    save_pointset(tmp_path / "quartic.npz", sample(quartic, 200, 0), quartic, seed=0)
    before = _files(tmp_path)
    with pytest.raises(evaluation.EvaluationError, match="wrong manifold"):
        evaluation.evaluate([tiny_ckpt], tmp_path / "out", test_data=tmp_path / "quartic.npz", quiet=True)
    assert _files(tmp_path) == before
    with pytest.raises(evaluation.EvaluationError, match="data seed"):
        evaluation.evaluate([tiny_ckpt], tmp_path / "out", seed=0, quiet=True)  # the data seed: test = train data
    assert _files(tmp_path) == before
    quintic = manifold("fermat_quintic")  # points of the right manifold are used as given
    save_pointset(tmp_path / "quintic.npz", sample(quintic, 150, 9), quintic, seed=9)
    rep, _ = evaluation.evaluate([tiny_ckpt], tmp_path / "ok", test_data=tmp_path / "quintic.npz", n_noise=20,
                                 variances=(1e-4,), distances=(0.01,), ricci_points=0, quiet=True)
    assert rep["checkpoints"][0]["test"]["n"] == 150


# ----------------------------------------------------------------------------- kernel flows (common interface)
def test_a_kernel_flow_checkpoint_is_evaluated_from_its_own_train_points(tmp_path):
    from mflow.flows import KernelFlow

    torch.set_num_threads(1)
    s = manifold("fermat_quintic")
    train = sample(s, 200, 3)
    kappa = float(volume.kappa(train.weights, volume.real_det(train.g_fs), train.omega_sq))
    module = KernelFlow(s, kernel="delta", lr=0.03, reduction="sum")
    flow = module.flow.attach(train, kappa)
    for _ in range(8):
        flow.flow_step()
    ck = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0, "global_step": 5}
    module.on_save_checkpoint(ck)
    torch.save(seal(ck), tmp_path / "kernel.ckpt")
    rep, out = evaluation.evaluate([tmp_path / "kernel.ckpt"], tmp_path / "ev", n_test=200, n_noise=60,
                                   variances=(1e-8, 1e-2), distances=(0.01,), ricci_points=20, quiet=True)
    (r,) = rep["checkpoints"]
    assert r["kind"] == ck["mflow"]["kind"] and r["train"]["n"] == 200
    assert r["train"]["sigma"] == pytest.approx(float(flow.train_sigma()), rel=1e-9)
    assert r["train"]["gain"] > 3
    assert r["train"]["ricci"] is None and r["test"]["ricci"] is None  # no second derivatives
    g = r["noised"]["gaussian"]
    assert g[0]["gain"] > 3 > g[1]["gain"]  # the delta kernel helps only very near its train points
    assert (out / "eval.json").exists()


# ----------------------------------------------------------------------------- noised points
def test_on_manifold_points_satisfy_p_and_sit_at_the_requested_distance():
    torch.set_num_threads(1)
    for name, n in (("fermat_quintic", 300), ("fermat_quartic", 100)):
        s = manifold(name)
        train = sample(s, n, 1)
        for k, d in enumerate((1e-4, 1e-2, 0.1, 0.4)):
            pts = noise.manifold_noised(s, train, d, torch.Generator().manual_seed(k))
            assert pts.dropped == 0 and len(pts.points) == n
            assert float(s.residual(pts.points.z).max()) <= 1e-10
            ratio = fs_distance(train.z[pts.origin], pts.points.z) / d
            assert float((ratio - 1).abs().max()) <= 0.1
            assert torch.isfinite(pts.points.weights).all() and (pts.points.weights > 0).all()


def test_gaussian_noise_grows_with_variance_and_vanishes_at_zero():
    torch.set_num_threads(1)
    s = manifold("fermat_quintic")
    train = sample(s, 300, 2)
    same = noise.gaussian_noised(s, train, 0.0, torch.Generator().manual_seed(0))
    for f in ("omega_sq", "weights"):  # v = 0: the formulas off X reduce to those on X
        assert torch.allclose(getattr(same.points, f), getattr(train, f), rtol=1e-12)
    assert torch.allclose(same.points.g_fs, train.g_fs, rtol=1e-12) and float(same.offset.max()) < 1e-12
    dists = []
    for v in (1e-8, 1e-6, 1e-4, 1e-2):
        npts = noise.gaussian_noised(s, train, v, torch.Generator().manual_seed(1))
        dists.append(float(npts.offset.mean()))
        assert float(npts.residual.mean()) > 0
        kept = noise.gaussian_noised(s, train, v, torch.Generator().manual_seed(1), keep_chart=True)
        assert torch.equal(kept.points.patch, train.patch) and torch.equal(kept.points.elim, train.elim)
    assert all(a < b for a, b in zip(dists, dists[1:]))
    assert dists[1] == pytest.approx(1.6 * 1e-3, rel=0.3)  # about 1.6 sqrt(v) on the quintic


def test_nearest_index_is_exact_against_all_pairs():
    """The k-d tree (with and without the distance bound noised points give) against brute force over all pairs."""
    torch.set_num_threads(1)
    s = manifold("fermat_quintic")
    train, test = sample(s, 800, 4), sample(s, 200, 5)
    idx = NearestIndex(train.z)
    near = noise.gaussian_noised(s, train[:200], 1e-6, torch.Generator().manual_seed(0))
    for q, upper in ((test.z, None), (near.points.z, near.offset)):
        d, i = idx.query(q, upper=upper)
        full = fs_distance_matrix(q, train.z)
        assert torch.equal(i, full.argmin(1)) and torch.allclose(d, full.min(1).values, rtol=1e-9, atol=1e-15)
    self_d, other = idx.self_query()
    full = fs_distance_matrix(train.z) + torch.diag(torch.full((800,), 9.0, dtype=torch.float64))
    assert torch.equal(other, full.argmin(1)) and torch.allclose(self_d, full.min(1).values, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------- distance scaling and extrapolation
def test_power_law_fit_recovers_a_and_b():
    n = np.geomspace(1e3, 1e6, 12)
    rng = np.random.default_rng(0)
    y = 0.968 * n**-0.184 * np.exp(rng.normal(0, 1e-3, len(n)))
    a, b = evaluation.fit_power_law(n, y)
    assert a == pytest.approx(0.968, rel=0.02) and b == pytest.approx(-0.184, abs=2e-3)
    a, b = evaluation.fit_power_law([10, 100], [2.0, 0.2])
    assert a == pytest.approx(20.0) and b == pytest.approx(-1.0)


def test_distance_scaling_measures_and_fits():
    torch.set_num_threads(1)
    sc = evaluation.distance_scaling(manifold("fermat_quintic"), ns=(300, 600, 1200), seed=0, budget_s=30, log=lambda *a: None)
    rows = sc["rows"]
    assert [r["n"] for r in rows] == [300, 600, 1200]
    assert all(r["min"] <= r["mean"] <= r["max"] for r in rows) and rows[0]["mean"] > rows[-1]["mean"]
    assert -0.4 < sc["fit"]["b"] < -0.05 and sc["theory_exponent"] == pytest.approx(-1 / 6)


def test_points_needed_inverts_a_synthetic_curve():
    a, b = 0.968, -0.184
    C, s = 2.0, 1.5  # gain = C d^-s
    d = np.geomspace(1e-3, 0.5, 9)
    g = C * d**-s
    for target in (10.0, 1e3, 1e6, 3.0):  # inside the curve, and extrapolated beyond both ends
        e = evaluation.points_needed(d, g, target, a, b)
        d_star = (C / target) ** (1 / s)
        assert e["distance"] == pytest.approx(d_star, rel=1e-9)
        assert e["n_points"] == pytest.approx((d_star / a) ** (1 / b), rel=1e-8)
        assert e["extrapolated"] == (not d.min() <= d_star <= d.max())
        assert a * e["n_points"] ** b == pytest.approx(d_star, rel=1e-9)  # round trip
    flat = evaluation.points_needed(d, np.full_like(d, 2.0), 10.0, a, b)
    assert math.isinf(flat["n_points"])  # a curve that never rises cannot reach the target
    # unsorted input and the paper's examples (sec. 3.2): gain 100 at mean distance 5e-3 (Gaussian kernel) needs
    # ~1e12 points by eq. 3.6 (2.7e12); at 5e-2 (Delta kernel) eq. 3.6 gives 9.9e6 (the paper prints 1e8)
    e = evaluation.points_needed([0.5, 5e-3, 5e-4], [1.0, 100.0, 1e4], 100.0, a, b)
    assert e["distance"] == pytest.approx(5e-3) and 1e12 < e["n_points"] < 1e13
    e = evaluation.points_needed([5e-3, 0.5, 5e-2], [1e4, 1.0, 100.0], 100.0, a, b)
    assert e["distance"] == pytest.approx(5e-2) and 5e6 < e["n_points"] < 2e7


def test_results_are_logged_to_an_active_wandb_run(tiny_ckpt, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="mflow-test")
    try:
        rep, out = evaluation.evaluate([tiny_ckpt], tmp_path / "ev", n_test=100, n_noise=30, variances=(1e-4,),
                                       distances=(0.01,), ricci_points=0, quiet=True)
    finally:
        run.finish()
    assert rep["wandb"] is True and json.loads((out / "eval.json").read_text())["wandb"] is True
    # what the offline run holds: eval.json's figures under eval/<checkpoint>/..., and the figures as images
    (logged,) = wandb_history(next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")))
    (r,) = rep["checkpoints"]
    for s in ("train", "test"):
        for m in ("sigma", "sigma_fs", "gain"):
            assert logged[f"eval/0/{s}/{m}"] == pytest.approx(r[s][m], rel=1e-12), (s, m)
    (e,) = r["noised"]["gaussian"]
    assert logged[f"eval/0/gaussian/{e['variance']:g}/gain"] == pytest.approx(e["gain"], rel=1e-12)
    assert logged[f"eval/0/gaussian/{e['variance']:g}/distance"] == pytest.approx(e["distance_to_train"]["mean"])
    images = {k.rsplit("/", 1)[0] for k, v in logged.items() if k.endswith("/_type") and v == "image-file"}
    assert images and images == {f"eval/{p.stem}" for p in out.glob("*.png")}


def wandb_history(path, wait: float = 30.0) -> list[dict]:
    """The history rows of an offline W&B run file (run-<id>.wandb: a leveldb-style log of protobuf records), once
    its exit record is written (wandb's writer may finish just after run.finish() returns)."""
    import time

    t0 = time.monotonic()
    while True:
        rows, ended = _wandb_records(path)
        if ended or time.monotonic() - t0 > wait:
            return rows
        time.sleep(0.2)


def _wandb_records(path) -> tuple[list[dict], bool]:
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, ended = Path(path).read_bytes(), 32768, False
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1), "not a W&B run file"
    pos, buf, rows = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            if r.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
            ended = ended or r.WhichOneof("record_type") == "exit"
    return rows, ended


def test_a_one_chart_model_is_tested_on_its_population_and_warned_about_others(tmp_path):
    train_main([
        f"--run_dir={tmp_path / 'run'}", "--data.n_points=600", "--data.population=one_chart", "--data.batch_size=64",
        "--wandb=off", "--trainer.max_epochs=1", "--model.width=8", "--model.depth=1", "--test=false",
    ])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    kw = dict(n_test=200, n_noise=30, variances=(1e-4,), distances=(0.01,), ricci_points=0, quiet=True)
    rep, _ = evaluation.evaluate([ckpt], tmp_path / "same", **kw)
    (r,) = rep["checkpoints"]
    assert r["population"] == {"trained_on": "one_chart", "test": "one_chart"} and not rep["warnings"]
    assert r["noised"]["gaussian"][0]["chart_changed"] == 0.0  # noised one-chart points keep their chart
    rep, _ = evaluation.evaluate([ckpt], tmp_path / "all", population="all_charts", **kw)
    assert rep["checkpoints"][0]["population"]["test"] == "all_charts"
    assert "trained on one chart's points and is evaluated on points of all charts" in rep["warnings"][0]
