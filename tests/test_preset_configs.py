"""Each manifold preset has a shipped config, and `train.py --data.manifold=X` without --config trains on it (said in
one line), with the command line's options still winning; --config and --resume pick nothing."""
import json

import pytest
import torch
import yaml

from mflow.cli.train import DEFAULT_CONFIG, main, preset_arguments, settings
from mflow.configs import PRESET_CONFIGS, config, preset_config
from mflow.geometry.presets import PRESETS

OWN = sorted(p for p, name in PRESET_CONFIGS.items() if name != "default.yaml")  # presets with a config of their own


def _train(tmp_path, *extra):
    torch.set_num_threads(1)
    return main([f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}", "--data.n_points=600",
                 "--trainer.max_epochs=1", "--wandb=off", "--trainer.enable_progress_bar=false", "--num_threads=1",
                 *extra])


def _saved(tmp_path) -> dict:
    """The run's config.yaml."""
    return yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())


def test_every_preset_maps_to_a_shipped_config_of_that_manifold():
    assert set(PRESET_CONFIGS) == set(PRESETS)
    for preset in PRESETS:
        path = preset_config(preset)
        assert path == config(PRESET_CONFIGS[preset]) and path.is_file()
        data = yaml.safe_load(path.read_text())["data"]
        assert data["manifold"] == preset or path == DEFAULT_CONFIG, preset  # Fermat members share the default
    assert preset_config("fermat_quintic") == DEFAULT_CONFIG and preset_config("octic") is None


@pytest.mark.parametrize("preset", OWN)
def test_train_on_a_preset_picks_its_config_and_says_so(tmp_path, capsys, preset):
    """The run's config.yaml holds the picked config's network; the run finishes (its pd_policy never stops it)."""
    trainer = _train(tmp_path, f"--data.manifold={preset}")
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if "without --config" in ln]
    assert len(line) == 1 and str(preset_config(preset)) in line[0] and f"--config {DEFAULT_CONFIG}" in line[0]
    saved, shipped = _saved(tmp_path), yaml.safe_load(preset_config(preset).read_text())
    model = saved["model"]["init_args"]
    assert {k: model[k] for k in shipped["model"]} == shipped["model"]
    assert model["head"] == "phifs" and model["features"] == "invariant_dp"
    data = saved["data"]["init_args"]
    assert data["manifold"] == preset and data["n_points"] == 600  # the command line wins over the config's budget
    assert all(data[k] == v for k, v in shipped["data"].items() if k != "n_points")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["epochs"] == 1 and all(0 < g < 20 for g in s["gain"].values())
    assert trainer.lightning_module.hparams.pd_policy == "continue"


def test_a_fermat_member_keeps_the_default(tmp_path, capsys):
    _train(tmp_path, "--data.manifold=fermat_quartic", "--model.width=8")
    line = [ln for ln in capsys.readouterr().out.splitlines() if "without --config" in ln]
    assert len(line) == 1 and str(DEFAULT_CONFIG) in line[0] and "plain default" not in line[0]
    assert _saved(tmp_path)["model"]["init_args"]["head"] == "multfs"


def test_options_given_win_over_the_picked_config():
    argv, line = preset_arguments(["--data.manifold=p1p3", "--model.features=invariant", "--model.lr=0.01",
                                   "--data.kahler=[1.0, 2.0]"])
    got = settings(argv)
    assert line and got["model.init_args.features"] == "invariant" and got["model.init_args.lr"] == 0.01
    assert got["data.init_args.kahler"] == [1.0, 2.0] and got["model.init_args.head"] == "phifs"  # the rest: p1p3.yaml


def test_print_config_shows_the_picked_config_as_yaml(capsys):
    with pytest.raises(SystemExit):
        main(["--data.manifold=tetraquadric", "--print_config"])
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["model"]["init_args"]["features"] == "invariant_dp"  # stdout stays YAML
    assert "conf/tetraquadric.yaml" in err.replace("\\", "/")


@pytest.mark.parametrize("argv", [["--config", str(DEFAULT_CONFIG), "--data.manifold=bicubic"],
                                  ["-c", str(config("phifs.yaml")), "--data.manifold=bicubic"],
                                  ["--model.head=phifs"], ["--data.manifold=octic"]])
def test_nothing_is_picked_with_a_config_or_without_a_preset(argv):
    assert preset_arguments(argv) == (argv, None)


def test_a_config_given_means_no_pick(tmp_path, capsys):
    _train(tmp_path, "--config", str(DEFAULT_CONFIG), "--data.manifold=bicubic", "--model.width=8",
           "--model.pd_policy=continue")
    assert "without --config" not in capsys.readouterr().out
    assert _saved(tmp_path)["model"]["init_args"]["head"] == "multfs"


def test_resume_reads_its_run_config_and_picks_nothing(tmp_path, capsys):
    _train(tmp_path, "--data.manifold=two_cubics", "--model.width=8")
    capsys.readouterr()
    trainer = main(["--resume", str(tmp_path / "run"), "--trainer.max_epochs=2", "--data.manifold=two_cubics",
                    "--num_threads=1"])
    assert "without --config" not in capsys.readouterr().out
    hp = trainer.lightning_module.hparams
    assert trainer.current_epoch == 2 and hp.features == "invariant_dp" and hp.width == 8
