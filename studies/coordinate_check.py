"""The muP coordinate check (Yang et al., "Tensor Programs V", fig. 5) on a real metric flow.

A MultFS network (3 hidden GELU layers) on Fermat-quintic points takes a few steps of its own optimizer on the
ultra-local loss (eq. B.12); the typical change of each hidden layer's activations, mean |h_t - h_0| over the
coordinates and the points, is measured at each width. Under muP (model.parametrization: mup) it does not depend
on the width, for Adam and for SGD: features move at every width. Under NTK parametrisation with SGD it shrinks
like width^-1/2: a wide network trains lazily, as its frozen kernel. tests/test_mup.py asserts the fitted
exponents; this script draws them.

    python studies/coordinate_check.py [--out_dir docs/figures] [--widths 64 128 256 512 1024 2048]

Writes <out>/coordinate_check.json, .md and .png.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow import losses  # noqa: E402
from mflow.cli.options import Parser  # noqa: E402
from mflow.flows.network import NetworkFlow  # noqa: E402
from mflow.geometry import volume  # noqa: E402
from mflow.geometry.points import sample  # noqa: E402
from mflow.geometry.presets import manifold  # noqa: E402
from mflow.io import pyplot, write_study  # noqa: E402
from mflow.models.mlp import Dense  # noqa: E402

STEPS = 3
OUT_SCALE = 0.01  # g stays near g_FS, so the loss gradient is the target's, alike at every width
# (parametrization, optimizer, lr): each learns at a comparable pace at width 64
ARMS = (("mup", "adam", 1e-3), ("mup", "sgd", 20.0), ("ntk", "sgd", 1000.0))


def probe_batch(surface, n_points: int = 256, seed: int = 11) -> dict:
    """Points of the surface as a batch, with their FS kappa."""
    pts = sample(surface, n_points, seed=seed)
    b = pts.as_batch()
    b["kappa"] = volume.kappa(pts.weights, volume.real_det(pts.g_fs), pts.omega_sq)
    return b


def hidden_activations(flow: NetworkFlow, batch: dict) -> list[torch.Tensor]:
    """The outputs of every hidden layer's activation in the flow's network on the batch."""
    out, hooks = [], []
    for layer in list(flow.model.net.net)[:-1]:
        if not isinstance(layer, Dense):
            hooks.append(layer.register_forward_hook(lambda mod, inp, o: out.append(o.detach().clone())))
    with torch.no_grad():
        flow.metric(batch)
    for h in hooks:
        h.remove()
    return out


def coordinate_changes(surface, batch: dict, parametrization: str, optimizer: str, lr: float, width: int,
                       steps: int = STEPS) -> list[float]:
    """mean |h_t - h_0| of each hidden layer after ``steps`` steps of the flow's own optimizer (its muP groups)."""
    flow = NetworkFlow(surface, head="multfs", depth=3, width=width, activation="gelu", parametrization=parametrization,
                       optimizer=optimizer, lr=lr, out_scale=OUT_SCALE, loss_weights={"ultra_local_square": 1.0},
                       init_seed=width)
    opt = flow.configure_optimizers()["optimizer"]
    h0 = hidden_activations(flow, batch)
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = losses.total_loss(flow.model, batch, batch["kappa"], flow.loss_weights)
        loss.backward()
        opt.step()
    return [float((a - b).abs().mean()) for a, b in zip(hidden_activations(flow, batch), h0)]


def exponents(widths, changes) -> list[float]:
    """Per layer, the least-squares exponent a of change ~ width^a; changes [n_widths][n_layers]."""
    x = [math.log(w) for w in widths]
    xm = sum(x) / len(x)
    out = []
    for k in range(len(changes[0])):
        y = [math.log(c[k]) for c in changes]
        ym = sum(y) / len(y)
        out.append(sum((a - xm) * (b - ym) for a, b in zip(x, y)) / sum((a - xm) ** 2 for a in x))
    return out


def main(argv=None) -> dict:
    p = Parser(description=__doc__.split("\n")[0], renamed={"--out": "--out_dir"})
    p.add_argument("--out_dir", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    a = p.parse_args(argv)
    surface = manifold("fermat_quintic")
    batch = probe_batch(surface)
    data = {"widths": a.widths, "steps": STEPS, "out_scale": OUT_SCALE, "arms": {}}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(ARMS), figsize=(4.2 * len(ARMS), 3.6), sharey=True)
    lines = ["| parametrisation | optimizer | lr | exponent a (layer 1, 2, 3) of mean abs dh ~ width^a |", "|---|---|---|---|"]
    for ax, (par, opt, lr) in zip(axes, ARMS):
        changes = [coordinate_changes(surface, batch, par, opt, lr, w) for w in a.widths]
        a_fit = exponents(a.widths, changes)
        data["arms"][f"{par}-{opt}"] = {"lr": lr, "changes": changes, "exponents": a_fit}
        lines.append(f"| {par} | {opt} | {lr:g} | {', '.join(f'{e:+.2f}' for e in a_fit)} |")
        for k in range(len(changes[0])):
            ax.loglog(a.widths, [c[k] for c in changes], "o-", label=f"hidden layer {k + 1}")
        ax.set_title(f"{par}, {opt}")
        ax.set_xlabel("width")
    axes[0].set_ylabel(f"mean |h - h_0| after {STEPS} steps")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    write_study(a.out_dir, "coordinate_check", data, "\n".join(lines) + "\n", fig)
    return data


if __name__ == "__main__":
    main()
