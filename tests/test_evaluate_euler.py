"""evaluate.py --euler (mflow.evaluation.euler): the learned metric's Euler characteristic by Gauss-Bonnet-Chern with
its Monte Carlo error by sampling system, and its paired difference from g_FS's on the same points. The fast check
that can fail is the paired one: a near-FS smooth network's chi minus g_FS's is 0 (both are chi) within 4 paired
errors, and 4 of those errors are under 3% of the topological -200 (g_FS's own chi, here 1000 points with an error
~35, is checked against -200 by tests/test_chern.py on 20000 points)."""
import io
import json

import pytest
import torch

from mflow.choices import ACTIVATIONS
from mflow.cli.errors import run
from mflow.cli.train import main as train_main
from mflow.data.pointset import sample_pointset
from mflow.evaluation import cli as evaluate_cli
from mflow.evaluation.checkpoints import load_checkpoint
from mflow.evaluation.euler import MIN_POINTS, SMOOTH_ACTIVATIONS, euler_report
from mflow.evaluation.report import DEFAULT_SEED, print_table
from mflow.geometry import chern, curvature

FAST = ["--n_test", "200", "--n_noise", "10", "--mode", "gaussian", "--noise_levels", "1e-4", "--ricci_points", "0",
        "--device", "cpu", "--num_threads", "1"]
N = 1000  # ~10 s for the model's curvature on 2 cores


def tiny(d, *model):
    train_main([f"--run_dir={d / 'run'}", f"--data.cache_dir={d / 'data'}", "--data.n_points=600",
                "--data.batch_size=64", "--wandb=off", "--trainer.max_epochs=1", "--model.width=8", "--model.depth=1",
                *model, "--test=false", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", "--num_threads=1"])
    return d / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def smooth_ckpt(tmp_path_factory):
    """A near-FS PhiFS GELU network (second derivatives everywhere; out_scale 0.03: its Euler form differs from g_FS's
    by a few percent, so the paired difference has a small error)."""
    return tiny(tmp_path_factory.mktemp("euler"), "--model.head=phifs", "--model.activation=gelu",
                "--model.features=invariant", "--model.out_scale=0.03")


def euler_of(ckpt, out, n):
    """evaluate.py --euler n on the checkpoint: (its euler section, eval.json's settings, the table it prints)."""
    assert run(evaluate_cli.main, "evaluate.py", ["--ckpt_path", str(ckpt), "--out_dir", str(out), *FAST,
                                                    "--euler", str(n)]) == 0
    rep = json.loads((out / "eval.json").read_text())
    print_table(rep["checkpoints"], file=(printed := io.StringIO()))
    return rep["checkpoints"][0]["euler"], rep["settings"], printed.getvalue().splitlines()


@pytest.fixture(scope="module")
def section(smooth_ckpt, tmp_path_factory):
    return euler_of(smooth_ckpt, tmp_path_factory.mktemp("ev") / "ev", N)


def test_the_section_is_on_the_seed_s_points_by_sampling_system(smooth_ckpt, section):
    """The figures are those of mflow.geometry.chern on sample_pointset(n, seed): g_FS's on all of them, the model's
    on their first 100 (euler_report there), with the error by sampling system; one printed line."""
    e, settings, printed = section
    assert settings["euler_points"] == N and e["n"] == N and e["seed"] == DEFAULT_SEED and e["topological"] == -200
    ck = load_checkpoint(smooth_ckpt)
    pts = sample_pointset(ck.surface, N, DEFAULT_SEED)
    assert pts.system is not None and len(torch.unique(pts.system)) == N // 5  # 5 points per line on the quintic
    fs = curvature.fs_metric_fn(ck.surface)
    chi, se = chern.euler_characteristic(fs, pts)
    assert e["fs"]["chi"] == pytest.approx(chi, rel=1e-10) and e["fs"]["error"] == pytest.approx(se, rel=1e-10)
    small = euler_report(ck, pts[:100], DEFAULT_SEED)
    with torch.no_grad():
        chi, se = chern.euler_characteristic(ck.module.model, pts[:100])
    m = small["model"]
    assert m["chi"] == pytest.approx(chi, rel=1e-10) and m["error"] == pytest.approx(se, rel=1e-10)
    assert m["relative_difference"] == pytest.approx((chi + 200) / 200, rel=1e-10)
    assert m["errors_off"] == pytest.approx(abs(chi + 200) / se, rel=1e-10)
    line = [x for x in printed if "Euler characteristic" in x]
    assert len(line) == 1 and "against the topological -200" in line[0] and "model - g_FS" in line[0]


def test_the_model_s_chi_is_g_fs_s_within_a_few_percent(smooth_ckpt, section):
    """Paired: model - g_FS on the same points is 0 within 4 of its errors, 4 errors < 3% of |chi| = 200 (about 20x
    below g_FS's own error there); the two Euler forms differ pointwise (the check is not of g_FS against itself)."""
    e, _, _ = section
    d = e["model_minus_fs"]
    assert d["difference"] == pytest.approx(e["model"]["chi"] - e["fs"]["chi"], abs=1e-9)
    assert 0 < d["error"] < 0.2 * e["fs"]["error"], (d, e["fs"])
    assert 4 * d["error"] < 0.03 * 200, d
    assert abs(d["difference"]) < 4 * d["error"], d
    assert e["n_positive_definite"] == N
    ck = load_checkpoint(smooth_ckpt)
    p = sample_pointset(ck.surface, 100, DEFAULT_SEED)
    with torch.no_grad():
        e_fs, e_m = chern.euler_density(curvature.fs_metric_fn(ck.surface), p), chern.euler_density(ck.module.model, p)
    assert ((e_m - e_fs).abs() / e_fs.abs()).median() > 0.005


def test_smooth_activations_are_the_choices_but_relu():
    assert set(SMOOTH_ACTIVATIONS) | {"relu"} == set(ACTIVATIONS) and "relu" not in SMOOTH_ACTIVATIONS


def test_a_relu_network_is_refused_in_one_line(tmp_path, capsys):
    """default.yaml's MultFS ReLU: its curvature sits on the kinks, the figure would not be chi."""
    ckpt = tiny(tmp_path, "--model.head=multfs", "--model.activation=relu")
    capsys.readouterr()
    out = tmp_path / "ev"
    assert run(evaluate_cli.main, "evaluate.py", ["--ckpt_path", str(ckpt), "--out_dir", str(out), *FAST,
                                                    "--euler", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "activation relu" in err and "gelu" in err and not out.exists()


@pytest.mark.slow
def test_euler_at_20000_points(smooth_ckpt, tmp_path):
    """20000 points (~3-5 min on 2 cores): g_FS's error is ~8 there (tests/test_chern.py), the paired one < 1."""
    e, _, _ = euler_of(smooth_ckpt, tmp_path / "ev", 20000)
    assert all(abs(e[k]["chi"] + 200) < 4 * e[k]["error"] and 3 < e[k]["error"] < 20 for k in ("model", "fs"))
    d = e["model_minus_fs"]
    assert abs(d["difference"]) < 4 * d["error"] < 0.01 * 200


@pytest.mark.parametrize("bad", ["0", "-5", str(MIN_POINTS - 1)])
def test_too_few_points_is_one_line(smooth_ckpt, tmp_path, capsys, bad):
    out = tmp_path / "ev"
    assert run(evaluate_cli.main, "evaluate.py", ["--ckpt_path", str(smooth_ckpt), "--out_dir", str(out),
                                                    *FAST, f"--euler={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"at least {MIN_POINTS}" in err and not out.exists()
