"""Seconds per frozen-kernel flow step vs N, clustered and unclustered, and the unclustered N that fits 4 GB.

    python bench/bench_kernel_flow.py [--sizes 1000 2000 5000 10000 20000] [--big 100000] [--threads 2]

Writes bench/results/kernel_flow.json. Every measurement runs in its own subprocess (so that its peak
resident memory, ru_maxrss, is its own). Kernel: Gaussian on the FS distance (eq. 3.5), sigma = 1/30,
sigma loss, ambient chart mode (the default), fermat quintic.
  * unclustered: full batch (B = all N train points), cache_mb = 0: every step recomputes the kernel in
    [block, block] tiles (memory O(N + block^2), never N^2): one step costs N^2 kernel evaluations.
  * clustered: clusters of ~``cluster`` points (batched clustering, M = min(N, 5000)); one "step" = one
    flow step on every cluster (an epoch); the kernel matrices of the clusters are cached (sum of
    n_c^2 * 8 bytes), so the first epoch builds them and later epochs are matrix products.
  * big: N = --big unclustered; one full step would take long on 2 cores, so the kernel sum is timed on
    the first ``probe`` receiving rows (all N sources) and scaled by N / probe (stated as an estimate).
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

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "kernel_flow.json"
SIGMA = 1 / 30


def _setup(n_train: int, seed: int = 0):
    from mflow.data.pointset import sample_pointset
    from mflow.geometry import volume
    from mflow.geometry.hypersurface import manifold

    s = manifold("fermat_quintic")
    t = time.perf_counter()
    p = sample_pointset(s, n_train, seed)
    t_sample = time.perf_counter() - t
    kappa = float(volume.kappa(p.weights, volume.real_det(p.g_fs), p.omega_sq))
    return s, p, kappa, t_sample


def child(mode: str, n: int, threads: int, cluster: int, probe: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from mflow.flows import FrozenKernelFlow
    from mflow.kernels import GaussianFS

    s, p, kappa, t_sample = _setup(n)
    out = {"mode": mode, "n_train": len(p), "threads": threads, "sample_seconds": t_sample}
    if mode == "unclustered":
        f = FrozenKernelFlow(s, GaussianFS(SIGMA), lr=0.03, reduction="sum", cache_mb=0.0).attach(p, kappa)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            f.flow_step()
            times.append(time.perf_counter() - t)
        out.update(seconds_per_step=min(times), steps=steps, kernel_evaluations_per_step=len(p) ** 2)
    elif mode == "clustered":
        from mflow.data.clustered import cluster_points

        k = max(1, round(len(p) / cluster))
        t = time.perf_counter()
        labels = cluster_points(p, s, k, min(len(p), 5000), seed=0)
        out["clustering_seconds"] = time.perf_counter() - t
        f = FrozenKernelFlow(s, GaussianFS(SIGMA), lr=0.03, reduction="sum", cache_mb=4096.0).attach(p, kappa, labels)
        t = time.perf_counter()
        f.flow_step()  # one step per cluster; builds and caches the cluster kernels
        first = time.perf_counter() - t
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            f.flow_step()
            times.append(time.perf_counter() - t)
        sizes = torch.bincount(labels)
        out.update(n_clusters=k, cluster_size_min=int(sizes.min()), cluster_size_max=int(sizes.max()),
                   first_epoch_seconds=first, seconds_per_step=min(times), steps=steps,
                   cached_kernel_mb=f._cache_bytes / 2**20)
    else:  # big: time the kernel sum for `probe` receiving rows against all N sources, then scale
        f = FrozenKernelFlow(s, GaussianFS(SIGMA), lr=0.03, reduction="sum", cache_mb=0.0).attach(p, kappa)
        rows = torch.arange(len(p))
        t = time.perf_counter()
        _, G = f.gradient(rows)
        t_grad = time.perf_counter() - t
        t = time.perf_counter()
        f._update(torch.arange(probe), rows, G, shard=False)
        t_probe = time.perf_counter() - t
        out.update(probe_rows=probe, probe_seconds=t_probe, gradient_seconds=t_grad,
                   estimated_seconds_per_step=t_grad + t_probe * len(p) / probe, estimate=True)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(args: list[str]) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        return {"args": args, "error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000])
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cluster", type=int, default=1000, help="points per cluster (clustered mode)")
    ap.add_argument("--probe", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--unclustered-max", type=int, default=20000, help="largest N timed with full unclustered steps")
    ap.add_argument("--child", nargs=6, metavar=("MODE", "N", "THREADS", "CLUSTER", "PROBE", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if a.child:
        mode, n, threads, cluster, probe, steps = a.child
        print(json.dumps(child(mode, int(n), int(threads), int(cluster), int(probe), int(steps))))
        return
    res = {"kernel": f"gaussian sigma={SIGMA:.5g} (eq. 3.5)", "chart_mode": "ambient", "loss": "sigma",
           "machine": {"cpus": os.cpu_count(), "threads": a.threads, "platform": platform.platform(),
                       "load_average_at_start": os.getloadavg()},
           "unclustered": [], "clustered": [], "big": None}
    common = [str(a.threads), str(a.cluster), str(a.probe), str(a.steps)]
    for n in a.sizes:
        for mode in ("clustered", "unclustered"):
            if mode == "unclustered" and n > a.unclustered_max:
                continue
            r = run_child([mode, str(n), *common])
            res[mode].append(r)
            print(json.dumps(r), flush=True)
    if a.big:
        r = run_child(["big", str(a.big), *common])
        res["big"] = r
        print(json.dumps(r), flush=True)
        if "peak_rss_mb" in r:
            res["largest_unclustered_n_within_4gb"] = {
                "n": r["n_train"], "peak_rss_mb": r["peak_rss_mb"], "fits": r["peak_rss_mb"] < 4096,
                "seconds_per_step_estimated": r["estimated_seconds_per_step"],
                "note": "memory is O(N + block^2): the state, not the kernel; the step time is the limit, "
                        "estimated from a probe of the kernel rows",
            }
    res["machine"]["load_average_at_end"] = os.getloadavg()
    from mflow.io import write_json

    write_json(a.out, res)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
