"""Points on X with everything the metric flows need, computed once (REFERENCE.md section 1)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from . import charts
from .hypersurface import RDTYPE, Hypersurface
from .sampling import sample_points
from .volume import mc_weights, real_det


@dataclass
class CYPoints:
    """A batch of N points of X in their preferred charts.

    z [N, n+1] complex (z_patch = 1), patch / elim [N] int64, pullback [N, n-1, n+1],
    omega_sq [N], g_fs [N, n-1, n-1] (pulled-back FS metric), weights [N].
    """

    z: torch.Tensor
    patch: torch.Tensor
    elim: torch.Tensor
    pullback: torch.Tensor
    omega_sq: torch.Tensor
    g_fs: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, idx) -> "CYPoints":
        return CYPoints(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @property
    def features(self) -> torch.Tensor:
        """Real network input [Re z_0..Re z_n, Im z_0..Im z_n]: [N, 2(n+1)] float64."""
        return features(self.z)

    @property
    def chart_id(self) -> torch.Tensor:
        """One integer per chart, patch * (n+1) + elim: [N]."""
        return self.patch * self.z.shape[-1] + self.elim


def features(z: torch.Tensor) -> torch.Tensor:
    """[Re z, Im z]: [..., n+1] complex -> [..., 2(n+1)] float64."""
    return torch.cat([z.real, z.imag], -1).to(RDTYPE)


def cy_points(surface: Hypersurface, z: torch.Tensor, drop_ties: bool = True) -> CYPoints:
    """Charts, |Omega|^2, pullbacks, FS metric and MC weights of points z [N, n+1] on X (refuses singular points)."""
    if drop_ties:
        z = z[~charts.ties_for_largest(z)]
    z, dp, patch, elim = charts.choose_chart(surface, z)
    surface.check_smooth_at(z, dp)
    J = charts.pullback(dp, patch, elim)
    g_fs = charts.pull_back(J, charts.fs_metric(z))
    om = charts.omega_sq(dp, elim)
    w = mc_weights(om, real_det(g_fs), surface.degree)
    return CYPoints(z, patch, elim, J, om, g_fs, w)


def sample(surface: Hypersurface, n_points: int, seed: int) -> CYPoints:
    """n_points Shiffman-Zelditch points with their geometry, reproducible from the seed."""
    gen = torch.Generator().manual_seed(seed)
    return cy_points(surface, sample_points(surface, n_points, gen))
