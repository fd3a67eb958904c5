"""Training benchmark: seconds per epoch on 100k Fermat-quintic points (MultFS, PhiFS), sigma against
wall time, the Ricci measure on 10k points, and the cost of the NTKDrift callback that the network
configs switch on (--only drift: conf/default.yaml and conf/best.yaml with and without it).
Writes bench/results/training.json (training-<only>.json with --only).

    python bench/bench_training.py [--epochs 10] [--points 100000] [--only multfs|phifs|ricci|drift]
"""
import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch

from mflow.cli.train import main
from mflow.geometry import curvature, volume
from mflow.geometry.hypersurface import manifold
from mflow.geometry.points import sample
from mflow.io import write_json

OUT = Path(__file__).resolve().parent / "results"


class Clock(L.Callback):
    """(epoch, seconds since fit start, val sigma) after every validation."""

    def __init__(self):
        self.series = []

    def on_fit_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        sigma = trainer.callback_metrics.get("val/sigma")
        self.series.append({"epoch": trainer.current_epoch, "seconds": time.perf_counter() - self.t0, "val_sigma": float(sigma)})


def run(name, config, epochs, points, extra=()):
    clock = Clock()
    run_dir = OUT / f"train-{name}"
    main([
        "--config", config, f"--run_dir={run_dir}", f"--trainer.max_epochs={epochs}", f"--data.n_points={points}",
        "--wandb=disabled", "--trainer.enable_progress_bar=false", "--data.cache_dir=data", *extra,
    ], callbacks=[clock])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seconds_per_epoch": summary["seconds_per_epoch"], "sigma_vs_time": clock.series, "summary": summary}


def ricci_timing(n=10_000):
    X = manifold("fermat_quintic")
    P = sample(X, n, seed=123)
    fs = curvature.fs_metric_fn(X)
    t = time.perf_counter()
    ric = curvature.ricci_form(fs, P.z, P.patch, P.elim, P.pullback)
    R = curvature.ricci_scalar(P.g_fs, ric)
    measure = curvature.ricci_measure(P.weights, volume.real_det(P.g_fs), P.omega_sq, R, X.dim)
    return {"points": n, "seconds": time.perf_counter() - t, "ricci_measure_fs": float(measure)}


def drift_overhead(epochs, points):
    """The NTKDrift cost in the network configs: seconds per epoch with and without the callback (their
    ratio is as noisy as the machine), and the callback's own measured seconds over the fit's (direct)."""
    out = {}
    for name, config in (("default", "conf/default.yaml"), ("best", "conf/best.yaml")):
        on = run(f"{name}-drift", config, epochs, points)
        off = run(f"{name}-nodrift", config, epochs, points, ["--trainer.callbacks=[]"])["seconds_per_epoch"]
        series = json.loads((OUT / f"train-{name}-drift" / "ntk_drift.json").read_text())["series"]
        spent = sum(e["seconds"] for e in series)
        out[name] = {"with_drift": on["seconds_per_epoch"], "without": off, "overhead": on["seconds_per_epoch"] / off - 1,
                     "measurements": len(series), "drift_seconds": spent,
                     "overhead_direct": spent / (on["seconds_per_epoch"] * on["summary"]["epochs"])}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--only", choices=["multfs", "phifs", "ricci", "drift"], default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__}}
    if a.only in (None, "ricci"):
        results["ricci_fs_10k"] = ricci_timing()
    if a.only in (None, "multfs"):
        results["multfs"] = run("multfs", "conf/multfs_gelu.yaml", a.epochs, a.points)
    if a.only in (None, "phifs"):
        results["phifs"] = run("phifs", "conf/phifs.yaml", a.epochs, a.points)
    if a.only in (None, "drift"):
        results["drift_overhead"] = drift_overhead(a.epochs, a.points)
    path = OUT / (f"training-{a.only}.json" if a.only else "training.json")
    write_json(path, results)
    print(json.dumps({k: (v if k in ("machine", "drift_overhead") or k.startswith("ricci") else {"seconds_per_epoch": v["seconds_per_epoch"],
                      "last": v["sigma_vs_time"][-1] if v["sigma_vs_time"] else None}) for k, v in results.items()}, indent=1))
