"""The bihomogeneous Kaehler-potential network: the model family of MLGeometry (Douglas, Lakshminarasimhan, Qi)
and of algebraic (Donaldson) metrics, as a head of mflow's.

On the invariant features u = Re, Im of z_i conj(z_j) / |z|^2 (mflow.models.metric.invariant_features), linear
layers without biases and square activations,

    y_1 = (W_1 u)^2,   y_l = (W_l y_(l-1))^2,   Q = sum_c exp(v_c) y_c,

make Q > 0 a homogeneous polynomial of degree D = 2^depth in u, i.e. Q = P(z, zbar) / |z|^(2D) with P
bihomogeneous of degree (D, D). Its potential K = log P / (D pi) gives

    g = d dbar K = g_FS + d dbar phi,   phi = log Q / (D pi),

Kaehler and in the class of the FS form by construction, like the phifs head. MLGeometry's quintic network
("k = 4": two square layers of widths 70 and 100) is this with depth 2.

In a product of projective spaces u holds every factor's invariant features: Q is then a positive polynomial in
all of them (not of one degree in each factor's z: the statements about |z|^(2D) above are one P^n's), phi still
a function on the ambient space, and g = g_FS + d dbar phi stays in the class of J; the diagonal features sum to
m (one per factor) instead of 1.

Initialisation: W_1 reads the diagonal features (sum_i |z_i|^2 / |z|^2 = 1), W_l is the identity, each plus
Gaussian noise of size `noise`, so Q is nearly constant and g starts near g_FS (positive definite).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import taylor
from .mlp import Dense, Square


class BihomogeneousNet(nn.Module):
    """Q(u) of the module doc: u [N, (n+1)^2] -> [N, 1], positive, homogeneous of degree 2^depth in u."""

    def __init__(self, sizes, width: int = 64, depth: int = 2, noise: float = 0.01):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"the bihomogeneous head needs width and depth >= 1, got width={width}, depth={depth}")
        sizes = [sizes] if isinstance(sizes, int) else list(sizes)  # n_i + 1 of each factor

        def diagonal_of(n1):  # the features |z_i|^2 / |z|^2 of one factor (module doc's layout)
            iu = torch.triu_indices(n1, n1)
            return torch.cat([iu[0] == iu[1], torch.zeros(n1 * n1 - iu.shape[1], dtype=torch.bool)])

        diagonal = torch.cat([diagonal_of(n1) for n1 in sizes]).double()
        layers: list[nn.Module] = []
        for i in range(depth):
            start = diagonal.expand(width, -1) if i == 0 else torch.eye(width, dtype=torch.float64)
            layer = Dense(start.shape[1], width, bias=False)
            with torch.no_grad():
                layer.weight.copy_(start + noise * torch.randn_like(start))
            layers += [layer, Square()]
        self.layers = nn.Sequential(*layers)
        self.log_w = nn.Parameter(torch.zeros(width, 1, dtype=torch.float64))
        self.degree = 2**depth
        self.scale = 1 / (self.degree * math.pi)

    def readout(self, dtype: torch.dtype) -> torch.Tensor:
        """Positive read-out weights exp(v): [width, 1]."""
        return self.log_w.exp().to(dtype)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.layers(u) @ self.readout(u.dtype)

    def potential(self, u: torch.Tensor) -> torch.Tensor:
        """phi = log Q / (D pi): [N, F] -> [N, 1]."""
        return torch.log(self(u)) * self.scale

    def potential_jet(self, u: torch.Tensor, du: torch.Tensor, ddu: torch.Tensor):
        """Jet of phi = log Q / (D pi) from the features' jets (mflow.models.taylor's layout): -> [N, 1] etc."""
        y, dy, ddy = taylor.mlp_ddbar(self.layers, u, du, ddu)
        w = self.readout(y.dtype)
        return tuple(self.scale * t for t in taylor.log_jet(y @ w, dy @ w, ddy @ w))
