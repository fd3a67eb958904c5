"""Seconds and memory of one UNCLUSTERED frozen-kernel flow step against N, and of a prediction at N test points.

    python bench/bench_kernel_flow.py [--sizes 10000 30000 100000] [--precision float64 float32] [--device cpu]

Writes bench/results/kernel_flow.json. Every measurement runs in its own subprocess, so that its peak resident
memory (ru_maxrss) is its own. The flow: Gaussian kernel on the FS distance (eq. 3.5, Table 1's sigma = 30 read
as an inverse width), all 9 real metric components, ambient chart mode, sigma loss, full batch (every train
point is updated from every train point: N^2 kernel evaluations per step), cache_mb = 0: matrix-free, the
kernel is formed tile by tile, multiplied and dropped (mflow.kernels GaussianFS._apply_real). One step = the
gradient at all points, the kernel sum, the positive-definiteness check. float32 tiles are checked against
float64 on the same points (max relative difference of the update). The exponent of time against N is fitted
over the sizes. --device cuda runs the same code with the tiles on the GPU (state and geometry stay on the CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from mflow.cli.options import Parser
from mflow.evaluation.scaling import fit_power_law
from mflow.io import write_json

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "kernel_flow.json"
SIGMA = 30.0  # Table 1, read as an inverse width


def child(n: int, precision: str, device: str, check: bool) -> dict:
    import torch

    from mflow.data.pointset import sample_pointset
    from mflow.flows import FrozenKernelFlow
    from mflow.geometry import volume
    from mflow.geometry.presets import manifold
    from mflow.kernels import GaussianFS

    s = manifold("fermat_quintic")
    t = time.perf_counter()
    train, test = sample_pointset(s, n, 0), sample_pointset(s, n, 1)
    t_sample = time.perf_counter() - t
    kappa = float(volume.kappa(train.weights, volume.real_det(train.g_fs), train.omega_sq))
    dev = None if device == "cpu" else device
    f = FrozenKernelFlow(s, GaussianFS(SIGMA, inverse=True), lr=1e-3, reduction="mean", cache_mb=0.0,
                         precision=precision, device=dev).attach(train, kappa)
    rows = torch.arange(f.n_train)
    out = {"n_train": f.n_train, "precision": precision, "device": device, "threads": torch.get_num_threads(),
           "sample_seconds": t_sample}
    t = time.perf_counter()
    info = f.flow_step()
    out["seconds_per_step"] = time.perf_counter() - t
    out["backtracks"] = info["backtracks"]
    t = time.perf_counter()
    g = f.predict_metric(test)
    out["predict_seconds"] = time.perf_counter() - t
    out["test_points"] = len(test)
    out["test_sigma_after_one_step"] = float(test.sigma(g))
    if check:  # the same update in float64 on the same points
        _, G = f.gradient(rows)
        mine = f._update(rows, rows, G, None, shard=False)
        f.tile_dtype = torch.float64
        ref = f._update(rows, rows, G, None, shard=False)
        out["max_relative_difference_to_float64"] = float((mine - ref).abs().max() / ref.abs().max())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(n: int, precision: str, device: str, check: bool) -> dict:
    args = [sys.executable, __file__, "--child", str(n), precision, device, str(int(check))]
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        return {"n": n, "precision": precision, "error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--precision", nargs="+", default=["float64", "float32"], choices=("float64", "float32"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--check_max", type=int, default=30_000, help="largest N whose float32 update is checked against float64")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if a.child:
        n, precision, device, check = a.child
        print(json.dumps(child(int(n), precision, device, bool(int(check)))))
        return
    res = {"kernel": f"gaussian, inverse width sigma = {SIGMA} (eq. 3.5, Table 1)", "chart_mode": "ambient",
           "components": 9, "loss": "sigma", "batch": "all train points (unclustered)",
           "goal": "one 100k-point step <= 60 s and < 4 GB on 2 CPU cores",
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
           "runs": []}
    for precision in a.precision:
        for n in a.sizes:
            r = run_child(n, precision, a.device, precision == "float32" and n <= a.check_max)
            res["runs"].append(r)
            print(json.dumps(r), flush=True)
    for precision in a.precision:
        ok = [r for r in res["runs"] if r.get("precision") == precision and "seconds_per_step" in r]
        if len(ok) >= 2:
            res[f"time_exponent_{precision}"] = fit_power_law([r["n_train"] for r in ok], [r["seconds_per_step"] for r in ok])[1]
        big = [r for r in ok if r["n_train"] >= 100_000]
        if big:
            res[f"goal_met_{precision}"] = bool(big[-1]["seconds_per_step"] <= 60 and big[-1]["peak_rss_mb"] < 4096)
    res["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(Path(a.out), res)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
