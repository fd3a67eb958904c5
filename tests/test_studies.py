"""The study scripts (studies/): the width study and the theory report run end to end on tiny settings,
write their JSON, table and PNG, and resume; their config is checked."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studies import theory, width  # noqa: E402

TINY = ["data.n_points=600", "data.batch_size=100", "trainer.max_epochs=1", "drift={n_probe: 8, every_n_steps: 2}"]


def test_width_study_runs_every_arm_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "study"
    args = ["--out_dir", str(out), "--widths", "8", "16", "--set", *TINY[:3]]
    cfg = width.load_config(ROOT / "conf" / "studies" / "width.yaml")
    cfg["drift"] = {"n_probe": 8, "every_n_steps": 2}
    cfg["early_drift_step"] = 2
    monkeypatch.setattr(width, "load_config", lambda path: json.loads(json.dumps(cfg)))
    a = width.main(args)
    assert set(a["test_gain"]) == {"network", "linearized", "frozen_ntk", "network_sgd", "lazy_sgd"}
    ok = [r for r in a["runs"] if "error" not in r]
    assert len(ok) >= 8 and all(r["gain"]["test"] > 0 for r in ok)
    drift = [r for r in ok if width.drifts(cfg, r["arm"])]
    assert set(a["drift"]) == {"network", "network_sgd", "lazy_sgd"} and {r["arm"] for r in drift} <= set(a["drift"])
    assert drift and all(r["ntk"]["relative_change"] > 0 and r["analytic_distance_init"] > 0 for r in drift)
    assert all(r["ntk"] is None for r in ok if not width.drifts(cfg, r["arm"]))
    for r in drift:  # the early drift is the series' value at step 2
        series = json.loads((out / f"w{r['width']}" / r["arm"] / "ntk_drift.json").read_text())["series"]
        assert r["drift_early"] == next(e["relative_change"] for e in series if e["step"] == 2) > 0
    assert "early drift: network" in (out / "width_study.md").read_text()
    assert (out / "width_study.png").stat().st_size > 1000 and "| 16 |" in (out / "width_study.md").read_text()
    saved = json.loads((out / "width_study.json").read_text())
    assert saved["widths"] == [8, 16] and len(saved["runs"]) == 10
    # a finished run is not rerun: the study resumes from the runs' summaries
    monkeypatch.setattr(width, "train", lambda *a, **k: pytest.fail("a finished run was rerun"))
    assert width.main(args)["test_gain"] == a["test_gain"]
    # runs made with other settings are refused, not mixed in
    with pytest.raises(SystemExit, match="other settings"):
        width.main(["--out_dir", str(out), "--widths", "8", "--set", "data.n_points=700", *TINY[1:3]])


def test_width_study_config_is_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("widths: [64, -1]\nargs: {}\narms: {network: {}}\n")
    with pytest.raises(ValueError, match="positive integers"):
        width.load_config(bad)
    bad.write_text("widths: [64]\nargs: {}\n")
    with pytest.raises(ValueError, match="needs the keys"):
        width.load_config(bad)
    with pytest.raises(SystemExit, match="unknown arms"):
        width.main(["--out_dir", str(tmp_path), "--arms", "kernel"])


def test_theory_report_quick(tmp_path):
    numbers = theory.main(["--out_dir", str(tmp_path), "--quick"])
    assert numbers["cosine_net_ntk"]["fit"]["exponent"] == pytest.approx(-0.5, abs=0.2)  # Monte Carlo ~ N^-1/2
    assert numbers["relu_metric_ntk_at_init"]["fit"]["exponent"] < -0.2
    assert numbers["local_limit"]["fit"]["exponent"] == pytest.approx(-2, abs=0.3)
    assert numbers["ricci_step"]["fs_relative_error"] < 1e-3
    assert numbers["lazy_ntk_drift"]["fit"]["exponent"] < -0.3  # the NTK moves less as width grows
    assert (tmp_path / "theory.png").stat().st_size > 1000


def test_width_study_records_a_failed_run_and_does_not_rerun_it(tmp_path, monkeypatch):
    from mflow.geometry.forms import NotPositiveDefiniteError

    def fail(args, callbacks=()):
        raise NotPositiveDefiniteError("the metric is not positive definite at 3 of 100 points (step 7)")

    monkeypatch.setattr(width, "train", fail)
    args = ["--out_dir", str(tmp_path), "--widths", "8", "--arms", "network"]
    a = width.main(args)
    assert a["test_gain"]["network"] == [None] and "positive definite" in a["runs"][0]["error"]
    assert (tmp_path / "w8" / "network" / "error.json").exists() and "failed" in (tmp_path / "width_study.md").read_text()
    monkeypatch.setattr(width, "train", lambda *a, **k: pytest.fail("a failed run was rerun"))
    assert width.main(args)["runs"][0]["error"] == a["runs"][0]["error"]


def test_after_kernel_study_runs_on_its_config_and_resumes(tmp_path, monkeypatch):
    """conf/studies/after_kernel.yaml with a tiny budget (its first network, one epoch, few points and flow steps);
    the network's test gains are recomputed from its checkpoints, the json and table hold the returned figures."""
    import yaml

    from mflow.data.pointset import sample_pointset
    from mflow.evaluation.checkpoints import load_checkpoint
    from studies import after_kernel

    c = yaml.safe_load((ROOT / "conf" / "studies" / "after_kernel.yaml").read_text())
    name, net = next(iter(c["networks"].items()))
    c["networks"] = {name: {**net, "epochs": [0, 1], "args": [
        "--data.n_points=600", "--data.batch_size=64", "--trainer.callbacks=[]", "--model.width=8", "--model.depth=1"]}}
    c.update(train_points=40, test_points=50, probe_points=6, flow={**c["flow"], "steps": 3, "search_steps": 2})
    cfg = tmp_path / "ak.yaml"
    cfg.write_text(yaml.safe_dump(c))
    out = tmp_path / "ak"
    res = after_kernel.main(["--config", str(cfg), "--out_dir", str(out)])
    rows = res[name]
    assert [r["epochs"] for r in rows] == [0, 1] and rows[0]["drift"]["relative_change"] == 0.0
    assert rows[1]["drift"]["relative_change"] > 0 and all(-1 <= r["alignment"] <= 1 for r in rows)
    for r in rows:
        a = r["after_kernel"]
        assert a["lr_scale"] in c["flow"]["lr_grid"] and [k for k, _ in a["search"]] == c["flow"]["lr_grid"]
        assert a["lr_scale"] not in a["failed_lr_scales"] and a["train_gain"] > 0
        assert 0 < a["test_gain"] < 10 and 0 < r["network_test_gain"] < 10
    # the network's test gain, recomputed: sigma_FS / sigma on the study's fresh test points (its seed)
    run = out / name / "run"
    ck = load_checkpoint(run / "epochs" / "e0.ckpt")
    test = sample_pointset(ck.surface, 50, after_kernel.TEST_SEED, population=ck.data["population"])
    for r, module in zip(rows, (after_kernel.network_at(run, 0), ck.module)):
        gain = float(test.sigma(test.g_fs) / test.sigma(module.predict_metric(test)))
        assert r["network_test_gain"] == pytest.approx(gain, rel=1e-9)
    assert json.loads((out / "after_kernel.json").read_text())["networks"] == res
    table = (out / "after_kernel.md").read_text()
    assert all(f"| {name} | {r['epochs']} | {r['network_test_gain']:.3g} | {r['after_kernel']['test_gain']:.3g} |"
               in table for r in rows)
    monkeypatch.setattr(after_kernel, "measure", lambda *a, **k: pytest.fail("a finished checkpoint was re-measured"))
    monkeypatch.setattr(after_kernel.subprocess, "run", lambda *a, **k: pytest.fail("a trained network was retrained"))
    assert after_kernel.main(["--config", str(cfg), "--out_dir", str(out)])[name] == rows


def test_paper_kernel_study_runs_on_its_config_and_resumes(tmp_path, monkeypatch):
    """conf/studies/paper_kernels.yaml with a tiny budget (200 points, the delta kernel, both variants and
    populations, two epochs); each row's gains are its evaluation's, sigma_FS / sigma, and the table shows them."""
    import yaml

    from studies import paper_kernels

    c = yaml.safe_load((ROOT / "conf" / "studies" / "paper_kernels.yaml").read_text())
    c.update(cache_mb=64, scaling=[200, 400], local_test_points=200, evaluate=[
        "--n_test", "200", "--n_noise", "40", "--ricci_points", "0", "--noise_levels", "1e-4", "1e-2", "--distances", "0.01"])
    cfg = tmp_path / "pk.yaml"
    cfg.write_text(yaml.safe_dump(c))
    monkeypatch.setattr(paper_kernels, "train_args", lambda c, r, run, f=paper_kernels.train_args: f(c, r, run) + [
        "--trainer.max_epochs=2"])
    args = ["--config", str(cfg), "--out_dir", str(tmp_path / "pk"), "--sizes", "200", "--kernels", "delta"]
    res = paper_kernels.main(args)
    assert len(res["runs"]) == 2 * len(c["populations"]) and all("error" not in r for r in res["runs"]), res["runs"]
    assert {r["variant"] for r in res["runs"]} == set(c["variants"])
    by = {(r["variant"], r["population"]): r for r in res["runs"]}
    assert by[("paper", "all_charts")]["train_points_used"] < by[("paper", "one_chart")]["train_points_used"] == 200
    table = (tmp_path / "pk" / "paper_kernels.md").read_text()
    for r in res["runs"]:
        e = json.loads(Path(r["eval"]).read_text())["checkpoints"][0]
        assert r["test_gain"] == e["test"]["gain"] == pytest.approx(e["test"]["sigma_fs"] / e["test"]["sigma"], rel=1e-12)
        assert r["train_gain"] == e["train"]["gain"] and 0.1 < r["train_gain"] < 100  # two epochs: a band, not a gain
        assert f"| {r['variant']} | {r['population']} | delta | 200 ({r['train_points_used']}) | {r['train_gain']:.3g} | " \
               f"{r['test_gain']:.3g} |" in table
    assert set(res["scaling"]) == {"one_chart", "all_charts"}
    for pop, sc in res["scaling"].items():  # nearest-neighbour distances shrink with more points
        means = [row["mean"] for row in sorted(sc["rows"], key=lambda row: row["n"])]
        assert means[0] > means[-1] > 0
    # the local bound, recomputed with a brute-force nearest train point (the study uses NearestIndex)
    from mflow.data.pointset import sample_pointset
    from mflow.geometry import volume
    from mflow.geometry.distance import fs_distance_matrix
    from mflow.geometry.presets import manifold

    (b,) = res["local_bound"]["one_chart"]
    X = manifold("fermat_quintic")
    test, train = (sample_pointset(X, n, seed, population="one_chart") for n, seed in ((200, 10_001), (200, 10_000)))
    kappa = volume.kappa(train.weights, volume.real_det(train.g_fs), train.omega_sq)
    eta_test, eta_train = (volume.eta(volume.real_det(p.g_fs), p.omega_sq, kappa) for p in (test, train))
    nn = fs_distance_matrix(test.z, train.z).argmin(1)
    w = test.weights
    local = float((w * (1 - eta_test / eta_train[nn]).abs()).sum() / w.sum())
    assert b["n"] == 200 and b["sigma_fs"] == pytest.approx(float((w * (1 - eta_test).abs()).sum() / w.sum()), rel=1e-9)
    assert b["local_bound"] == pytest.approx(b["sigma_fs"] / local, rel=1e-9)
    monkeypatch.setattr(paper_kernels.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was rerun"))
    assert paper_kernels.main(args)["runs"] == res["runs"]


def test_moduli_study_runs_on_its_config_and_does_not_retrain(tmp_path, monkeypatch):
    """conf/studies/moduli.yaml with a tiny budget: the family and one separate network, measured at two t."""
    from studies import moduli

    args = ["--out_dir", str(tmp_path / "m"), "--set", "args=[--trainer.max_epochs=1, --data.n_points=400, --model.width=8]",
            "single_t2=[1.0]", "grid_t2=[0.5, 1.0]", "test_points=200", "ricci_points=10"]
    res = moduli.main(args)
    assert set(res["networks"]) == {"family", "single t2=1"} and len(res["fs"]) == 2
    for rows in res["networks"].values():
        assert all(0 < r["sigma"] < 1 and r["ricci_points"] > 0 for r in rows)
    assert res["fs"][0]["sigma"] != res["fs"][1]["sigma"]  # g_FS changes with t, the points do not
    assert (tmp_path / "m" / "moduli.png").stat().st_size > 1000
    monkeypatch.setattr(moduli.subprocess, "run", lambda *a, **k: pytest.fail("a finished network was retrained"))
    moduli.main(args)
