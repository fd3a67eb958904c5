"""Every YAML under conf/, recursively, is run by a test with a tiny budget.

- train configs (conf/*.yaml, conf/paper/*.yaml, any other folder): here, through train.py with few points and one
  epoch; the test asserts that the file's settings reached the model and the data, and that the logged test sigma
  and gain are those of the final checkpoint's metric, recomputed (through the one loader) on its recorded points;
- study configs (conf/studies/*.yaml): by their study script in tests/test_studies.py (STUDY_TESTS below);
- sweep configs (conf/sweeps/*.yaml): parsed and one trial's agent command run, in tests/test_sweeps.py.
A YAML added under conf/ without a test fails test_every_yaml_under_conf_has_a_test.
"""
import math
from pathlib import Path

import pytest
import torch
import yaml

from mflow.cli.train import main
from mflow.evaluation.checkpoints import load_checkpoint, recorded_splits
from mflow.geometry import volume

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
ALL = sorted(CONF.rglob("*.yaml"))
STUDIES, SWEEPS = CONF / "studies", CONF / "sweeps"
TRAIN = [p for p in ALL if STUDIES not in p.parents and SWEEPS not in p.parents]
STUDY_TESTS = {  # conf/studies/<name>: the test of tests/test_studies.py that runs its study on it
    "after_kernel.yaml": "test_after_kernel_study_runs_on_its_config_and_resumes",
    "moduli.yaml": "test_moduli_study_runs_on_its_config_and_does_not_retrain",
    "moduli_psi.yaml": "test_moduli_psi_study_runs_on_its_config_and_does_not_retrain",
    "paper_kernels.yaml": "test_paper_kernel_study_runs_on_its_config_and_resumes",
    "width.yaml": "test_width_study_runs_every_arm_and_resumes",
    "width_gpu.yaml": "test_width_study_gpu_config_is_the_same_study_at_full_scale",
}
TINY = {"data.n_points": 240, "trainer.max_epochs": 1, "trainer.check_val_every_n_epoch": 1}
EAGER = {"model.compile": False}  # compiling costs a minute: tests/test_models.py tests the compiled forward


def _section(cfg: dict, name: str) -> dict:
    """A config section's init args (written as class_path + init_args, or flat)."""
    s = cfg.get(name) or {}
    return dict(s.get("init_args") or {}) if "class_path" in s else dict(s)


def test_every_yaml_under_conf_has_a_test():
    studies = {p.name for p in ALL if STUDIES in p.parents}
    assert studies == set(STUDY_TESTS), "a study config without a test in tests/test_studies.py (or a stale entry)"
    text = (ROOT / "tests" / "test_studies.py").read_text()
    assert all(f"def {t}(" in text for t in STUDY_TESTS.values())
    sweeps = {p for p in ALL if SWEEPS in p.parents}
    import test_sweeps

    assert sweeps == set(test_sweeps.SWEEPS) and sweeps  # each runs one trial there
    assert set(TRAIN) | sweeps | {p for p in ALL if STUDIES in p.parents} == set(ALL)
    assert {p.relative_to(CONF).parent.as_posix() for p in TRAIN} >= {".", "paper"}


@pytest.mark.parametrize("config", TRAIN, ids=lambda p: p.relative_to(CONF).as_posix())
def test_every_train_config_runs_as_written(tmp_path, config):
    torch.set_num_threads(1)
    cfg = yaml.safe_load(config.read_text())
    args = ["--config", str(config), f"--run_dir={tmp_path / 'run'}", f"--data.cache_dir={tmp_path / 'data'}",
            "--wandb=off", "--trainer.enable_progress_bar=false", *(f"--{k}={v}" for k, v in TINY.items())]
    if _section(cfg, "model").get("compile"):
        args += [f"--{k}={v}" for k, v in EAGER.items()]
    trainer = main(args)
    module, dm = trainer.lightning_module, trainer.datamodule
    # the file's settings reached the model and the data (the budget aside)
    model_cls = (cfg.get("model") or {}).get("class_path", "mflow.flows.network.NetworkFlow")
    assert model_cls.rsplit(".", 1)[-1] == type(module).__name__
    for k, v in _section(cfg, "model").items():
        if f"model.{k}" in EAGER:
            continue
        assert module.hparams[k] == v, f"model.{k}: the file says {v!r}, the model has {module.hparams[k]!r}"
    for k, v in _section(cfg, "data").items():
        if f"data.{k}" not in TINY:
            assert dm.hparams[k] == v, f"data.{k}: the file says {v!r}, the data have {dm.hparams[k]!r}"
    assert module.surface is dm.surface  # the manifold is the data's
    # what was logged is the final checkpoint's metric on the recorded test points, recomputed here
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    if ck.kind == "network":  # the checkpoint finds its own test points
        assert torch.equal(recorded_splits(ck)["test"].z, dm.test.z)
    batch = dm.batch_of("test")  # a moduli family's carries each point's t and kappa(t)
    g = ck.module.predict_metric(batch)
    det = volume.real_det(g) / batch["kappa"] if "kappa" in batch else volume.real_det(g)
    det_fs = volume.real_det(batch["g_fs"]) / batch["kappa"] if "kappa" in batch else volume.real_det(batch["g_fs"])
    sigma = float(volume.sigma(batch["weights"], det, batch["omega_sq"]))
    sigma_fs = float(volume.sigma(batch["weights"], det_fs, batch["omega_sq"]))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["test/sigma"] == pytest.approx(sigma, rel=1e-6)
    assert logged["test/gain"] == pytest.approx(sigma_fs / sigma, rel=1e-6)
    assert 0 < sigma < 2 and 0.2 < sigma_fs / sigma < 20 and math.isfinite(float(ck.module.kappa))
