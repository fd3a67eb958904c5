"""train.py end to end: overrides take effect, errors are one line (every conf/ YAML runs in tests/test_configs.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mflow.cli.errors import run
from mflow.cli.train import main

ROOT = Path(__file__).resolve().parent.parent


def _args(tmp_path, *extra):
    return [
        f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}", "--data.n_points=600",
        "--data.batch_size=64", "--wandb=off", *extra,
    ]


def test_overrides_take_effect_and_summary_is_written(tmp_path):
    trainer = main(_args(tmp_path, "--model.width=8", "--model.depth=1", "--trainer.max_epochs=1", "--model.lr=0.01"))
    module = trainer.lightning_module
    assert module.model.net.net[0].weight.shape == (8, 10)
    assert module.hparams.lr == 0.01
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["points"]["train"] + s["points"]["val"] + s["points"]["test"] == 600
    assert set(s["gain"]) == {"train", "val", "test"} and s["epochs"] == 1
    for k in ("train", "val", "test"):  # gain: the paper's sigma_FS / sigma; sigma_init / sigma has its own name
        assert s["gain"][k] == pytest.approx(s["sigma_fs"][k] / s["sigma_final"][k], rel=1e-12)
        assert s["reduction_from_init"][k] == pytest.approx(s["sigma_init"][k] / s["sigma_final"][k], rel=1e-12)
    assert Path(s["checkpoint"]).exists()
    assert s["ricci_measure_val"] > 0


def test_the_network_seed_and_the_data_seed_can_differ(tmp_path):
    """Lightning logs the model's and the data's hyperparameters together: they must not share a key
    with different values (NetworkFlow's seed is init_seed for that reason)."""
    trainer = main(_args(tmp_path, "--model.init_seed=3", "--data.seed=0", "--trainer.fast_dev_run=1"))
    again = main(_args(tmp_path, "--model.init_seed=4", "--data.seed=0", "--trainer.fast_dev_run=1", "--overwrite"))
    w = [t.lightning_module.model.net.net[0].weight for t in (trainer, again)]
    assert not torch.equal(*w)


def test_user_errors_are_one_line_naming_what_to_change(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  width: [oops\n")
    cases = [
        (["--config", str(bad)], f"config file {bad} is not valid YAML at line 3"),
        (["--model.head=nonsense", "--trainer.fast_dev_run=1"],
         "model.head must be one of free, addfs, multfs, matrixfs, phifs, bihomogeneous; got 'nonsense'"),
        (["--model.pd_policy=raise"], "pd_policy 'raise' is now called 'stop'"),
        (["--trainer.callbacks=mflow.callbacks.NTKDrift", "--trainer.callbacks.kind=x"],
         "trainer.callbacks.kind must be one of full, trace, diagonal; got 'x'"),
        (["--model.head=phifs", "--trainer.fast_dev_run=1"], "phifs with activation relu"),
        (["--data.manifold=octic"], "data.manifold must be one of fermat_quintic,"),
        (["--data.manifold=dwork", "--data.psi=1.0"], "singular at psi^5 = 1"),
        (["--trainer.max_epochs=abc"], 'Parser key "trainer.max_epochs"'),
        (["--nonsense=1"], "unrecognized arguments: --nonsense=1"),
        (["--wandb=sometimes"], "--wandb must be one of"),
        (["--trainer.default_root_dir=/tmp/elsewhere"], "differ: give one of them"),
        (["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=x", "--wandb=online"],
         "with --trainer.logger give your loggers there"),
    ]
    for extra, message in cases:
        assert run(main, "train.py", _args(tmp_path, *extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
        assert err.startswith("train.py: error: ") and "MFLOW_TRACEBACK=1" in err


def test_the_traceback_is_shown_on_request():
    env = {**os.environ, "MFLOW_TRACEBACK": ""}
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data.manifold=octic"], capture_output=True, text=True,
                       cwd=ROOT, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "manifold must be one of" in p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data.manifold=octic"], capture_output=True, text=True,
                       cwd=ROOT, env={**env, "MFLOW_TRACEBACK": "1"})
    assert p.returncode != 0 and "Traceback (most recent call last)" in p.stderr and "manifold must be one of" in p.stderr


def test_the_run_directory_the_user_names_is_used(tmp_path):
    args = [a for a in _args(tmp_path, "--trainer.max_epochs=1", "--test=false") if not a.startswith("--run_dir")]
    trainer = main([*args, f"--trainer.default_root_dir={tmp_path / 'root'}"])
    assert Path(trainer.default_root_dir) == tmp_path / "root"
    assert (tmp_path / "root" / "summary.json").exists() and (tmp_path / "root" / "config.yaml").exists()
    assert not (tmp_path / "run").exists() and not (ROOT / "runs" / "never").exists()
    # config.yaml holds the settings, not where the run went: --config it (the short -c too) to rerun elsewhere
    again = main(["-c", str(tmp_path / "root" / "config.yaml"), f"--run_dir={tmp_path / 'again'}"])
    assert Path(again.default_root_dir) == tmp_path / "again" and (tmp_path / "again" / "summary.json").exists()
    first = json.loads((tmp_path / "root" / "summary.json").read_text())
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["sigma_final"] == first["sigma_final"]


def test_a_users_loggers_and_checkpoints_are_kept(tmp_path):
    trainer = main([a for a in _args(tmp_path, "--trainer.max_epochs=1", "--test=false") if a != "--wandb=off"] + [
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'mylogs'}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'mine'}", "--trainer.callbacks.filename=user",
    ])
    assert [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger"]
    assert (tmp_path / "mine" / "user.ckpt").exists()  # the user's checkpoint callback ran
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # and mflow's (resume) too
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["loggers"] == ["CSVLogger"]


def test_wandb_online_that_cannot_start_stops_before_training(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(type(wandb.api), "api_key", property(lambda self: None))
    with pytest.raises(ValueError, match="--wandb=online needs a W&B login"):
        main([a for a in _args(tmp_path) if a != "--wandb=off"] + ["--wandb=online"])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_what_ran_is_recorded_and_reported(tmp_path, capsys):
    trainer = main(_args(tmp_path, "--trainer.max_epochs=1", "--optimizer=SGD", "--optimizer.lr=0.1"))
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    (opt,) = s["optimizer"]["optimizers"]
    assert opt["class"] == "SGD" and opt["lr"] == 0.1 and s["optimizer"]["lr_schedulers"] == []
    assert type(trainer.optimizers[0]).__name__ == "SGD" and "--optimizer SGD replaces" in out
    cfg = (tmp_path / "run" / "config.yaml").read_text()  # in the run directory, with CSV logging too
    assert "class_path: torch.optim.SGD" in cfg and "lr: 0.1" in cfg and s["loggers"] == ["CSVLogger"]
    assert out.count("[mflow] results in") == 1  # the summary is reported once
    final = next(ln for ln in out.splitlines() if ln.startswith("[mflow] results in"))
    csv_dir = final.rsplit("CSVLogger in ", 1)[1].strip()
    assert (Path(csv_dir) / "metrics.csv").exists()
    with pytest.raises(ValueError, match="frozen-kernel flow takes no --optimizer"):
        main(["--config", str(ROOT / "conf" / "kernel_delta.yaml"), *_args(tmp_path, "--optimizer=SGD")])


def test_a_run_outside_a_terminal_prints_lines_not_a_bar(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), *_args(tmp_path, "--trainer.max_epochs=2")],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": ""})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert sum(ln.startswith("[mflow] epoch ") for ln in lines) == 2 and "\r" not in p.stdout  # no progress bar
    assert sum(ln.startswith("[mflow] results in") for ln in lines) == 1
    noise = [ln for ln in p.stderr.splitlines() if ln.strip() and "smaller than the logging interval" not in ln]
    assert not noise, noise  # no adverts, banners or deprecation warnings
    assert {p.name for p in tmp_path.iterdir()} == {"run", "data"}  # files only where the run was told


def test_nan_loss_stops_without_writing_a_checkpoint(tmp_path):
    with pytest.raises(Exception, match="loss is nan|not positive definite"):
        main(_args(tmp_path, "--model.lr=1e30", "--trainer.max_epochs=3", "--model.out_scale=1.0"))
    ckpts = list((tmp_path / "run").rglob("*.ckpt"))
    for c in ckpts:  # whatever was written before the failure loads and is finite
        sd = torch.load(c, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point() and v.numel() and "initial_sigma" not in str(v))


def test_print_config_and_help_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--print_config"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "head: multfs" in out.stdout
    for flag in ("-h", "--help"):
        out = subprocess.run([sys.executable, str(ROOT / "train.py"), flag], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0 and "--trainer.max_epochs" in out.stdout, out.stderr[-300:]


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
