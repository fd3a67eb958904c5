"""One place per fact (issue 20): the manifold is configured once (the data) and reaches the model from the
datamodule; kappa likewise; one checkpoint loader; a checkpoint says where its train points are, so evaluation
never rebuilds a training datamodule."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mflow import evaluation
from mflow.cli.errors import run
from mflow.cli.train import main as train_main
from mflow.data import datamodule as datamodule_
from mflow.data.pointset import load_pointset, save_pointset
from mflow.evaluation.checkpoints import load_checkpoint, recorded_splits, train_points
from mflow.flows.base import FlowModule
from mflow.flows.checkpoint import read_checkpoint, seal
from mflow.flows.network import NetworkFlow
from mflow.geometry.presets import manifold
from mflow.geometry.points import sample


def _train(run, *extra):
    return train_main([
        f"--run_dir={run}", "--data.n_points=300", "--data.batch_size=60", "--wandb=off", "--trainer.max_epochs=1",
        "--model.width=8", "--model.depth=1", "--test=false", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=[]", "--model.pd_policy=continue", *extra,
    ])


@pytest.fixture(scope="module")
def quartic_run(tmp_path_factory):
    """A network trained on the Fermat quartic, named in the data section only."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("quartic")
    trainer = _train(d / "run", "--data.manifold=fermat_quartic", f"--data.cache_dir={d / 'cache'}")
    return trainer, d / "run" / "checkpoints" / "last.ckpt"


def test_the_manifold_is_the_datas_and_the_model_holds_no_copy(quartic_run, capsys):
    trainer, ckpt = quartic_run
    module, dm = trainer.lightning_module, trainer.datamodule
    assert module.surface is dm.surface and module.surface.name == "fermat_quartic"
    assert not {"manifold", "psi", "ambient_n", "surface_seed", "kahler", "surface"} & set(module.hparams)
    assert float(module.kappa) == dm.kappa_fs  # kappa from the datamodule, in setup
    ck = read_checkpoint(ckpt)
    assert not {"manifold", "psi", "kahler", "surface"} & set(ck["hyper_parameters"])
    assert ck["mflow"]["surface"]["name"] == "fermat_quartic"  # the one record of the manifold
    # the model section takes no manifold: the parser says so in one line
    assert run(train_main, "train.py", ["--model.manifold=fermat_quintic", "--wandb=off"]) == 2
    err = capsys.readouterr().err
    assert "Option 'manifold' is not accepted" in err and err.count("\n") == 1


def test_one_loader_and_the_train_points_without_a_datamodule(quartic_run, monkeypatch):
    trainer, ckpt = quartic_run
    dm = trainer.datamodule
    calls = []
    original = FlowModule.load_from_checkpoint.__func__
    monkeypatch.setattr(NetworkFlow, "load_from_checkpoint",
                        classmethod(lambda cls, *a, **k: calls.append(a) or original(cls, *a, **k)))

    def no_datamodule(*a, **k):
        raise AssertionError("evaluation built a datamodule")

    monkeypatch.setattr(datamodule_.CYDataModule, "__init__", no_datamodule)
    ck = load_checkpoint(ckpt)
    assert len(calls) == 1 and ck.surface.fingerprint() == dm.surface.fingerprint()
    assert ck.data["file"] == str(dm.cache_path.resolve()) and ck.data["split"]["n"] == 300
    assert torch.equal(train_points(ck).z, dm.train.z)
    splits = recorded_splits(ck)
    assert all(torch.equal(splits[s].z, getattr(dm, s).z) for s in ("train", "val", "test"))
    x = dm.val[:7]
    assert torch.equal(ck.module.predict_metric(x), trainer.lightning_module.predict_metric(x))
    assert float(ck.module.kappa) == dm.kappa_fs  # carried by the checkpoint: nobody copies it


def test_sampled_points_are_regenerated_and_a_changed_data_file_is_refused(tmp_path):
    torch.set_num_threads(1)
    # a sampled set whose cache file is gone: regenerated from the recorded seed, the same points
    t = _train(tmp_path / "a", f"--data.cache_dir={tmp_path / 'cache'}", "--data.seed=3")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    t.datamodule.cache_path.unlink()
    assert torch.equal(train_points(load_checkpoint(ckpt)).z, t.datamodule.train.z)
    # a user's point file: read back while unchanged, refused in one line once its content changed
    X = manifold("fermat_quintic")
    f = tmp_path / "mine.npz"
    save_pointset(f, sample(X, 300, 11), X, seed=11)
    t = _train(tmp_path / "b", f"--data.path={f}")
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.equal(train_points(load_checkpoint(ckpt)).z, t.datamodule.train.z)
    save_pointset(f, sample(X, 300, 12), X, seed=12)
    with pytest.raises(evaluation.EvaluationError, match="has changed since the model was trained"):
        train_points(load_checkpoint(ckpt))
    f.unlink()
    with pytest.raises(evaluation.EvaluationError, match="does not exist any more"):
        evaluation.evaluate([ckpt], tmp_path / "ev", n_test=50, quiet=True)
    assert not (tmp_path / "ev").exists()


def test_a_checkpoint_written_before_the_manifold_was_the_datas_loads(quartic_run, tmp_path):
    """The old layout: manifold settings in the model's hyper_parameters too, no train-points record (the data
    settings say where the points are): migrated by mflow.flows.checkpoint.migrate."""
    trainer, ckpt = quartic_run
    ck = torch.load(ckpt, weights_only=False)
    meta = {k: v for k, v in ck["mflow"].items() if k not in ("data", "checksum")}
    hp = {**ck["hyper_parameters"], "manifold": "fermat_quartic", "psi": None, "ambient_n": 4, "surface_seed": 0,
          "kahler": None, "pd_policy": "raise"}
    old = tmp_path / "old.ckpt"
    torch.save(seal({**ck, "hyper_parameters": hp, "mflow": meta}), old)
    loaded = load_checkpoint(old)
    assert loaded.surface.name == "fermat_quartic" and loaded.module.hparams.pd_policy == "stop"
    assert loaded.data["file"] == str(trainer.datamodule.cache_path.resolve()) and loaded.data["digest"] is None
    dm = trainer.datamodule  # such checkpoints predate splits of whole sampling systems: the split of points applies
    rows = datamodule_.split_indices(300, dm.seed, dm.val_fraction, dm.test_fraction)["train"]
    assert torch.equal(train_points(loaded).z, load_pointset(dm.cache_path).points.z[rows])
    assert NetworkFlow.load_from_checkpoint(old).surface.name == "fermat_quartic"


def test_a_model_on_another_manifold_than_its_checkpoint_or_data_is_refused(quartic_run):
    _, ckpt = quartic_run
    with pytest.raises(ValueError, match="checkpoint is for manifold fermat_quartic"):
        NetworkFlow.load_from_checkpoint(ckpt, surface=manifold("fermat_quintic"))
    with pytest.raises(TypeError, match="CompleteIntersection"):
        NetworkFlow("fermat_quintic")
