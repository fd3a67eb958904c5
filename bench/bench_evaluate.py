"""evaluate.py benchmark; writes bench/results/evaluate.json.

Evaluates a network checkpoint (/work/runs/best_v1/checkpoints/last.ckpt, a MultFS 3x128 trained on 100k
quintic points, when it exists; else a tiny one trained here) on 100k fresh test points with the default
evaluation settings (8 Gaussian-noise levels and 6 on-manifold distances of 1000 points each, distances
of 2000 test points to the train set, Ricci measure on 500 train and 500 test points): wall seconds,
target <= 60 s on 2 cores (the time of the whole evaluation, restoring the train split included, the Python
start-up and imports excluded; they are recorded apart).

Wall times are only meaningful on an otherwise idle machine: loadavg at start and end and the CPU seconds
are recorded beside them.

Usage: python bench/bench_evaluate.py [--ckpt_path PATH] [--n_test 100000] [--num_threads 2] [--out bench/results/evaluate.json]
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mflow.cli.options import Parser  # noqa: E402
from mflow import evaluation  # noqa: E402
from mflow.io import write_json  # noqa: E402

BEST = Path("/work/runs/best_v1/checkpoints/last.ckpt")
TARGET_SECONDS = 60.0


def tiny_checkpoint(d: Path) -> Path:
    from mflow.cli.train import main

    main([f"--run_dir={d / 'run'}", f"--data.cache_dir={d / 'data'}", "--data.n_points=2000", "--wandb=off",
          "--trainer.max_epochs=2", "--model.width=32", "--test=false", "--trainer.enable_progress_bar=false"])
    return d / "run" / "checkpoints" / "last.ckpt"


def main() -> None:
    ap = Parser()
    ap.add_argument("--ckpt_path", default=None)
    ap.add_argument("--n_test", type=int, default=100_000)
    ap.add_argument("--num_threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "evaluate.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.num_threads)
    imports = time.perf_counter() - T_START
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(a.ckpt_path) if a.ckpt_path else (BEST if BEST.exists() else tiny_checkpoint(Path(tmp)))
        t, c = time.perf_counter(), time.process_time()
        rep, _ = evaluation.evaluate([ckpt], Path(tmp) / "eval", n_test=a.n_test, device="auto")
        secs, cpu = time.perf_counter() - t, time.process_time() - c
    r = rep["checkpoints"][0]
    curve = {
        mode: [{"level": e.get("variance", e.get("distance")), "mean_distance_to_train": e["distance_to_train"]["mean"],
                "sigma": e["sigma"], "sigma_fs": e["sigma_fs"], "gain": e["gain"]} for e in r["noised"][mode]]
        for mode in ("gaussian", "manifold")
    }
    result = {
        "checkpoint": str(ckpt), "label": r["label"], "torch": torch.__version__, "threads": a.num_threads,
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "device": r["device"],
        "loadavg_at_start": load0, "n_test": r["test"]["n"], "n_train": r["train"]["n"],
        "settings": rep["settings"],
        "seconds": secs, "cpu_seconds_all_threads": cpu, "seconds_by_part": r["seconds"],
        "python_start_and_imports_seconds": imports,
        "target_seconds": TARGET_SECONDS, "meets_target": secs <= TARGET_SECONDS,
        "train": {k: r["train"][k] for k in ("sigma_fs", "sigma", "gain", "ricci")},
        "test": {k: r["test"][k] for k in ("sigma_fs", "sigma", "gain", "ricci", "distance_to_train")},
        "noised": curve,
        "loadavg_at_end": os.getloadavg(),
    }
    path = write_json(a.out, result)
    print(f"[bench] evaluate: {secs:.1f} s for {r['test']['n']} test points (target {TARGET_SECONDS:.0f} s) -> {path}")


if __name__ == "__main__":
    main()
