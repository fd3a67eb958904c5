"""train.py end to end: every conf/ YAML parses and runs a fast_dev_run step; overrides take effect."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "conf").glob("*.yaml"))


def _args(tmp_path, *extra):
    return [
        f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}", "--data.n_points=600",
        "--data.batch_size=64", "--wandb=disabled", *extra,
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_runs_a_fast_dev_run(tmp_path, config):
    trainer = main(["--config", str(config), *_args(tmp_path, "--trainer.fast_dev_run=1")])
    assert trainer.state.finished


def test_overrides_take_effect_and_summary_is_written(tmp_path):
    trainer = main(_args(tmp_path, "--model.width=8", "--model.depth=1", "--trainer.max_epochs=1", "--model.lr=0.01"))
    module = trainer.lightning_module
    assert module.model.net.net[0].weight.shape == (8, 10)
    assert module.hparams.lr == 0.01
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["points"]["train"] + s["points"]["val"] + s["points"]["test"] == 600
    assert set(s["gain"]) == {"train", "val", "test"} and s["epochs"] == 1
    assert Path(s["checkpoint"]).exists()
    assert s["ricci_measure_val"] > 0


def test_the_network_seed_and_the_data_seed_can_differ(tmp_path):
    """Lightning logs the model's and the data's hyperparameters together: they must not share a key
    with different values (NetworkFlow's seed is init_seed for that reason)."""
    trainer = main(_args(tmp_path, "--model.init_seed=3", "--data.seed=0", "--trainer.fast_dev_run=1"))
    again = main(_args(tmp_path, "--model.init_seed=4", "--data.seed=0", "--trainer.fast_dev_run=1"))
    w = [t.lightning_module.model.net.net[0].weight for t in (trainer, again)]
    assert not torch.equal(*w)


def test_a_run_killed_mid_epoch_resumes_from_its_last_checkpoint(tmp_path):
    # 480 train points / batch 64 = 8 steps per epoch; the "kill" comes after step 5, last.ckpt is from step 4
    main(_args(tmp_path, "--trainer.max_steps=5", "--checkpoint_every_n_steps=2", "--test=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = torch.load(last, weights_only=False)
    assert ck["mflow"]["format"] == 1 and ck["global_step"] == 4
    trainer = main(_args(tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={last}", "--test=false"))
    assert trainer.current_epoch == 2 and trainer.global_step >= 2 * 8 - 4


def test_bad_configs_fail_early_with_clear_messages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  width: [oops\n")
    with pytest.raises(SystemExit):
        main(["--config", str(bad), *_args(tmp_path)])
    with pytest.raises(ValueError, match="unknown head"):
        main(_args(tmp_path, "--model.head=nonsense", "--trainer.fast_dev_run=1"))
    with pytest.raises((ValueError, SystemExit)):
        main(_args(tmp_path, "--data.manifold=octic", "--trainer.fast_dev_run=1"))


def test_nan_loss_stops_without_writing_a_checkpoint(tmp_path):
    with pytest.raises(Exception, match="loss is nan|not positive definite"):
        main(_args(tmp_path, "--model.lr=1e30", "--trainer.max_epochs=3", "--model.out_scale=1.0"))
    ckpts = list((tmp_path / "run").rglob("*.ckpt"))
    for c in ckpts:  # whatever was written before the failure loads and is finite
        sd = torch.load(c, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point() and v.numel() and "initial_sigma" not in str(v))


def test_print_config_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--print_config"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "head: multfs" in out.stdout


def test_ddp_with_two_cpu_processes_gives_the_single_process_sigma(tmp_path):
    script = ROOT / "tests" / "scripts" / "ddp_validate.py"
    res = {}
    for devices in (1, 2):
        out = tmp_path / f"val{devices}.json"
        run = subprocess.run(
            [sys.executable, str(script), str(devices), str(tmp_path / "data"), str(out)],
            capture_output=True, text=True, cwd=ROOT, timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        res[devices] = json.loads(out.read_text())
    assert abs(res[1]["val/sigma"] - res[2]["val/sigma"]) < 1e-12
    assert abs(res[1]["val/loss"] - res[2]["val/loss"]) < 1e-12
    assert res[2]["points_seen"] == res[2]["val_points"] == res[1]["points_seen"]  # each point once
