"""The empirical metric-NTK of a given (trained) metric network, frozen, as the kernel of the frozen flow (eq. 2.7, 2.12).

Unlike the scalar kernels (Theta = delta_ik delta_jl k), this is the network's full metric-NTK
Theta_ijkl(x, x') over the real components of g, with each point's metric in its own chart (the network computes
g(x) in x's chart), applied matrix-free by NTK-vector products (mflow.ntk.vp.ntk_vp): the flow's update at x is
    dr(x) = -lr sum_{x'} Theta(x, x') dL/dr(x'),    r = real_components(g),
which is exactly one SGD step of the network's linearisation at these parameters (eq. 2.10-2.12): frozen at a
checkpoint taken after training it is the "after kernel".
"""
from __future__ import annotations

import torch
from torch import nn

from mflow.geometry.forms import dual_components, hermitian
from mflow.ntk.vp import ntk_vp

BASES = ("fs", "network")


class NetworkNTK:
    """The frozen metric-NTK of ``model`` (any metric model: MetricModel, LinearizedModel, ...) at its current
    parameters. base: the metric the flow starts from and adds its corrections to: 'fs' (g_FS, as for every
    kernel) or 'network' (the model's own metric: then the flow is the linearised network's SGD)."""

    acts_on_components = True  # FrozenKernelFlow applies it to the metric components directly (no chart handling)
    uses = "z"

    def __init__(self, model: nn.Module, base: str = "fs", block: int = 2048):
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        self.model, self.base, self.block = model.eval(), base, block
        self.params = {k: v.detach() for k, v in model.named_parameters()}
        if not self.params:
            raise ValueError("the network has no parameters: its metric-NTK is zero")

    def __repr__(self):
        return f"NetworkNTK({type(self.model).__name__}, base={self.base!r})"

    def apply_metric(self, tgt: dict, src: dict, V: torch.Tensor) -> torch.Tensor:
        """sum_{x'} Theta(x, x') V(x') for gradient-type V [Ns, m, m] (Hermitian, each in its point's chart):
        -> [Nt, m, m] Hermitian, in the targets' charts."""
        v = dual_components(V)
        A = (tgt["z"], tgt["patch"], tgt["elim"])
        B = (src["z"], src["patch"], src["elim"])
        return hermitian(ntk_vp(self.model, A, B, v, params=self.params, block=self.block), V.shape[-1])

    @torch.no_grad()
    def base_metric(self, points: dict) -> torch.Tensor | None:
        """The model's metric at the points for base 'network' (None for 'fs': g_FS)."""
        if self.base == "fs":
            return None
        return torch.cat([self.model(points["z"][i : i + self.block], points["patch"][i : i + self.block],
                                     points["elim"][i : i + self.block]) for i in range(0, len(points["z"]), self.block)])
