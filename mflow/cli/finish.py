"""finish.py: a second-order finish (full-batch L-BFGS, mflow.flows.finish) of a trained network's checkpoint.

    python finish.py --ckpt_path runs/<run>/checkpoints/last.ckpt [--iterations 20] [--out runs/<run>/finished.ckpt]

Writes the finished checkpoint (the run's checkpoint with the new weights and no optimizer state, sealed: evaluate.py
reads it) and <out>.json (sigma on train / val / test before and after, the loss at every evaluation, seconds).
"""
from __future__ import annotations

import time
from pathlib import Path

from mflow.evaluation.checkpoints import load_checkpoint, recorded_splits
from mflow.flows.checkpoint import AtomicCheckpointIO, read_checkpoint
from mflow.flows.finish import lbfgs_finish
from mflow.io import write_json

from .options import Parser, add_num_threads, set_threads


def finish_checkpoint(path, out=None, iterations: int = 20, chunk: int = 4096, log=print) -> dict:
    """L-BFGS-finish the network of a checkpoint (module doc); writes out (default <ckpt>-finished.ckpt) and its JSON."""
    path = Path(path)
    out = Path(out) if out is not None else path.with_name(path.stem + "-finished.ckpt")
    ck = load_checkpoint(path)
    if ck.kind != "network":
        raise ValueError(f"{path} holds a {ck.kind}: the L-BFGS finish applies to networks")
    splits = recorded_splits(ck)  # the run's own points, as its checkpoint records them
    module = ck.module  # its kappa (FS, train split) is a buffer of the checkpoint
    before = {k: module.measure(p)["sigma"] for k, p in splits.items()}
    log(f"[mflow] finish: L-BFGS, {iterations} iterations on {len(splits['train'])} train points (val sigma {before['val']:.4g})")
    t = time.perf_counter()
    trace = lbfgs_finish(module, splits["train"], iterations, chunk)
    seconds = time.perf_counter() - t
    measured = {k: module.measure(p) for k, p in splits.items()}
    after = {k: m["sigma"] for k, m in measured.items()}
    raw = read_checkpoint(path)
    raw["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    raw["optimizer_states"], raw["lr_schedulers"] = [], []
    raw["mflow"] = {**raw["mflow"], **module.checkpoint_meta(), "finished": {"iterations": iterations, "from": str(path)}}
    AtomicCheckpointIO().save_checkpoint(raw, out)
    report = {"checkpoint": str(path), "finished": str(out), "iterations": iterations, "evaluations": len(trace),
              "loss": trace, "seconds": seconds, "sigma_before": before, "sigma_after": after,
              "not_pd_after": {k: m["not_pd"] for k, m in measured.items()}}
    write_json(out.with_suffix(".json"), report)
    log(f"[mflow] finish: val sigma {before['val']:.4g} -> {after['val']:.4g}, test {before['test']:.4g} -> "
        f"{after['test']:.4g} in {seconds:.0f} s; wrote {out}")
    return report


def main(argv=None) -> int:
    p = Parser(prog="finish.py", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt_path", required=True, help="a NetworkFlow checkpoint")
    p.add_argument("--out", default=None, help="the finished checkpoint (default: <ckpt>-finished.ckpt beside it)")
    p.add_argument("--iterations", type=int, default=20, help="L-BFGS iterations (default 20)")
    p.add_argument("--chunk", type=int, default=4096, help="points per chunk of the full-batch loss (memory)")
    add_num_threads(p)
    a = p.parse_args(argv)
    if a.iterations < 1 or a.chunk < 1:
        raise ValueError("--iterations and --chunk must be >= 1")
    set_threads(a)
    finish_checkpoint(a.ckpt_path, a.out, a.iterations, a.chunk)
    return 0
