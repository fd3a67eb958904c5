"""mflow.bo: a small Bayesian-optimisation search runs, resumes after a kill, and its best config trains."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mflow import bo
from mflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--kernel", "gaussian", "--trials", "3", "--init-points", "2", "--steps", "3", "--n-points", "120",
        "--reduction", "sum", "--quiet"]


def test_search_resume_and_best_config(tmp_path):
    full = bo.run([*TINY, "--state", str(tmp_path / "full" / "state.json"), "--cache-dir", str(tmp_path / "data")])
    assert [t["trial"] for t in full["trials"]] == [0, 1, 2]
    assert [t["seed"] for t in full["trials"]] == [0, 1, 2]  # a fresh sample per trial
    for t in full["trials"]:
        assert t["error"] is None and t["val_gain"] > 0 and set(t["params"]) == {"sigma", "lr"}
    saved = json.loads((tmp_path / "full" / "state.json").read_text())
    assert len(saved["trials"]) == 3 and saved["optimizer"]["params"] and saved["best"]["trial"] in (0, 1, 2)

    # killed after trial 2, then resumed: the same total and the same proposals as the uninterrupted search
    state = tmp_path / "killed" / "state.json"
    part = bo.run([*TINY, "--state", str(state), "--stop-after", "2", "--cache-dir", str(tmp_path / "data")])
    assert len(part["trials"]) == 2 and len(json.loads(state.read_text())["trials"]) == 2
    with pytest.raises(SystemExit, match="exists"):
        bo.run([*TINY, "--state", str(state)])
    resumed = bo.run(["--resume", "--state", str(state), "--trials", "3", "--quiet", "--cache-dir", str(tmp_path / "data")])
    assert len(resumed["trials"]) == 3
    for a, b in zip(resumed["trials"], full["trials"]):
        assert a["seed"] == b["seed"]
        for k in a["params"]:
            assert a["params"][k] == pytest.approx(b["params"][k], rel=1e-6)
        assert a["val_gain"] == pytest.approx(b["val_gain"], rel=1e-9)

    # the best parameters as a config that train.py runs
    best = tmp_path / "killed" / "best.yaml"
    text = best.read_text()
    assert "mflow.kernel_flow.KernelFlow" in text and "ClusteredDataModule" in text
    trainer = main(["--config", str(best), f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}",
                    "--wandb=disabled", "--trainer.fast_dev_run=1"])
    assert trainer.state.finished
    module = trainer.lightning_module
    bt = resumed["best"]
    assert module.kernel_params["sigma"] == pytest.approx(bt["params"]["sigma"]) and module.lr == pytest.approx(bt["params"]["lr"])


def test_command_line_help_and_bad_arguments(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mflow.bo", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "--resume" in out.stdout and "Bayesian" in out.stdout
    with pytest.raises(SystemExit, match="no state file"):
        bo.run(["--resume", "--state", str(tmp_path / "nothing.json")])
    with pytest.raises(SystemExit, match="NAME=LO:HI"):
        bo.run(["--state", str(tmp_path / "s.json"), "--param", "sigma"])
    with pytest.raises(SystemExit, match="0 < LO < HI"):
        bo.run(["--state", str(tmp_path / "s.json"), "--param", "sigma=3:1"])
