"""The study scripts (studies/): the width study and the theory report run end to end on tiny settings,
write their JSON, table and PNG, and resume; their config is checked."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studies import theory, width  # noqa: E402

TINY = ["data.n_points=600", "data.batch_size=100", "trainer.max_epochs=1"]


TINY_KERNELS = "kernels={train_points: 30, probe_points: 6, flow: {loss: sigma, reduction: mean, steps: 3, " \
    "lr_step_decay: 0.99, lr_grid: [0.01, 0.03], search_steps: 2}}"


def test_width_study_runs_every_arm_and_resumes(tmp_path, monkeypatch):
    """conf/studies/width.yaml at tiny sizes: every parametrisation x width has the four arms' test gains, the
    drift and alignments; the figures are recomputed independently (the network's gain from its checkpoint, the drift
    from the kernels at init and at the end); a second call retrains and re-measures nothing."""
    from mflow.evaluation.after_kernel import initial_network
    from mflow.evaluation.checkpoints import load_checkpoint, recorded_splits
    from mflow.ntk import metric_ntk, relative_change

    out = tmp_path / "study"
    args = ["--out_dir", str(out), "--widths", "8", "16", "--seeds", "0", "--set", *TINY[:3], TINY_KERNELS]
    a = width.main(args)
    assert list(a["parametrizations"]) == ["standard", "ntk", "mup"] and a["widths"] == [8, 16]
    for p, s in a["parametrizations"].items():
        assert set(s["test_gain"]) == {"network", "linearized", "frozen_ntk", "after_kernel"}
        assert all(g is not None and g > 0 for gains in s["test_gain"].values() for g in gains)
        assert all(d > 0 for d in s["drift"]) and all(-1 <= x <= 1 for x in s["alignment"]["after_kernel"])
        assert s["network_over_frozen_ntk"][0] == pytest.approx(s["test_gain"]["network"][0] / s["test_gain"]["frozen_ntk"][0])
    # independently: the network's test gain from its last checkpoint, on its own test split
    run = out / "mup" / "seed0" / "w16" / "network"
    ck = load_checkpoint(run / "checkpoints" / "last.ckpt")
    test = recorded_splits(ck)["test"]
    gain = float(test.sigma(test.g_fs) / test.sigma(ck.module.predict_metric(test)))
    assert a["parametrizations"]["mup"]["test_gain"]["network"][1] == pytest.approx(gain, rel=1e-6)
    # the drift: the trace kernel of the rebuilt initial network against the trained one, on the probe points
    probe = recorded_splits(ck)["val"][:6]
    K0 = metric_ntk(initial_network(run).model, probe, kind="trace")
    KT = metric_ntk(ck.module.model, probe, kind="trace")
    assert a["parametrizations"]["mup"]["drift"][1] == pytest.approx(relative_change(KT, K0), rel=1e-6)
    # the rebuilt initial network is the one the runs started from: theta_0 as the linearized run stored it
    lin = load_checkpoint(run.parent / "linearized" / "checkpoints" / "last.ckpt").module.model
    init = initial_network(run).model
    assert all(torch.equal(init.get_parameter(n), t) for n, t in lin.theta0().items()) and lin.theta0()
    assert "### ntk" in (out / "width_study.md").read_text() and (out / "width_study.png").stat().st_size > 1000
    assert json.loads((out / "width_study.json").read_text())["parametrizations"] == json.loads(json.dumps(a["parametrizations"]))
    # a finished study resumes without retraining or re-measuring anything
    monkeypatch.setattr(width, "train", lambda *a, **k: pytest.fail("a finished run was rerun"))
    monkeypatch.setattr(width, "after_kernel_flow", lambda *a, **k: pytest.fail("a finished measurement was redone"))
    assert width.main(args)["parametrizations"] == a["parametrizations"]
    # runs made with other settings are refused, not mixed in
    with pytest.raises(SystemExit, match="other settings"):
        width.main(["--out_dir", str(out), "--widths", "8", "--set", "data.n_points=700", *TINY[1:3], TINY_KERNELS])


def test_killed_width_study_resumes_from_the_killed_run(tmp_path, monkeypatch):
    """A run killed mid-training (its last.ckpt written, no summary) is resumed from that checkpoint, finished runs
    are not touched, and the result equals an uninterrupted study's."""
    base = ["--widths", "8", "--seeds", "0", "--parametrizations", "mup", "--arms", "network", "--set", "data.n_points=600",
            "data.batch_size=100", "trainer.max_epochs=2", TINY_KERNELS]
    whole = width.main(["--out_dir", str(tmp_path / "whole"), *base])
    out = tmp_path / "killed"
    real = width.train
    # the first attempt stops after epoch 1 of 2 (its last.ckpt is that epoch's end), as a kill there would
    monkeypatch.setattr(width, "train", lambda args: real(args + ["--trainer.max_epochs=1"]))
    width.main(["--out_dir", str(out), *base])
    group = out / "mup" / "seed0" / "w8"
    (group / "network" / "summary.json").unlink()  # a killed run writes none
    (group / "kernels.json").unlink()
    calls = []
    monkeypatch.setattr(width, "train", lambda args: calls.append(args) or real(args))
    again = width.main(["--out_dir", str(out), *base])
    assert len(calls) == 1 and calls[0][:2] == ["--resume", str(group / "network")]
    assert json.loads((group / "network" / "summary.json").read_text())["epochs"] == 2
    assert again["parametrizations"]["mup"]["test_gain"]["network"] == pytest.approx(
        whole["parametrizations"]["mup"]["test_gain"]["network"], rel=1e-6)


def test_width_study_restarts_a_run_killed_before_its_first_checkpoint(tmp_path):
    """A run killed before any checkpoint (its config.yaml written, nothing to resume) starts afresh and finishes."""
    base = ["--out_dir", str(tmp_path), "--widths", "8", "--seeds", "0", "--parametrizations", "ntk", "--arms", "network",
            "--set", *TINY, TINY_KERNELS]
    first = width.main(base)
    run = tmp_path / "ntk" / "seed0" / "w8" / "network"
    for f in (run / "summary.json", run.parent / "kernels.json"):
        f.unlink()
    shutil.rmtree(run / "checkpoints")
    again = width.main(base)
    assert (run / "summary.json").exists()
    assert again["parametrizations"]["ntk"]["test_gain"]["network"] == pytest.approx(
        first["parametrizations"]["ntk"]["test_gain"]["network"], rel=1e-6)


def test_width_study_refuses_to_set_what_it_loops_over(tmp_path):
    for kv, flag in (("model.init_seed=1", "--seeds"), ("model.width=32", "--widths"), ("model.parametrization=ntk", "--parametrizations")):
        with pytest.raises(SystemExit, match=flag):
            width.main(["--out_dir", str(tmp_path), "--set", kv])
    with pytest.raises(SystemExit, match="arms"):
        width.main(["--out_dir", str(tmp_path), "--set", "model.linearize=false"])


def test_width_study_report_trains_nothing(tmp_path, monkeypatch):
    """--report writes the tables from what has finished; unfinished cells are marked, nothing is trained."""
    monkeypatch.setattr(width, "train", lambda *a, **k: pytest.fail("--report trained"))
    a = width.main(["--out_dir", str(tmp_path), "--widths", "8", "16", "--parametrizations", "ntk", "--report"])
    assert all(r["errors"] == {"network": "not run yet", "linearized": "not run yet"} for r in a["rows"])
    assert a["parametrizations"]["ntk"]["test_gain"]["network"] == [None, None]
    assert not list(tmp_path.glob("ntk/*/*/*/study_args.json"))


def test_width_study_averages_seeds_and_shows_their_range():
    """Two seeds: gains and their ratios are geometric means (sqrt(a b)), the table and JSON carry each test gain's
    range over seeds; alignments are arithmetic means; one seed has no range."""
    rows = [{"parametrization": "mup", "seed": s, "width": 64, "errors": {},
             "test_gain": {"network": g, "frozen_ntk": k}, "alignment": {"frozen_ntk": c, "after_kernel": c},
             "drift": {"relative_change": d, "cka": 0.5}}
            for s, g, k, c, d in ((0, 32.0, 1.0, 0.1, 1.0), (1, 18.0, 4.0, 0.3, 4.0))]
    a = width.analyse(rows, [64], ["mup"], ["network"])
    s = a["parametrizations"]["mup"]
    assert s["test_gain"]["network"] == [pytest.approx(24.0)] and s["test_gain_range"]["network"] == [[18.0, 32.0]]
    assert s["network_over_frozen_ntk"] == [pytest.approx(((32 / 1) * (18 / 4)) ** 0.5)]
    assert s["drift"] == [pytest.approx(2.0)] and s["alignment"]["frozen_ntk"] == [pytest.approx(0.2)]
    assert "| 64 | 24 (18-32) | 2 (1-4) | - |" in width.table(a) and "Seeds [0, 1]" in width.table(a)
    one = width.analyse(rows[:1], [64], ["mup"], ["network"])
    assert one["parametrizations"]["mup"]["test_gain_range"]["network"] == [None]
    assert "| 64 | 32 | 1 | - |" in width.table(one) and "Seeds" not in width.table(one)


def test_width_study_config_is_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    good = "parametrizations: [mup]\nseeds: [0]\nargs: {}\narms: {network: {}}\nkernels: {}\n"
    bad.write_text("widths: [64, -1]\n" + good)
    with pytest.raises(ValueError, match="widths must be"):
        width.load_config(bad)
    bad.write_text("widths: [64]\n" + good.replace("[mup]", "[mup, lazy]"))
    with pytest.raises(ValueError, match="parametrizations must be"):
        width.load_config(bad)
    bad.write_text("widths: [64]\nargs: {}\n")
    with pytest.raises(ValueError, match="needs the keys"):
        width.load_config(bad)
    with pytest.raises(SystemExit, match="unknown arms"):
        width.main(["--out_dir", str(tmp_path), "--arms", "kernel"])


def test_width_study_gpu_config_is_the_same_study_at_full_scale():
    """conf/studies/width_gpu.yaml (bench/device_check.sh width) differs from the CPU design only in its scale."""
    cpu = width.load_config(ROOT / "conf" / "studies" / "width.yaml")
    gpu = width.load_config(ROOT / "conf" / "studies" / "width_gpu.yaml")
    scale = {"trainer.max_epochs", "checkpoint_every_n_steps", "data.n_points", "data.val_fraction", "data.test_fraction", "data.batch_size"}
    assert {k: v for k, v in gpu["args"].items() if k not in scale} == {k: v for k, v in cpu["args"].items() if k not in scale}
    assert gpu["arms"] == cpu["arms"] and gpu["parametrizations"] == cpu["parametrizations"]
    train = gpu["args"]["data.n_points"] * (1 - gpu["args"]["data.val_fraction"] - gpu["args"]["data.test_fraction"])
    assert train >= 100_000 and max(gpu["widths"]) >= 1024 and len(gpu["seeds"]) >= 2


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

    def fail(args):
        raise NotPositiveDefiniteError("the metric is not positive definite at 3 of 100 points (step 7)")

    monkeypatch.setattr(width, "train", fail)
    args = ["--out_dir", str(tmp_path), "--widths", "8", "--seeds", "0", "--arms", "network", "--parametrizations", "ntk"]
    a = width.main(args)
    row = a["rows"][0]
    assert row["test_gain"] == {} and "positive definite" in row["errors"]["network"]
    assert a["parametrizations"]["ntk"]["test_gain"]["network"] == [None]
    assert (tmp_path / "ntk" / "seed0" / "w8" / "network" / "error.json").exists()
    assert "| 8 | - |" in (tmp_path / "width_study.md").read_text()
    monkeypatch.setattr(width, "train", lambda *a, **k: pytest.fail("a failed run was rerun"))
    assert width.main(args)["rows"][0]["errors"] == row["errors"]


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


def test_moduli_psi_study_runs_on_its_config_and_does_not_retrain(tmp_path, monkeypatch):
    """conf/studies/moduli_psi.yaml with a tiny budget: per manifold the family g(x; psi) and one separate network,
    measured on two members (their own points, kappa and sigma_FS)."""
    from studies import moduli

    args = ["--out_dir", str(tmp_path / "m"), "--config", str(ROOT / "conf" / "studies" / "moduli_psi.yaml"), "--set",
            "args=[--trainer.max_epochs=1, --data.n_points=800, --model.width=8]", "test_points=200", "ricci_points=10",
            "manifolds={dwork: {psi_range: [1.2, 2.0], single_psi: [1.5], grid_psi: [1.2, 1.5]}, "
            "two_cubics: {psi_range: [1.2, 2.0], single_psi: [2.0], grid_psi: [1.5, 2.0]}}"]
    res = moduli.main(args)
    for name, r in res["manifolds"].items():
        assert set(r["networks"]) == {"family", f"single psi={r['single_psi'][0]:g}"} and len(r["fs"]) == 2
        assert all(0 < x["sigma"] < 1 and x["ricci_points"] > 0 for rows in r["networks"].values() for x in rows)
        assert r["fs"][0]["kappa"] != r["fs"][1]["kappa"]  # the members' points and kappa differ
    assert (tmp_path / "m" / "moduli_psi.png").stat().st_size > 1000 and "two_cubics" in (tmp_path / "m" / "moduli_psi.md").read_text()
    monkeypatch.setattr(moduli.subprocess, "run", lambda *a, **k: pytest.fail("a finished network was retrained"))
    moduli.main(args)
