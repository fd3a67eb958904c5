"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends (network and kernel flows),
resumed with its own settings; leftovers of killed writes are removed; corrupt checkpoints are refused."""
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
KILLED = ROOT / "tests" / "scripts" / "killed_run.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MFLOW_TRACEBACK": ""}

NETWORK = ["--data.n_points=600", "--data.batch_size=64", "--trainer.max_epochs=3", "--model.width=16",
           "--model.depth=2", "--model.lr=0.01", "--trainer.callbacks=[]"]  # 480 train points: 8 steps per epoch
KERNEL = ["--config=conf/kernel_gaussian.yaml", "--data.n_points=400", "--data.n_clusters=4",
          "--data.cluster_batch_size=200", "--trainer.max_epochs=4", "--model.steps_per_batch=2",
          "--trainer.check_val_every_n_epoch=1"]  # 200 train points in 4 clusters: 4 steps per epoch


def _run(args, cwd, kill_at=None):
    cmd = [sys.executable, str(KILLED), str(kill_at), *args] if kill_at else [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600)


def _summary(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {k: s[k] for k in ("sigma_init", "sigma_final", "gain", "reduction_from_init", "global_step", "epochs", "points")}


@pytest.mark.parametrize("flow,args,every,kill_at", [
    ("network", NETWORK, 5, 13),   # resumed at step 10, in the middle of the second epoch
    ("network", NETWORK, 8, 10),   # resumed at step 8, the last batch of the first epoch (before its validation)
    ("kernel", KERNEL, 3, 7),      # resumed at step 6, in the middle of the second epoch
    ("network", NETWORK, 100, "13:INT"),  # Ctrl-C after step 13: last.ckpt holds step 13, no periodic one was due
], ids=["network-mid-epoch", "network-epoch-end", "kernel-mid-epoch", "network-ctrl-c"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, flow, args, every, kill_at):
    common = [*args, "--wandb=off", "--num_threads=1", f"--checkpoint_every_n_steps={every}",
              f"--data.cache_dir={tmp_path / 'data'}"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run([*common, f"--run_dir={full}"], ROOT).returncode == 0
    k = _run([*common, f"--run_dir={killed}"], ROOT, kill_at=kill_at)
    ck = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)
    if isinstance(kill_at, str):  # Ctrl-C: the run stops after that step, saving it, and says how to go on
        assert k.returncode == 0 and f"--resume {killed}" in k.stdout, k.stderr[-2000:]
        assert ck["global_step"] == 13 and ck["run"]["end"] == "interrupted"
    else:
        assert k.returncode == -9, k.stderr[-2000:]  # really killed
        assert not (killed / "summary.json").exists()
        assert ck["global_step"] == (kill_at // every) * every
    r = _run(["--resume", str(killed)], tmp_path)  # its own settings, in its own directory, from anywhere
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {killed}" in r.stdout
    assert _summary(killed) == _summary(full)  # bit for bit, on one thread


def test_resume_keeps_the_runs_settings_and_refuses_changes(tmp_path):
    from mflow.cli.errors import run
    from mflow.cli.train import main

    common = [*NETWORK, "--wandb=off", f"--data.cache_dir={tmp_path / 'data'}", "--test=false"]
    rd = tmp_path / "run"
    main([*common, "--trainer.max_epochs=1", f"--run_dir={rd}"])
    stale = rd / "checkpoints" / ".last.ckpt.x1y2.tmp"  # what a write killed half-way leaves
    stale.write_bytes(b"partial")
    for bad, what in ((["--model.lr=0.5"], "--model.lr cannot change"), (["--data.n_points=900"], "--data.n_points"),
                      (["--config=conf/default.yaml"], "--data.n_points, ")):
        with pytest.raises(ValueError, match=what):
            main(["--resume", str(rd), *bad])
    assert stale.exists()  # refused before anything ran
    with pytest.raises(ValueError, match="no such checkpoint"):
        main([f"--ckpt_path={rd / 'checkpoints' / 'nope.ckpt'}"])
    trainer = main([f"--ckpt_path={rd / 'checkpoints' / 'last.ckpt'}", "--trainer.max_epochs=2"])  # more epochs: safe
    assert not stale.exists()  # the next start in that directory removes it
    assert trainer.current_epoch == 2 and trainer.lightning_module.hparams.lr == 0.01
    assert trainer.datamodule.n_points == 600 and Path(trainer.default_root_dir) == rd
    # corrupt checkpoints: one line naming the files and the cause, nothing written
    for ckpt in (rd / "checkpoints").glob("*.ckpt"):  # one truncated, the other with a changed byte in a weight
        raw = bytearray(ckpt.read_bytes())
        if ckpt.name == "last.ckpt":
            raw = raw[: len(raw) // 2]
        else:
            with zipfile.ZipFile(ckpt) as z:
                info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)  # a weight
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
            raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
        ckpt.write_bytes(bytes(raw))
    before = {p: p.stat().st_mtime_ns for p in rd.rglob("*") if p.is_file()}
    assert run(main, "train.py", ["--resume", str(rd), "--trainer.max_epochs=3"]) == 2
    assert run(main, "train.py", [f"--ckpt_path={rd / 'checkpoints' / 'last.ckpt'}", "--trainer.max_epochs=3"]) == 2
    assert {p: p.stat().st_mtime_ns for p in rd.rglob("*") if p.is_file()} == before


def test_a_run_killed_after_its_final_checkpoint_writes_its_summary_on_resume(tmp_path):
    """Killed between the final last.ckpt and summary.json (e.g. out of memory in the final measurements): --resume
    does not say 'nothing to do' but finishes the run, and the summary has the uninterrupted run's figures."""
    from mflow.cli.train import main

    rd = tmp_path / "run"
    main([*NETWORK, "--trainer.max_epochs=1", "--wandb=off", f"--data.cache_dir={tmp_path / 'data'}", f"--run_dir={rd}"])
    whole = _summary(rd)
    (rd / "summary.json").unlink()
    main(["--resume", str(rd)])
    assert _summary(rd) == whole
    assert main(["--resume", str(rd)]) is None  # with its summary it is finished: nothing to do
