"""Which torch thread count is fastest for each job on this machine (it sets the default of train.py's
--num_threads): seconds per epoch of the network configs and of a kernel flow, and seconds of an
evaluation, at 1 and at all cores. Writes bench/results/threads.json.

    python bench/bench_threads.py [--points 100000]
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mflow.cli.options import Parser
from mflow.io import write_json

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"


def train(config: str, threads: int, run: Path, *extra) -> dict:
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "conf" / config), f"--run_dir={run}",
                    f"--num_threads={threads}", "--wandb=off", "--trainer.callbacks=[]", "--test=false", *extra],
                   check=True, capture_output=True, cwd=ROOT)
    s = json.loads((run / "summary.json").read_text())
    return {"seconds_per_epoch": s["seconds_per_epoch"], "wall_seconds": time.perf_counter() - t,
            "val_sigma": s["sigma_final"]["val"]}


def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--points", type=int, default=100_000)
    a = p.parse_args(argv)
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    jobs = {
        "network multfs, batch 128 (conf/default.yaml)": ("default.yaml", [f"--data.n_points={a.points}", "--trainer.max_epochs=1"]),
        "network phifs, batch 256 (conf/best.yaml)": ("best.yaml", [f"--data.n_points={a.points}", "--trainer.max_epochs=1"]),
        "network multfs, batch 4096": ("default.yaml", [f"--data.n_points={a.points}", "--trainer.max_epochs=1",
                                                        "--data.batch_size=4096"]),
        "kernel flow gaussian, 2500 points (conf/kernel_gaussian.yaml)": ("kernel_gaussian.yaml", ["--trainer.max_epochs=30"]),
    }
    res = {"machine": {"cores": cores, "torch": torch.__version__}, "jobs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, extra) in jobs.items():
            res["jobs"][name] = {str(n): train(config, n, Path(tmp) / f"{config}-{n}-{len(res['jobs'])}", *extra) for n in counts}
            print(name, {n: round(v["seconds_per_epoch"], 3) for n, v in res["jobs"][name].items()}, flush=True)
        ckpt = next((Path(tmp) / "default.yaml-1-0" / "checkpoints").glob("last.ckpt"))
        ev = {}
        for n in counts:
            t = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--ckpt_path", str(ckpt), "--out_dir", str(Path(tmp) / f"ev{n}"),
                            "--num_threads", str(n), "--quiet"], check=True, capture_output=True, cwd=ROOT)
            ev[str(n)] = {"wall_seconds": time.perf_counter() - t}
        res["jobs"]["evaluate.py (10k test points, noise levels, Ricci)"] = ev
        print("evaluate", {n: round(v["wall_seconds"], 1) for n, v in ev.items()}, flush=True)
    write_json(OUT / "threads.json", res)
    return res


if __name__ == "__main__":
    main()
