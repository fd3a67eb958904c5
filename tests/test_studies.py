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
    args = ["--out", str(out), "--widths", "8", "16", "--set", *TINY[:3]]
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
        width.main(["--out", str(out), "--widths", "8", "--set", "data.n_points=700", *TINY[1:3]])


def test_width_study_config_is_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("widths: [64, -1]\nargs: {}\narms: {network: {}}\n")
    with pytest.raises(ValueError, match="positive integers"):
        width.load_config(bad)
    bad.write_text("widths: [64]\nargs: {}\n")
    with pytest.raises(ValueError, match="needs the keys"):
        width.load_config(bad)
    with pytest.raises(SystemExit, match="unknown arms"):
        width.main(["--out", str(tmp_path), "--arms", "kernel"])


def test_theory_report_quick(tmp_path):
    numbers = theory.main(["--out", str(tmp_path), "--quick"])
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
    args = ["--out", str(tmp_path), "--widths", "8", "--arms", "network"]
    a = width.main(args)
    assert a["test_gain"]["network"] == [None] and "positive definite" in a["runs"][0]["error"]
    assert (tmp_path / "w8" / "network" / "error.json").exists() and "failed" in (tmp_path / "width_study.md").read_text()
    monkeypatch.setattr(width, "train", lambda *a, **k: pytest.fail("a failed run was rerun"))
    assert width.main(args)["runs"][0]["error"] == a["runs"][0]["error"]


def test_after_kernel_study_runs_and_resumes(tmp_path, monkeypatch):
    from studies import after_kernel

    cfg = tmp_path / "ak.yaml"
    cfg.write_text(
        "networks:\n  tiny: {config: conf/default.yaml, epochs: [0, 1], args: [--data.n_points=600, --data.batch_size=64,"
        " '--trainer.callbacks=[]', --model.width=8, --model.depth=1]}\n"
        "train_points: 40\ntest_points: 50\nprobe_points: 6\n"
        "flow: {loss: sigma, reduction: mean, steps: 3, lr_step_decay: 0.99, lr_grid: [0.1, 1.0], search_steps: 2}\n"
    )
    res = after_kernel.main(["--config", str(cfg), "--out", str(tmp_path / "ak")])
    rows = res["tiny"]
    assert [r["epochs"] for r in rows] == [0, 1] and rows[0]["drift"]["relative_change"] == 0.0
    assert rows[1]["drift"]["relative_change"] > 0 and all(-1 <= r["alignment"] <= 1 for r in rows)
    assert all(r["after_kernel"]["test_gain"] > 0 and r["network_test_gain"] > 0 for r in rows)
    assert (tmp_path / "ak" / "after_kernel.png").stat().st_size > 1000
    monkeypatch.setattr(after_kernel, "measure", lambda *a, **k: pytest.fail("a finished checkpoint was re-measured"))
    monkeypatch.setattr(after_kernel.subprocess, "run", lambda *a, **k: pytest.fail("a trained network was retrained"))
    assert after_kernel.main(["--config", str(cfg), "--out", str(tmp_path / "ak")])["tiny"] == rows


def test_paper_kernel_study_runs_and_resumes(tmp_path, monkeypatch):
    from studies import paper_kernels

    cfg = tmp_path / "pk.yaml"
    cfg.write_text(
        "sizes: [200]\nkernels: [delta]\npopulations: [one_chart, all_charts]\n"
        "variants:\n  paper: conf/paper/kernel_{kernel}.yaml\n  mflow: conf/kernel_{kernel}.yaml\n"
        "points_per_cluster: 5000\ncache_mb: 64\nscaling: [200, 400]\nlocal_test_points: 200\n"
        "evaluate: [--n-test, '200', --n-noise, '40', --ricci-points, '0', --noise-levels, '1e-4', '1e-2', --distances, '0.01']\n"
    )
    monkeypatch.setattr(paper_kernels, "train_args", lambda c, r, run, f=paper_kernels.train_args: f(c, r, run) + [
        "--trainer.max_epochs=2"])
    res = paper_kernels.main(["--config", str(cfg), "--out", str(tmp_path / "pk")])
    assert len(res["runs"]) == 4 and all("error" not in r for r in res["runs"]), res["runs"]
    by = {(r["variant"], r["population"]): r for r in res["runs"]}
    assert by[("paper", "all_charts")]["train_points_used"] < by[("paper", "one_chart")]["train_points_used"] == 200
    assert set(res["scaling"]) == {"one_chart", "all_charts"} and res["local_bound"]["one_chart"][0]["local_bound"] > 0
    assert "| paper | one_chart | delta" in (tmp_path / "pk" / "paper_kernels.md").read_text()
    monkeypatch.setattr(paper_kernels.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was rerun"))
    assert paper_kernels.main(["--config", str(cfg), "--out", str(tmp_path / "pk")])["runs"] == res["runs"]


def test_moduli_study_runs_on_its_config_and_does_not_retrain(tmp_path, monkeypatch):
    """conf/studies/moduli.yaml with a tiny budget: the family and one separate network, measured at two t."""
    from studies import moduli

    args = ["--out", str(tmp_path / "m"), "--set", "args=[--trainer.max_epochs=1, --data.n_points=400, --model.width=8]",
            "single_t2=[1.0]", "grid_t2=[0.5, 1.0]", "test_points=200", "ricci_points=10"]
    res = moduli.main(args)
    assert set(res["networks"]) == {"family", "single t2=1"} and len(res["fs"]) == 2
    for rows in res["networks"].values():
        assert all(0 < r["sigma"] < 1 and r["ricci_points"] > 0 for r in rows)
    assert res["fs"][0]["sigma"] != res["fs"][1]["sigma"]  # g_FS changes with t, the points do not
    assert (tmp_path / "m" / "moduli.png").stat().st_size > 1000
    monkeypatch.setattr(moduli.subprocess, "run", lambda *a, **k: pytest.fail("a finished network was retrained"))
    moduli.main(args)
