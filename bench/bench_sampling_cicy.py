"""Sampling speed on the presets of products of projective spaces (and the quintic beside them): 100k points with
charts, pullbacks, g_FS and weights, best of 3 after a warm-up, 2 threads; writes bench/results/sampling-cicy.json
(the full quintic benchmark, also for any --manifold, is bench_sampling.py).

Usage: python bench/bench_sampling_cicy.py
"""
import os
import time
from pathlib import Path

import torch

from mflow.geometry.points import sample
from mflow.geometry.presets import manifold
from mflow.io import write_json


def main() -> None:
    torch.set_num_threads(2)
    out = {"threads": 2, "loadavg_at_start": os.getloadavg()}
    for name in ["fermat_quintic", "bicubic", "p1p3", "tetraquadric", "two_cubics"]:
        X = manifold(name, psi=0.5) if name == "two_cubics" else manifold(name)
        sample(X, 2000, 0)  # warm-up
        times = []
        for seed in range(3):
            t = time.perf_counter()
            P = sample(X, 100_000, seed)
            times.append(time.perf_counter() - t)
        out[name] = {"seconds_100k_best_of_3": min(times), "seconds_all": times, "points": len(P),
                     "max_relative_residual": float(X.residual(P.z).max())}
        print(name, [round(x, 2) for x in times], flush=True)
    out["loadavg_at_end"] = os.getloadavg()
    write_json(Path(__file__).parent / "results" / "sampling-cicy.json", out)


if __name__ == "__main__":
    main()
