"""A second-order finish: full-batch L-BFGS on the network of a trained NetworkFlow checkpoint.

Adam's noisy steps leave the sigma loss at a floor set by the step size and the batch; a few full-batch
quasi-Newton iterations (torch.optim.LBFGS with a strong-Wolfe line search) on the same train points take it
further (MLGeometry finishes its Adam epochs the same way). The loss is the run's own: its loss terms with the
fixed kappa of the FS metric on the train split (a moduli family's points carry their own, as in training), summed
over the whole split in chunks (memory O(chunk)).

finish.py (mflow.cli.finish) applies it to a checkpoint.
"""
from __future__ import annotations

import torch

from mflow import losses as losses_
from mflow.geometry.points import CYPoints


def full_batch_loss(module, points: CYPoints, chunk: int) -> torch.Tensor:
    """The run's loss on all the points, its gradient accumulated chunk by chunk: returns the (detached) loss.

    The chunks' losses are weighted by their share of the total weight: the sum is the whole set's loss for every
    term that is a weighted mean of a pointwise quantity (all but volume: that term is the weight-weighted mean of
    its chunks' volume losses, as in training it is the mean of its batches', not the whole set's volume loss).
    """
    total_w = float(points.weights.sum())
    total = 0.0
    for i in range(0, len(points), chunk):
        b = {k: v.to(module.device) for k, v in points[i : i + chunk].as_batch().items()}
        g = module.metric(b)
        loss, _ = losses_.total_loss(module.model, b, b.get("kappa", module.kappa), module.loss_weights, g=g)
        part = loss * float(b["weights"].sum()) / total_w
        part.backward()
        total += float(part.detach())
    return torch.tensor(total, dtype=torch.float64)


def lbfgs_finish(module, points: CYPoints, iterations: int = 20, chunk: int = 4096, history: int = 20) -> list[float]:
    """Full-batch L-BFGS (strong-Wolfe line search) on module.model for `iterations` iterations: returns the loss
    after each closure evaluation. The module's parameters are updated in place."""
    params = [p for p in module.model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=history, line_search_fn="strong_wolfe")
    trace: list[float] = []

    def closure():
        opt.zero_grad()
        loss = full_batch_loss(module, points, chunk)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {float(loss)} during the L-BFGS finish: use fewer iterations")
        trace.append(float(loss))
        return loss

    module.train()
    with torch.compiler.set_stance("force_eager"):  # each new chunk size would recompile a compiled network
        opt.step(closure)
    module.eval()
    return trace
