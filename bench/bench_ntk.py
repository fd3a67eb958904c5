"""Empirical metric-NTK (eq. 2.7) of a 3x64 MultFS model on Fermat-quintic probe points: all methods.

Writes bench/results/ntk.json. For method in (structured, jacobian, vp) (mflow.ntk): the 'full' kernel [N, N, 9, 9] on N probe
points (default 256) of MetricModel(fermat_quintic, 'multfs', depth=3, width=64, GELU), each method in
a fresh subprocess (so its peak memory is its own): wall seconds of a first (cold: includes torch.func
start-up) and a second (warm) call, peak resident memory of the process (ru_maxrss) and its increase
over the peak before the first call; then the max abs difference between the kernels (every pair)
and the symmetry error (max_rel_diff: relative to the kernel's largest entry; out_scale = 0.01 makes
the kernel small, about 1e-5). Targets: warm <= 2 s, peak increase <= 1 GB, agreement <= 1e-10 (float64).
Each thread count given is a separate set of runs (``--num_threads 2 1``: 2 threads, as the project's
default machine, and 1 thread, which is faster on a loaded 2-core machine: small ops stop waiting
for a busy second core); the targets are checked on the best.
usage: python bench/bench_ntk.py [--points 256] [--width 64] [--depth 3] [--kind full] [--num_threads 2 1]
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mflow.cli.options import Parser
from mflow.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("structured", "jacobian", "vp")
TARGETS = {"seconds": 2.0, "peak_bytes": 1e9, "max_abs_diff": 1e-10}


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(a) -> None:
    """One method in this process: prints a JSON line, saves the kernel to a.out."""
    torch.set_num_threads(a.num_threads[0])
    from mflow import ntk
    from mflow.geometry.presets import manifold
    from mflow.geometry.points import sample
    from mflow.models.metric import MetricModel

    q = manifold("fermat_quintic")
    pts = sample(q, a.points, seed=0)
    torch.manual_seed(0)
    model = MetricModel(q, "multfs", depth=a.depth, width=a.width, activation="gelu")
    p = ntk.metric_plan(model, pts, kind=a.kind, method=a.method)
    rss0 = _rss()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        K = ntk.metric_ntk(model, pts, kind=a.kind, method=a.method)
        times.append(time.perf_counter() - t)
    peak = _rss()
    torch.save(K, a.out)
    print(json.dumps({
        "method": a.method, "seconds_cold": times[0], "seconds": times[1], "peak_rss_bytes": peak,
        "peak_increase_bytes": peak - rss0, "estimated_bytes": p.total_bytes, "block": p.block, "chunk": p.chunk,
        "parameters": p.parameters, "shape": list(K.shape),
    }))


def main(argv=None):
    ap = Parser()
    ap.add_argument("--points", type=int, default=256)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--kind", default="full")
    ap.add_argument("--num_threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)  # worker mode
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.method is not None:
        return worker(a)
    by_threads, kernels = {}, {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for th in a.num_threads:
            runs = by_threads[th] = {}
            for method in METHODS:
                out = Path(tmp) / f"{method}.pt"
                cmd = [sys.executable, __file__, f"--points={a.points}", f"--width={a.width}", f"--depth={a.depth}",
                       f"--kind={a.kind}", f"--num_threads={th}", f"--method={method}", f"--out={out}"]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[method] = json.loads(res.stdout.strip().splitlines()[-1])
                kernels[method] = torch.load(out)
                print(f"threads={th}", method, runs[method], flush=True)
    best = {}
    for m in METHODS:  # each method at its fastest thread count
        th = min(by_threads, key=lambda t: by_threads[t][m]["seconds"])
        best[m] = {**by_threads[th][m], "threads": th}
    Kj = kernels["jacobian"]
    diffs = {f"{a}-{b}": float((kernels[a] - kernels[b]).abs().max()) for i, a in enumerate(METHODS) for b in METHODS[i + 1 :]}
    diff = max(diffs.values())
    sym = float((Kj - (Kj.permute(1, 0, 3, 2) if Kj.ndim == 4 else Kj.transpose(0, 1))).abs().max())
    result = {
        "benchmark": "empirical metric-NTK, 3x64 MultFS (GELU, standard parametrisation), Fermat quintic",
        "kind": a.kind, "points": a.points, "components": 9, "width": a.width, "depth": a.depth,
        "threads": a.num_threads, "methods": best, "by_threads": by_threads, "max_abs_diff": diff, "pairwise_max_abs_diff": diffs,
        "kernel_max_abs": float(Kj.abs().max()), "max_rel_diff": diff / float(Kj.abs().max()),
        "symmetry_error": sym, "targets": TARGETS,
        "meets_targets": {
            m: {"seconds": r["seconds"] <= TARGETS["seconds"], "peak": r["peak_increase_bytes"] <= TARGETS["peak_bytes"]}
            for m, r in best.items()
        } | {"agreement": diff <= TARGETS["max_abs_diff"]},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    write_json(RESULTS / "ntk.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
