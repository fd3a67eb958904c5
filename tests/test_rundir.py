"""Run directories (issue 19): last.ckpt is the final state, one run per directory (lock, --overwrite, run ids),
resume follows the run (moved, damaged, finished), checks before anything is written, and the messages."""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml

from mflow.cli.errors import run
from mflow.cli.train import duration_note, main

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MFLOW_TRACEBACK": ""}
COMMON = ["--data.n_points=600", "--data.batch_size=64", "--model.width=8", "--model.depth=1", "--model.lr=0.01",
          "--trainer.callbacks=[]", "--wandb=off", "--test=false", "--num_threads=1"]  # 480 train points: 8 steps


def _files(run: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".mflow.lock"}


def _ckpt(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run (8 steps; a periodic last.ckpt at step 5); tests work on copies of it."""
    rd = tmp_path_factory.mktemp("finished") / "run"
    main([*COMMON, "--trainer.max_epochs=1", "--checkpoint_every_n_steps=5", f"--run_dir={rd}"])
    return rd


# ------------------------------------------------------------------ 1. last.ckpt is the end of the run
def test_last_ckpt_is_the_final_state_with_the_runs_own_figures(finished, tmp_path):
    from mflow.cli.finish import finish_checkpoint
    from mflow.evaluation.report import evaluate

    last = finished / "checkpoints" / "last.ckpt"
    s = json.loads((finished / "summary.json").read_text())
    ck = _ckpt(last)
    assert ck["global_step"] == s["global_step"] == 8 and ck["run"]["end"] == "finished"
    rep, _ = evaluate([last], tmp_path / "eval", n_test=40, mode="gaussian", variances=[1e-4], n_noise=10,
                      n_distance=10, ricci_points=0, quiet=True)
    assert rep["checkpoints"][0]["train"]["sigma"] == pytest.approx(s["sigma_final"]["train"], rel=1e-9)
    fin = finish_checkpoint(last, tmp_path / "fin.ckpt", iterations=1, log=lambda *a: None)
    assert fin["sigma_before"]["val"] == pytest.approx(s["sigma_final"]["val"], rel=1e-9)


# ------------------------------------------------------------------ 2. one run per directory
def _locked(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_two_runs_started_together_one_holds_the_lock_until_killed(tmp_path):
    """Real processes: both start at once into one directory and train until stopped; one takes the lock, the
    other is refused in one line; the winner's files are the only ones there; killing it frees the lock."""
    rd = tmp_path / "run"
    procs = []
    for k in (1, 2):
        out, err = open(tmp_path / f"{k}.out", "w"), open(tmp_path / f"{k}.err", "w")
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *COMMON, "--trainer.max_epochs=-1", f"--model.init_seed={k}",
             f"--run_dir={rd}"], cwd=ROOT, env=ENV, text=True, stdout=out, stderr=err))
    try:
        t0 = time.time()
        while all(p.poll() is None for p in procs) or not (rd / "config.yaml").exists():
            assert time.time() - t0 < 240 and not all(p.poll() is not None for p in procs)
            time.sleep(0.2)
        loser = next(i for i, p in enumerate(procs) if p.poll() is not None)
        winner = 1 - loser
        err = (tmp_path / f"{loser + 1}.err").read_text()
        assert procs[loser].returncode == 2 and err.count("\n") == 1, err
        assert f"{rd} is in use by another train.py run (pid {procs[winner].pid})" in err
        assert _locked(rd / ".mflow.lock")
        cfg = yaml.safe_load((rd / "config.yaml").read_text())
        assert cfg["model"]["init_args"]["init_seed"] == winner + 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert not _locked(rd / ".mflow.lock")  # the kernel released the killed run's lock
    assert "training runs until stopped" in (tmp_path / f"{winner + 1}.out").read_text()  # max_epochs=-1, said at start


def test_a_used_directory_is_refused_unless_overwrite(finished, tmp_path):
    rd = _copy(finished, tmp_path / "run")
    before, old_id = _files(rd), yaml.safe_load((rd / "config.yaml").read_text())["run_id"]
    with pytest.raises(ValueError, match="holds a run already .*--resume .*--overwrite"):
        main([*COMMON, "--trainer.max_epochs=1", f"--run_dir={rd}"])
    assert _files(rd) == before
    with pytest.raises(ValueError, match="NTKDrift needs at least 2 validation points"):  # fails its checks:
        main([*COMMON, "--trainer.max_epochs=1", "--overwrite", f"--run_dir={rd}", "--data.val_fraction=0",
              "--trainer.callbacks=[{class_path: mflow.callbacks.NTKDrift}]"])
    assert _files(rd) == before  # ... so the earlier run is left as it was
    main([*COMMON, "--trainer.max_epochs=1", "--model.lr=0.02", "--overwrite", f"--run_dir={rd}"])
    cfg = yaml.safe_load((rd / "config.yaml").read_text())
    ck = _ckpt(rd / "checkpoints" / "last.ckpt")
    assert cfg["run_id"] != old_id and ck["run"]["id"] == cfg["run_id"] and ck["hyper_parameters"]["lr"] == 0.02
    assert cfg["overwrite"] is False  # rerunning this config.yaml does not overwrite anything
    assert not any("-v" in p.name for p in (rd / "checkpoints").iterdir())
    assert [p.name for p in (rd / "csv").iterdir()] == ["version_0"]  # the old run's files are gone
    (rd / "notes.txt").write_text("mine")  # --overwrite removes a run's files, never others
    main([*COMMON, "--trainer.max_epochs=1", "--overwrite", f"--run_dir={rd}"])
    assert (rd / "notes.txt").read_text() == "mine"


def test_wandb_runs_are_per_run_and_disabled_names_off(tmp_path):
    from mflow.cli.loggers import make_loggers

    with pytest.raises(ValueError, match="--wandb=disabled is now --wandb=off"):
        make_loggers(str(tmp_path), "disabled", "r1")
    csv, wb = make_loggers(str(tmp_path), "offline", "r0123abcdef")
    try:
        assert type(csv).__name__ == "CSVLogger" and wb.experiment.id == "r0123abcdef"
    finally:
        wb.experiment.finish()


# ------------------------------------------------------------------ 3, 4. resume follows the run
def test_resume_follows_a_moved_run_and_skips_what_is_not_its_own(finished, tmp_path, capsys):
    from mflow.flows.checkpoint import AtomicCheckpointIO

    moved = _copy(finished, tmp_path / "moved")
    main(["--resume", str(moved), "--trainer.max_epochs=2"])
    names = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt" and len(names) == 2 and not any("-v" in n for n in names)  # its best, tracked
    assert _ckpt(moved / "checkpoints" / "last.ckpt")["global_step"] == 16
    # a truncated last.ckpt and another run's checkpoint are skipped and named; the state goes back to last.ckpt
    best = moved / "checkpoints" / names[0]
    other = _ckpt(best)
    other["run"]["id"], other["global_step"] = "rsomeoneelse", 99
    AtomicCheckpointIO().save_checkpoint(other, moved / "checkpoints" / "epoch9-sigma0.0001.ckpt")
    last = moved / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    main(["--resume", str(moved), "--trainer.max_epochs=3"])
    out = capsys.readouterr().out
    assert "skipped last.ckpt (checkpoint cannot be read" in out
    assert "skipped epoch9-sigma0.0001.ckpt (written by another run (rsomeoneelse" in out
    assert f"from {best}" in out and _ckpt(last)["global_step"] == 24
    assert not any("-v" in p.name for p in (moved / "checkpoints").iterdir())


def test_a_finished_run_is_left_alone_and_continued_with_more_epochs(finished, tmp_path, capsys):
    rd = _copy(finished, tmp_path / "run")
    before = _files(rd)
    assert main(["--resume", str(rd)]) is None
    assert "is finished (1 epochs, step 8): nothing to do" in capsys.readouterr().out
    assert _files(rd) == before  # summary.json untouched, no duplicate best checkpoint
    main(["--resume", str(rd), "--trainer.max_epochs=2"])
    s = json.loads((rd / "summary.json").read_text())
    timed = _ckpt(rd / "checkpoints" / "last.ckpt")["callbacks"]["RunSummary"]
    assert s["epochs"] == 2 and s["seconds_per_epoch"] > 0 and timed["epochs_timed"] == 2  # both epochs timed
    assert not any("-v" in p.name for p in (rd / "checkpoints").iterdir())


def test_repeating_the_runs_own_options_resumes_it(finished, tmp_path):
    rd = _copy(finished, tmp_path / "run")
    own = [*COMMON, "--checkpoint_every_n_steps=5", f"--run_dir={rd}", f"--ckpt_path={rd / 'checkpoints' / 'last.ckpt'}"]
    with pytest.raises(ValueError, match=r"; --model\.lr cannot change"):  # a real change is refused, alone
        main([*own, "--model.lr=0.5", "--trainer.max_epochs=2"])
    trainer = main([*own, "--trainer.max_epochs=2"])
    assert trainer.global_step == 16 and Path(trainer.default_root_dir) == rd


# ------------------------------------------------------------------ 5. checks before anything is written
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from mflow.data.pointset import sample_pointset, save_pointset
    from mflow.geometry.presets import manifold

    quartic = manifold("fermat_quartic")
    points = tmp_path / "quartic.npz"
    save_pointset(points, sample_pointset(quartic, 40, 0), quartic, seed=0)
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: no network
    rd = tmp_path / "run"
    cases = [
        ([f"--data.path={points}", "--wandb=offline"], "manifold mismatch"),  # no wandb/ left behind
        (["--data.val_fraction=0", "--trainer.callbacks=[{class_path: mflow.callbacks.NTKDrift}]"],
         "NTKDrift needs at least 2 validation points for its probe (n_probe=64); the val split has 0"),
        ([f"--run_dir={tmp_path / 'a_file' / 'run'}"], "a_file is a file, not a folder"),
        (["--model.lr=nan"], "--model.lr=nan: lr must be a positive finite number"),
        (["--wandb=disabled"], "--wandb=off"),
        (["--wandb=online"], "W&B server 127.0.0.1:9 cannot be reached"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--trainer.accelerator=gpu"], "torch finds no GPU"))
    for extra, message in cases:
        t = time.time()
        assert run(main, "train.py", [*COMMON, f"--run_dir={rd}", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
        assert not rd.exists() and time.time() - t < 30, extra


class Boom(L.Callback):
    def on_train_start(self, trainer, pl_module):
        raise ValueError("boom")


def test_an_error_after_start_up_removes_only_what_the_run_created(finished, tmp_path):
    rd = tmp_path / "new"
    with pytest.raises(ValueError, match="boom"):
        main([*COMMON, f"--run_dir={rd}"], callbacks=[Boom()])
    assert not rd.exists()
    resumed = _copy(finished, tmp_path / "resumed")
    before = set(_files(resumed))
    with pytest.raises(ValueError, match="boom"):
        main(["--resume", str(resumed), "--trainer.max_epochs=2"], callbacks=[Boom()])
    assert set(_files(resumed)) == before  # csv/version_1 went, the run's own files stayed


def test_evaluate_reports_test_points_that_are_train_points(finished, tmp_path):
    from mflow.data.datamodule import CYDataModule
    from mflow.data.pointset import sample_pointset, save_pointset
    from mflow.evaluation.overlap import train_overlap
    from mflow.evaluation.report import evaluate

    dm = CYDataModule(n_points=600)
    dm.setup("fit")
    fresh = sample_pointset(dm.surface, 20, 4242)
    o = train_overlap(torch.cat([dm.train.z[:5], fresh.z]), dm.train.z, dm.surface)
    assert o["in_train"] == 5 and o["n"] == 25 and o["distance_to_train"]["min"] < 1e-6 < o["distance_to_train"]["max"]
    path = tmp_path / "train_points.npz"
    save_pointset(path, dm.train[:30], dm.surface, seed=0)
    last = finished / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="a_file is a file, not a folder"):  # the output folder, checked up front
        (tmp_path / "a_file").write_text("")
        evaluate([last], tmp_path / "a_file" / "eval", test_data=path, quiet=True)
    rep, _ = evaluate([last], tmp_path / "eval", test_data=path, mode="gaussian", variances=[1e-4], n_noise=10,
                      n_distance=10, ricci_points=0, quiet=True)
    test = rep["checkpoints"][0]["test"]
    assert test["train_overlap"]["fraction_in_train"] == 1.0 and test["source"] == "train_points.npz"
    assert any("30 of the 30 points" in w and "measure the fit" in w for w in rep["warnings"])


# ------------------------------------------------------------------ 7. messages
def test_messages_are_whole_and_said_once(tmp_path, monkeypatch):
    from mflow.data.datamodule import CYDataModule
    from mflow.data.pointset import PointSetError
    from mflow.flows.checkpoint import CheckpointError, read_checkpoint

    dm = CYDataModule(n_points=50, cache_dir=str(tmp_path))
    dm.cache_path.write_bytes(b"not an npz")
    with pytest.raises(PointSetError) as e:
        dm.setup("fit")
    assert str(e.value).lower().count("delete") == 1 and str(dm.cache_path) in str(e.value)

    def unreadable(*a, **k):
        raise RuntimeError("Weights only load failed. " + "In PyTorch 2.6 the default changed; " * 10 + "end.")

    monkeypatch.setattr(torch, "load", unreadable)
    (tmp_path / "x.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "x.ckpt")
    assert str(e.value).endswith("(RuntimeError: Weights only load failed.)") and "default changed" not in str(e.value)


def test_progress_between_validations_and_the_length_of_endless_runs(capsys):
    from mflow.callbacks import EpochLines

    trainer = SimpleNamespace(current_epoch=0, max_epochs=40, global_step=0, is_global_zero=True, sanity_checking=False,
                              callback_metrics={"train/loss": torch.tensor(0.5), "val/sigma": torch.tensor(0.1)})
    for every_s, lines in ((0.0, 3), (3600.0, 1)):
        cb = EpochLines(every_s=every_s)
        for epoch in range(3):  # three epochs without validation (a kernel flow validates every 20)
            trainer.current_epoch, trainer.global_step = epoch, 10 * (epoch + 1)
            cb.on_train_epoch_start(trainer, None)
            cb.on_train_epoch_end(trainer, None)
        out = capsys.readouterr().out.splitlines()
        assert len(out) == lines and out[0].startswith("[mflow] epoch 1/40, step 10: train/loss 0.5") and "val/" not in out[0]
    assert duration_note(10, -1, None) is None and "until max_time=00:00:05:00" in duration_note(-1, -1, "00:00:05:00")


def test_distributed_logging_advice_is_silenced():
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    from mflow.cli.loggers import quiet_dependencies

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_dependencies()
        warnings.warn("It is recommended to use `self.log('val/sigma', ..., sync_dist=True)` when logging on epoch "
                      "level in distributed setting to accumulate the metric across devices.", PossibleUserWarning)
    assert not seen


def test_resume_refuses_a_checkpoint_that_changed_after_it_was_chosen(finished, tmp_path):
    """A resume chooses its checkpoint before it can lock the directory; once locked it checks the choice still
    holds (the run it resumes may have written a newer state in between)."""
    from dataclasses import replace

    from mflow.cli.resume import check_still_newest, newest_checkpoint

    rd = _copy(finished, tmp_path / "run")
    chosen = newest_checkpoint(rd, log=lambda *a: None)
    check_still_newest(chosen)  # unchanged: fine
    with pytest.raises(ValueError, match="changed while this run was starting"):
        check_still_newest(replace(chosen, step=chosen.step - 3))
