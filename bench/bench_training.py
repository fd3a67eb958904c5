"""Training benchmark (issue "Speed"): seconds per epoch of every head at several batch sizes, the network precision
and compile variants, start-up overhead, and test sigma against wall time. Writes bench/results/training[-<part>].json.

    python bench/bench_training.py speed   [--points 100000] [--batch_sizes 64 128 256 1024] [--heads ...] [--epochs 2]
    python bench/bench_training.py variants [--points 100000] [--epochs 3]
    python bench/bench_training.py startup
    python bench/bench_training.py drift [--points 100000] [--epochs 3]
    python bench/bench_training.py quality [--minutes 15] [--variants best best-long+finish ...] [--finish_iterations 20]
    common: [--accelerator cpu|gpu] [--num_threads N] [--out PATH]

speed: each head in its shipped configuration (HEADS below) but at learning rate 1e-4 (a step's time does not depend
on it; the shipped MultFS rate leaves the metric non-PD within 2 epochs at batch 256), the NTKDrift callback off,
80% of --points as train points; a head's "seconds per epoch" is the median time of its training epochs after the first (the first includes
warm-up and, with compile, compilation; it is reported apart), validation excluded.
quality: test sigma (the run's own 10% test split) after every epoch against the wall time of training alone (the
benchmark's evaluations and validation excluded), interpolated at 1, 5 and 15 minutes (a run that ended earlier
keeps its final sigma); a variant trains until --minutes of training alone are past; for a variant ending in "+finish",
finish.py's full-batch L-BFGS then runs on the same run's last checkpoint (its seconds and test sigma added).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from mflow.cli.options import Parser  # noqa: E402
from mflow.cli.finish import finish_checkpoint  # noqa: E402
from mflow.cli.train import main  # noqa: E402
from mflow.io import write_json  # noqa: E402

HEADS = {  # head -> the configuration its figures come from
    "multfs": ["--config", "conf/default.yaml"],
    "free": ["--config", "conf/default.yaml", "--model.head=free"],
    "addfs": ["--config", "conf/default.yaml", "--model.head=addfs", "--model.out_scale=0.03"],  # 0.3: g_FS + net not PD at init
    "matrixfs": ["--config", "conf/default.yaml", "--model.head=matrixfs"],
    "phifs": ["--config", "conf/best.yaml"],
    "bihomogeneous": ["--config", "conf/bihomogeneous.yaml"],
}
VARIANTS = {  # name -> train.py arguments (quality and variants parts); "-long": trains until --minutes are up
    "best": ["--config", "conf/best.yaml"],
    "best-f64": ["--config", "conf/best.yaml", "--model.precision=float64", "--model.compile=false"],
    "best-f32": ["--config", "conf/best.yaml", "--model.compile=false"],
    "best-long": ["--config", "conf/best.yaml", "--trainer.max_epochs=-1", "--model.lr_decay=0.96"],
    "bihomogeneous": ["--config", "conf/bihomogeneous.yaml"],
    "bihomogeneous-long": ["--config", "conf/bihomogeneous.yaml", "--trainer.max_epochs=-1", "--model.lr_decay=0.96"],
}
MARKS_MIN = (1, 5, 15)
SPEED_LR = "--model.lr=1e-4"  # speed: the time of a step does not depend on it; a small one keeps every head PD at every batch size


class EpochClock(L.Callback):
    """Training-epoch seconds (validation excluded) and, optionally, the test sigma after every epoch against the
    training time so far; with a budget (seconds of training alone) the run stops at the first epoch past it."""

    def __init__(self, test_sigma: bool = False, budget: float | None = None):
        self.epochs: list[float] = []
        self.series: list[dict] = []
        self.test_sigma, self.budget, self.train_seconds = test_sigma, budget, 0.0

    def on_train_start(self, trainer, module):
        if self.test_sigma:
            self._record(trainer, module)

    def on_train_epoch_start(self, trainer, module):
        self._t, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, module):
        self._v = time.perf_counter()

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self._val += time.perf_counter() - self._v

    def on_train_epoch_end(self, trainer, module):
        self.epochs.append(time.perf_counter() - self._t - self._val)
        self.train_seconds += self.epochs[-1]
        if self.test_sigma:
            self._record(trainer, module)
        if self.budget is not None and self.train_seconds >= self.budget:
            trainer.should_stop = True

    def _record(self, trainer, module):
        sigma = module.measure(trainer.datamodule.test)["sigma"]
        self.series.append({"epoch": len(self.epochs), "seconds": self.train_seconds, "test_sigma": sigma})
        print(f"[bench] {self.series[-1]}", flush=True)


def train(args: list[str], run_dir: Path, common: list[str], test_sigma: bool = False, budget: float | None = None):
    clock = EpochClock(test_sigma, budget)
    trainer = main([*args, f"--run_dir={run_dir}", "--wandb=off", "--trainer.enable_progress_bar=false", *common],
                   callbacks=[clock])
    return clock, trainer


def per_epoch(clock: EpochClock) -> dict:
    later = clock.epochs[1:] or clock.epochs
    return {"seconds_per_epoch": statistics.median(later), "first_epoch_seconds": clock.epochs[0], "epochs": clock.epochs}


def speed(a, common, tmp):
    out = {}
    for head in a.heads:
        for bs in a.batch_sizes:
            clock, _ = train([*HEADS[head], f"--data.n_points={a.points}", f"--data.batch_size={bs}",
                              f"--trainer.max_epochs={a.epochs}", "--trainer.callbacks=[]", "--test=false", SPEED_LR],
                             tmp / f"{head}-{bs}", common)
            out.setdefault(head, {})[str(bs)] = per_epoch(clock)
            a.save(out)
            print(f"[bench] {head} batch {bs}: {out[head][str(bs)]['seconds_per_epoch']:.2f} s/epoch", flush=True)
    return out


def variants(a, common, tmp):
    out = {}
    for name in ("best-f64", "best-f32", "best"):
        clock, trainer = train([*VARIANTS[name], f"--data.n_points={a.points}", f"--trainer.max_epochs={a.epochs}",
                                "--trainer.callbacks=[]"], tmp / name, common)
        s = json.loads((tmp / name / "summary.json").read_text())
        out[name] = {**per_epoch(clock), "val_sigma": s["sigma_final"]["val"], "test_sigma": s["sigma_final"]["test"]}
        a.save(out)
        print(f"[bench] {name}: {out[name]['seconds_per_epoch']:.2f} s/epoch, val sigma {out[name]['val_sigma']:.4g}", flush=True)
    return out


def startup(a, common, tmp):
    """Wall seconds of `python train.py --trainer.max_epochs=0` (imports, sampling or the cache, set-up) and of imports."""
    def wall(cmd):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        return time.perf_counter() - t

    cache = tmp / "cache"
    base = [sys.executable, "train.py", "--trainer.max_epochs=0", "--wandb=off", f"--data.cache_dir={cache}", *common]
    return {"import_seconds": wall([sys.executable, "-c", "import mflow.cli.train"]),
            "cold_seconds (samples 100k points)": wall([*base, f"--run_dir={tmp / 's1'}"]),
            "warm_seconds (point cache)": wall([*base, f"--run_dir={tmp / 's2'}"])}


def drift(a, common, tmp):
    """The NTKDrift callback's cost in the network configs that switch it on: seconds per epoch with and without it."""
    out = {}
    for name in ("default", "best"):
        runs = {}
        for tag, extra in (("with", []), ("without", ["--trainer.callbacks=[]"])):
            clock, _ = train(["--config", f"conf/{name}.yaml", f"--data.n_points={a.points}", f"--trainer.max_epochs={a.epochs}",
                              "--test=false", *extra], tmp / f"{name}-{tag}", common)
            runs[tag] = per_epoch(clock)["seconds_per_epoch"]
        out[name] = {**runs, "overhead": runs["with"] / runs["without"] - 1}
        print(f"[bench] NTKDrift in conf/{name}.yaml: {out[name]}", flush=True)
    return out


def at(series: list[dict], seconds: float) -> float:
    """Test sigma after `seconds` of training, interpolated linearly; a run that ended earlier keeps its final one."""
    ts, ss = [p["seconds"] for p in series], [p["test_sigma"] for p in series]
    return float(np.interp(seconds, ts, ss))


def quality(a, common, tmp):
    out = {}
    for name in a.variants:
        base = name.removesuffix("+finish")
        clock, _ = train([*VARIANTS[base], "--trainer.callbacks=[]"], tmp / name, common, test_sigma=True, budget=60 * a.minutes)
        entry = {"series": clock.series, "test_sigma_at_minutes": {str(m): at(clock.series, 60 * m) for m in MARKS_MIN},
                 "final": clock.series[-1]}
        if name.endswith("+finish"):  # the same run's last checkpoint, finished
            rep = finish_checkpoint(tmp / name / "checkpoints" / "last.ckpt", iterations=a.finish_iterations)
            entry["finish"] = {"seconds": rep["seconds"], "iterations": rep["iterations"], "test_sigma": rep["sigma_after"]["test"],
                               "seconds_total": clock.series[-1]["seconds"] + rep["seconds"], "sigma_after": rep["sigma_after"]}
        out[name] = entry
        a.save(out)
        print(f"[bench] {name}: {entry['test_sigma_at_minutes']} final {entry['final']} {entry.get('finish', '')}", flush=True)
    return out


PARTS = {"speed": speed, "variants": variants, "startup": startup, "quality": quality, "drift": drift}


if __name__ == "__main__":
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=None, help="speed: 2, variants and drift: 3")
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 128, 256, 1024])
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--variants", nargs="+", default=["best+finish", "best-long+finish", "bihomogeneous-long+finish"],
                    help=f"quality: some of {list(VARIANTS)}, each optionally with +finish")
    ap.add_argument("--minutes", type=int, default=15)
    ap.add_argument("--finish_iterations", type=int, default=20)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--num_threads", type=int, default=None, help="torch threads (default: train.py's, a fair share of the cores)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    a.epochs = a.epochs or {"speed": 2, "variants": 3, "drift": 3}.get(a.part)
    common = [f"--trainer.accelerator={a.accelerator}"] + ([f"--num_threads={a.num_threads}"] if a.num_threads else [])
    unknown = [v for v in a.variants if v.removesuffix("+finish") not in VARIANTS]
    if unknown:
        ap.error(f"--variants {unknown}: choose from {list(VARIANTS)}, each optionally with +finish")
    path = Path(a.out) if a.out else OUT / f"training-{a.part}.json"
    t = time.perf_counter()
    args = {k: v for k, v in vars(a).items()}

    def save(result, done=False):  # after every entry: an interrupted benchmark keeps what it measured
        meta = {"part": a.part, "args": args, "complete": done, "torch": torch.__version__,
                "threads": a.num_threads or torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "loadavg_end": os.getloadavg(), "bench_seconds": time.perf_counter() - t}
        write_json(path, {"meta": meta, a.part: result})

    a.save = save
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        save(PARTS[a.part](a, common, Path(tmp)), done=True)
    print(f"wrote {path}")
