"""Points on X with everything the metric flows need, computed once (docs/conventions.md sections 2-4)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from . import charts
from .cicy import RDTYPE, CompleteIntersection
from .sampling import sample_points, system_index
from . import volume
from .volume import mc_weights


@dataclass
class CYPoints:
    """A batch of N points of X in their preferred charts.

    z [N, D] complex (each factor scaled to its patch), patch / elim [N] int64 (codes: mflow.geometry.charts), pullback [N, d, D],
    omega_sq [N], g_fs [N, d, d] (pulled-back metric of J = sum t_i J_i), weights [N];
    system [N] int64 or None: the sampling system of each point (equal labels: the same random subspaces,
    mflow.geometry.sampling.system_index; their use: mflow.geometry.montecarlo), None when unknown (every point then
    counts as its own system). Batches (as_batch) leave it out.
    """

    z: torch.Tensor
    patch: torch.Tensor
    elim: torch.Tensor
    pullback: torch.Tensor
    omega_sq: torch.Tensor
    g_fs: torch.Tensor
    weights: torch.Tensor
    system: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, idx) -> "CYPoints":
        return CYPoints(**{f.name: _apply(getattr(self, f.name), lambda t: t[idx]) for f in fields(self)})

    @property
    def features(self) -> torch.Tensor:
        """Real network input [Re z_0..Re z_n, Im z_0..Im z_n]: [N, 2D] float64."""
        return features(self.z)

    def as_batch(self) -> dict[str, torch.Tensor]:
        """The batch dict the flows and losses consume: {z, patch, elim, pullback, omega_sq, g_fs, weights}."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "system"}

    def sigma(self, g: torch.Tensor | None = None) -> torch.Tensor:
        """sigma of the metric g [N, d, d] on these points, its own kappa (eq. B.11); g_FS when g is None."""
        g = self.g_fs if g is None else g
        return volume.sigma(self.weights.to(g.device), volume.real_det(g), self.omega_sq.to(g.device))

    def to(self, device) -> "CYPoints":
        return CYPoints(**{f.name: _apply(getattr(self, f.name), lambda t: t.to(device)) for f in fields(self)})


def _apply(t, fn):
    """fn(t), None for None (the optional system labels)."""
    return None if t is None else fn(t)


RESIDUAL_TOL = 1e-6  # relative |p(z)| above which a point is not on the manifold (points of another X)


def check_points(points: CYPoints, surface: CompleteIntersection, what: str = "points", tol: float = RESIDUAL_TOL) -> None:
    """Refuse points of another P^n, NaN / inf anywhere, and points not on ``surface`` (relative |p| > tol)."""
    z = points.z
    if z.ndim != 2 or z.shape[-1] != surface.n_coords:
        raise ValueError(f"{what} have {z.shape[-1] if z.ndim == 2 else '?'} homogeneous coordinates, but "
                         f"{surface.name} lives in {surface.ambient} ({surface.n_coords}): points of another manifold?")
    for f in fields(points):
        t = getattr(points, f.name)
        if t is None:
            continue
        t = torch.view_as_real(t) if t.is_complex() else t
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{what} contain NaN or inf (in {f.name}): resample them or fix the input file")
    check_on_surface(z, surface, what, tol)


def check_on_surface(z: torch.Tensor, surface: CompleteIntersection, what: str = "points", tol: float = RESIDUAL_TOL) -> None:
    """Refuse points z [N, D] where p does not vanish to relative tol (points of another manifold)."""
    if len(z):
        res = surface.residual(z)
        if not float(res.max()) <= tol:
            raise ValueError(
                f"{int((~(res <= tol)).sum())} of {len(z)} {what} are not on {surface.name} (fingerprint "
                f"{surface.fingerprint()}): relative |p(z)| up to {float(res.max()):.2e} > {tol:g}; points of "
                "another manifold, or stored with too little precision?"
            )


def features(z: torch.Tensor) -> torch.Tensor:
    """[Re z, Im z]: [..., D] complex -> [..., 2D] float64."""
    return torch.cat([z.real, z.imag], -1).to(RDTYPE)


def cy_points(surface: CompleteIntersection, z: torch.Tensor, drop_ties: bool = True,
              system: torch.Tensor | None = None) -> CYPoints:
    """Charts, |Omega|^2, pullbacks, FS metric and MC weights of points z [N, D] on X (refuses singular points), with
    their sampling systems [N] (kept for the points kept)."""
    if drop_ties:
        keep = ~charts.ties_for_largest(surface, z)
        z, system = z[keep], None if system is None else system[keep]
    z, dp, patch, elim = charts.choose_chart(surface, z)
    p = points_in_chart(surface, z, dp, patch, elim, check_smooth=True)
    p.system = system
    return p


def points_in_chart(surface: CompleteIntersection, z, dp, patch, elim, check_smooth: bool = False) -> CYPoints:
    """CYPoints of z [N, D] (scaled in their charts) with dp = dp/dz [N, K, D] there, in charts (patch, elim) [N]."""
    om = charts.omega_sq(surface, dp, elim)
    if check_smooth:
        surface.check_smooth_at(z, om.rsqrt())
    J = charts.pullback(surface, dp, patch, elim)
    gs = charts.factor_metrics(surface, z, J)  # [m, N, d, d]
    g_fs = charts.kahler_metric(gs, surface.kahler)
    w = mc_weights(om, *volume.sampling_density(gs, surface))
    return CYPoints(z, patch, elim, J, om, g_fs, w)


def cat_points(parts: list[CYPoints]) -> CYPoints:
    """Concatenate CYPoints along the point axis. The parts are independent samples: their system labels are
    renumbered apart (part k's shifted past part k-1's largest); None if any part has none."""
    out = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(CYPoints) if f.name != "system"}
    system, offset = [], 0
    for p in parts:
        if p.system is None:
            return CYPoints(**out)
        system.append(p.system - p.system.min() + offset if len(p) else p.system)
        offset = int(system[-1].max()) + 1 if len(p) else offset
    return CYPoints(**out, system=torch.cat(system) if system else None)


def sample(surface: CompleteIntersection, n_points: int, seed: int) -> CYPoints:
    """n_points sampled points (mflow.geometry.sampling: Shiffman-Zelditch for one P^n) with their geometry,
    reproducible from the seed."""
    gen = torch.Generator().manual_seed(seed)
    z = sample_points(surface, n_points, gen)
    return cy_points(surface, z, system=system_index(surface, len(z)))


# ----------------------------------------------------------------------------- point-like inputs
def raw_points(x) -> torch.Tensor:
    """The tensor behind a point set: x.z for CYPoints, else x itself; refuses empty, non-2-d or non-finite input."""
    t = x.z if hasattr(x, "z") else x
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"points must be a non-empty [N, D] tensor (or CYPoints); got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("points contain NaN or inf")
    return t


def as_features(x) -> torch.Tensor:
    """Real network input [N, D] float64: [Re z, Im z] for CYPoints / complex z, real tensors as is."""
    t = raw_points(x)
    if t.is_complex():
        return torch.cat([t.real, t.imag], -1).to(torch.float64)
    return t.to(torch.float64)


def as_z(x) -> torch.Tensor:
    """Homogeneous coordinates z [N, D] complex128; real features [Re z, Im z] are recombined."""
    t = raw_points(x)
    if not t.is_complex():
        if t.shape[1] % 2:
            raise ValueError(f"real features [Re z, Im z] need an even width, got {t.shape[1]}")
        k = t.shape[1] // 2
        t = torch.complex(t[:, :k].double(), t[:, k:].double())
    t = t.to(torch.complex128)
    if (torch.linalg.vector_norm(t, dim=-1) == 0).any():
        raise ValueError("z = 0 is not a point of P^n")
    return t
