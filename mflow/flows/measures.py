"""Measures as torchmetrics metrics (they accumulate over batches and sync under DDP)."""
from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mflow.geometry import volume


class SigmaMeasure(Metric):
    """Weighted sigma measure sum w |1 - eta| / sum w with the metric's own kappa (eq. B.11, mflow.geometry.volume.sigma).

    kappa needs the whole set, so per-point det g, |Omega|^2 and w are kept (concatenated across ranks
    under DDP) and sigma is formed at compute().
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("det_g", "omega_sq", "weights"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, det_g: torch.Tensor, omega_sq: torch.Tensor, weights: torch.Tensor) -> None:
        self.det_g.append(det_g.detach().double())
        self.omega_sq.append(omega_sq.detach().double())
        self.weights.append(weights.detach().double())

    def compute(self) -> torch.Tensor:
        return volume.sigma(dim_zero_cat(self.weights), dim_zero_cat(self.det_g), dim_zero_cat(self.omega_sq))


class WeightedMean(Metric):
    """sum w x / sum w over all batches and ranks (Kaehler, transition, volume, Ricci measures)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("num", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("den", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: torch.Tensor) -> None:
        self.num += (weight * value).sum().detach().double()
        self.den += weight.sum().detach().double()

    def compute(self) -> torch.Tensor:
        return self.num / self.den
