"""Step time against width (issue "Feature learning at scale": it sizes the width study's budget): seconds per
optimizer step (forward, loss, backward, Adam) of a metric network on Fermat-quintic points, per head and width,
outside Lightning (the loop's own ~3 ms per step is in bench_training.py). Run it on a quiet machine.

    python bench/bench_width.py [--widths 64 128 256 512 1024 2048] [--batch_size 256] [--num_threads 2]

Writes bench/results/width-step-time.json.
"""
import statistics
import time
from pathlib import Path

import torch

from mflow import losses
from mflow.cli.options import Parser
from mflow.flows.network import NetworkFlow
from mflow.geometry import volume
from mflow.geometry.points import sample
from mflow.geometry.presets import manifold
from mflow.io import write_json

OUT = Path(__file__).resolve().parent / "results" / "width-step-time.json"
# (head, activation, precision, loss): the width study's candidates
HEADS = (("phifs", "gelu", "float32", "sigma"), ("multfs", "relu", "float64", "ultra_local_square"))


def step_seconds(surface, batch, head, activation, precision, loss, width, steps: int, warmup: int = 3) -> float:
    """Median wall seconds of one training step."""
    flow = NetworkFlow(surface, head=head, depth=3, width=width, activation=activation, precision=precision,
                       loss_weights={loss: 1.0}, out_scale=0.01)
    opt = flow.configure_optimizers()["optimizer"]
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad()
        total, _ = losses.total_loss(flow.model, batch, batch["kappa"], flow.loss_weights)
        total.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num_threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.num_threads)
    surface = manifold("fermat_quintic")
    pts = sample(surface, a.batch_size, seed=1)
    batch = pts.as_batch()
    batch["kappa"] = volume.kappa(pts.weights, volume.real_det(pts.g_fs), pts.omega_sq)
    out = {"batch_size": a.batch_size, "num_threads": a.num_threads, "heads": {}}
    for head, act, prec, loss in HEADS:
        rows = {}
        for w in a.widths:
            s = step_seconds(surface, batch, head, act, prec, loss, w, a.steps)
            rows[w] = {"seconds_per_step": s, "seconds_per_10k_points": s * 10_000 / a.batch_size}
            print(f"{head:7s} width {w:5d}: {s * 1e3:8.1f} ms per step of {a.batch_size}", flush=True)
        out["heads"][f"{head}-{act}-{prec}"] = rows
    write_json(OUT, out)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
