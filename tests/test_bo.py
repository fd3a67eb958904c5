"""mflow.bo: a small Bayesian-optimisation search runs, resumes after a kill, and its best config trains."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mflow import bo
from mflow.cli.train import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--kernel", "gaussian", "--trials", "3", "--init_points", "2", "--steps", "3", "--n_points", "120",
        "--reduction", "sum", "--quiet"]


def test_search_resume_and_best_config(tmp_path):
    full = bo.run([*TINY, "--state", str(tmp_path / "full" / "state.json"), "--cache_dir", str(tmp_path / "data")])
    assert [t["trial"] for t in full["trials"]] == [0, 1, 2]
    assert [t["seed"] for t in full["trials"]] == [0, 1, 2]  # a fresh sample per trial
    for t in full["trials"]:
        assert t["error"] is None and t["val_gain"] > 0 and set(t["params"]) == {"sigma", "lr"}
    saved = json.loads((tmp_path / "full" / "state.json").read_text())
    assert len(saved["trials"]) == 3 and saved["optimizer"]["params"] and saved["best"]["trial"] in (0, 1, 2)

    # killed after trial 2, then resumed: the same total and the same proposals as the uninterrupted search
    state = tmp_path / "killed" / "state.json"
    part = bo.run([*TINY, "--state", str(state), "--stop_after", "2", "--cache_dir", str(tmp_path / "data")])
    assert len(part["trials"]) == 2 and len(json.loads(state.read_text())["trials"]) == 2
    with pytest.raises(SystemExit, match="exists"):
        bo.run([*TINY, "--state", str(state)])
    resumed = bo.run(["--resume", "--state", str(state), "--trials", "3", "--quiet", "--cache_dir", str(tmp_path / "data")])
    assert len(resumed["trials"]) == 3
    for a, b in zip(resumed["trials"], full["trials"]):
        assert a["seed"] == b["seed"]
        for k in a["params"]:
            assert a["params"][k] == pytest.approx(b["params"][k], rel=1e-6)
        assert a["val_gain"] == pytest.approx(b["val_gain"], rel=1e-9)

    # the best parameters as a config that train.py runs
    best = tmp_path / "killed" / "best.yaml"
    text = best.read_text()
    assert "mflow.flows.KernelFlow" in text and "ClusteredDataModule" in text
    trainer = main(["--config", str(best), f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}",
                    "--wandb=off", "--trainer.fast_dev_run=1"])
    assert trainer.state.finished
    module = trainer.lightning_module
    bt = resumed["best"]
    assert module.kernel_params["sigma"] == pytest.approx(bt["params"]["sigma"]) and module.flow.lr == pytest.approx(bt["params"]["lr"])


@pytest.mark.parametrize("kernel", ["gaussian", "relu", "delta"])
def test_defaults_are_the_shipped_configs(kernel):
    """What a BO trial flows by default is what `python train.py --config conf/kernel_<kernel>.yaml` flows."""
    cfg = yaml.safe_load((ROOT / "conf" / f"kernel_{kernel}.yaml").read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    settings = bo.settings_from_args(bo.parser().parse_args(["--state", "s.json", "--kernel", kernel]))
    assert settings["steps"] == cfg["trainer"]["max_epochs"] * model["steps_per_batch"]
    assert settings["n_points"] == data["n_points"] and settings["n_clusters"] == data["n_clusters"]
    assert (settings["val_fraction"], settings["test_fraction"]) == (data["val_fraction"], data["test_fraction"])
    for k in ("lr", "lr_step_decay", "reduction", "chart_mode", "pd_policy", "loss"):
        assert settings[k] == model[k], k
    assert settings["normalize"] == model.get("normalize", False)
    assert all(model["kernel_params"][k] == v for k, v in settings["fixed"].items())
    searched = set(settings["bounds"]) - {"lr"}
    assert searched <= set(model["kernel_params"]) | ({"sigma"} if kernel == "gaussian" else set())
    lo, hi = settings["bounds"].get("lr", (0, 1e9))
    assert lo <= model["lr"] <= hi  # the shipped point lies inside the search box
    for k in searched:
        assert settings["bounds"][k][0] <= model["kernel_params"][k] <= settings["bounds"][k][1], k


def test_command_line_help_and_bad_arguments(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mflow.bo", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "--resume" in out.stdout and "Bayesian" in out.stdout
    with pytest.raises(SystemExit, match="no state file"):
        bo.run(["--resume", "--state", str(tmp_path / "nothing.json")])
    with pytest.raises(SystemExit, match="NAME=LO:HI"):
        bo.run(["--state", str(tmp_path / "s.json"), "--param", "sigma"])
    with pytest.raises(SystemExit, match="0 < LO < HI"):
        bo.run(["--state", str(tmp_path / "s.json"), "--param", "sigma=3:1"])
