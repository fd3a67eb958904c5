"""Batched vs full FS clustering on Fermat-quintic points (paper sec. 3.1, Figure 2).

Writes bench/results/clustering.json and bench/results/clustering_figure2.png. For each seed s:
1000 points sampled with seed s, full average-linkage clustering into 10 clusters, and batched
clustering (5 batches of 200, shuffle seed s) for every merge rule x cross-batch linkage; reports the
adjusted Rand index vs full clustering (and, as a stability baseline, the ARI of full clustering of
a random half of the points vs the full clustering restricted to that half), the mean intra-cluster FS distance (lower = tighter
clusters; random labels give about the overall mean distance) and wall times (2 threads).
usage: python bench/bench_clustering.py [--points 1000] [--clusters 10] [--batches 5] [--seeds 0 1 2]
"""
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mflow.cli.options import Parser
from mflow.geometry.distance import fs_distance_matrix
from mflow.geometry.presets import manifold
from mflow.geometry.points import sample
from mflow.data.clustering import LINKAGES, MERGES, agreement, batched_clustering, cluster_batch, cluster_figure

RESULTS = Path(__file__).resolve().parent / "results"


def intra(d: torch.Tensor, labels: torch.Tensor) -> float:
    same = labels[:, None] == labels[None, :]
    return float((d * same).sum() / same.sum())


def timed(f, *a, **k):
    t = time.perf_counter()
    out = f(*a, **k)
    return out, time.perf_counter() - t


def main(argv=None):
    p = Parser()
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    surface = manifold("fermat_quintic")
    batch_size = math.ceil(a.points / a.batches)
    runs = []
    for seed in a.seeds:
        z = sample(surface, a.points, seed).z
        d, t_dist = timed(fs_distance_matrix, z)
        full, t_full = timed(cluster_batch, z, a.clusters)
        half = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[: len(z) // 2]
        rand = torch.randint(0, a.clusters, (len(z),), generator=torch.Generator().manual_seed(seed))
        run = {
            "seed": seed,
            "n_points": len(z),
            "time_distance_matrix_s": t_dist,
            "time_full_s": t_full,
            "intra_full": intra(d, full),
            "intra_random": intra(d, rand),
            "mean_distance": float(d.mean()),
            # stability baseline: full clustering of a random half vs the full clustering restricted to it
            "ari_half_vs_full": agreement(cluster_batch(z[half], a.clusters), full[half]),
            "batched": {},
        }
        for merge in MERGES:
            for linkage in LINKAGES:
                lab, t = timed(batched_clustering, z, a.clusters, batch_size, seed, merge, linkage)
                run["batched"][f"{merge}/{linkage}"] = {"ari_vs_full": agreement(lab, full), "intra": intra(d, lab), "time_s": t}
        runs.append(run)
        print(f"seed {seed}: full {t_full:.2f}s, ARI " + ", ".join(f"{k} {v['ari_vs_full']:.3f}" for k, v in run["batched"].items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig = RESULTS / "clustering_figure2.png"
    z0 = sample(surface, a.points, a.seeds[0]).z
    res, t_fig = timed(cluster_figure, z0, fig, a.clusters, a.batches, a.seeds[0])
    summary = {}
    for key in runs[0]["batched"]:
        aris = [r["batched"][key]["ari_vs_full"] for r in runs]
        summary[key] = {
            "ari_mean": sum(aris) / len(aris),
            "ari_min": min(aris),
            "ari_max": max(aris),
            "intra_mean": sum(r["batched"][key]["intra"] for r in runs) / len(runs),
            "time_mean_s": sum(r["batched"][key]["time_s"] for r in runs) / len(runs),
        }
    out = {
        "config": {"manifold": "fermat_quintic", "points": a.points, "clusters": a.clusters, "batches": a.batches,
                   "batch_size": batch_size, "seeds": a.seeds, "default": "greedy/complete (paper eq. 3.3)"},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "summary": summary,
        "intra_full_mean": sum(r["intra_full"] for r in runs) / len(runs),
        "intra_random_mean": sum(r["intra_random"] for r in runs) / len(runs),
        "ari_half_vs_full_mean": sum(r["ari_half_vs_full"] for r in runs) / len(runs),
        "time_full_mean_s": sum(r["time_full_s"] for r in runs) / len(runs),
        "runs": runs,
        "figure": {"path": str(fig), "ari_batched_vs_full": res["ari"], "time_s": t_fig},
    }
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(out, fh, indent=2)
    os.replace(tmp, RESULTS / "clustering.json")
    keys = ("summary", "intra_full_mean", "intra_random_mean", "ari_half_vs_full_mean", "time_full_mean_s", "figure")
    print(json.dumps({k: out[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
