"""Test points at a controlled distance from a train set (paper sec. 3.2, Fig. 3 left).

Two ways of making them from train points z_i of X = {p = 0}:

1. ``gaussian_noised`` (the paper's): Gaussian noise of variance v added to the homogeneous coordinates.
   The train point is taken as stored (its patch scaling, z_patch = 1) and EVERY real component
   (Re z_I and Im z_I, I = 0..n, the network's input features) gets independent N(0, v) noise. The noised
   point then lies only NEAR X: p(z~) != 0. Everything the flows and the sigma measure need is computed at
   z~ by the same formulas as on X, all of which extend off X:

   * chart: re-chosen at z~ by the usual rules (patch = largest |z~_I|, z~ rescaled so z~_patch = 1;
     elim = the other coordinate of largest |dp/dz_j|(z~)), as for any point, so that the models see a
     point in its preferred chart as at training (``keep_chart=True`` keeps the train point's (patch, elim),
     z~ rescaled to that patch instead);
   * dp is evaluated at z~; |Omega|^2 = 1 / |dp/dz_elim(z~)|^2; J from dp(z~)
     (J_aI = delta, 0, -(dp/dx_a)/(dp/dz_elim) as on X); g_FS pulled back with that J; weights
     w = deg |Omega|^2 / det g_FS (cymetric normalisation, mflow.geometry.volume.mc_weights).

   In the patch these are exactly the quantities of the level set {p = p(z~)} through z~ (a smooth
   hypersurface close to X for small v, on which J spans the tangent space and Omega is the residue form),
   so eta, sigma and the gain are well defined and tend to their values on X as v -> 0. For large v they
   describe that nearby level set, not X: read the far end of the curve with care (as the paper says, the
   points are only "approximately" on the CY). The weights are those of points FS-distributed on X, which
   the noised points are only approximately.

2. ``manifold_noised`` (beyond the paper): points ON X at a requested FS distance d from their train
   point. From the unit vector u of the train point, step along a random unit horizontal tangent direction
   t of X at u (orthogonal to u and to conj(dp(u)), i.e. dp.t = 0) by the FS geodesic
   w = cos(s) u + sin(s) t, which is at FS distance exactly s from u in P^n; project w back onto X by
   Newton iterations along the normal, w <- w - p(w) conj(dp(w)) / |dp(w)|^2 (w kept at unit norm; p is
   homogeneous, so this is the patch iteration up to scaling), batched, until |p| is at round-off
   (relative residual <= 1e-10 enforced); then rescale the step s <- s d / d_achieved and repeat until the
   final FS distance is within ``fit_rtol`` (2%) of d. Points whose projection does not converge or that
   do not land within ``rtol`` (10%) of d are retried with a new direction, and dropped after
   ``max_tries`` (the count is returned). The points are then on X, with the usual charts, |Omega|^2,
   pullbacks and weights (mflow.geometry.points.cy_points).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mflow.geometry import charts
from mflow.geometry.distance import fs_distance, unit
from mflow.geometry.hypersurface import CDTYPE, RDTYPE, Hypersurface
from mflow.geometry.points import CYPoints, cy_points
from mflow.geometry.volume import mc_weights, real_det

RESIDUAL_TOL = 1e-10


@dataclass
class NoisedPoints:
    """Noised test points: ``points`` (CYPoints at the noised z), ``origin`` [N] (row of the train point each
    came from), ``offset`` [N] (FS distance to that train point), ``residual`` [N] (relative |p|,
    Hypersurface.residual), ``dropped`` (train points for which no point could be made, manifold mode)."""

    points: CYPoints
    origin: torch.Tensor
    offset: torch.Tensor
    residual: torch.Tensor
    dropped: int = 0


def off_manifold_points(
    surface: Hypersurface, z: torch.Tensor, patch: torch.Tensor | None = None, elim: torch.Tensor | None = None
) -> CYPoints:
    """CYPoints at arbitrary z [N, n+1] (on X or near it): charts, dp, |Omega|^2, J, g_FS, weights at z.

    patch / elim None: the preferred chart at z (charts.choose_chart); given: that chart (z rescaled to it).
    No point is dropped (ties for the patch are harmless here), so row i is always z_i.
    """
    if patch is None:
        return cy_points(surface, z, drop_ties=False)
    z = charts.to_patch(z, patch)
    dp = surface.gradient(z)
    if elim is None:
        elim = charts.eliminated_coordinate(dp, patch)
    J = charts.pullback(dp, patch, elim)
    g_fs = charts.pull_back(J, charts.fs_metric(z))
    om = charts.omega_sq(dp, elim)
    return CYPoints(z, patch, elim, J, om, g_fs, mc_weights(om, real_det(g_fs), surface.degree))


def gaussian_noised(
    surface: Hypersurface,
    train: CYPoints,
    variance: float,
    generator: torch.Generator,
    keep_chart: bool = False,
) -> NoisedPoints:
    """The paper's noised points: z~ = z + eps, eps_I = N(0, v) + i N(0, v) on each train point (module doc)."""
    if not (variance >= 0 and variance < float("inf")):
        raise ValueError(f"the noise variance must be a finite number >= 0, got {variance!r}")
    z = train.z.to(CDTYPE)
    eps = torch.randn(*z.shape, 2, generator=generator, dtype=RDTYPE) * variance**0.5
    zn = z + torch.view_as_complex(eps)
    pts = off_manifold_points(surface, zn, train.patch, train.elim) if keep_chart else off_manifold_points(surface, zn)
    return NoisedPoints(pts, torch.arange(len(z)), fs_distance(z, pts.z), surface.residual(pts.z))


# ----------------------------------------------------------------------------- on-manifold points
def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> = sum conj(a) b over the last axis, kept as [..., 1]."""
    return (a.conj() * b).sum(-1, keepdim=True)


def tangent_directions(surface: Hypersurface, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random unit horizontal tangent vectors of X at unit points u [N, n+1]: t with <u, t> = 0 and dp(u).t = 0.

    A complex Gaussian vector with its components along u and along conj(dp(u)) removed (Gram-Schmidt:
    on X, <u, conj dp> = (n+1) conj p(u) = 0 by Euler's identity, so the two are orthogonal already).
    """
    a = surface.gradient(u).conj()
    a = a - u * _inner(u, a)
    r = torch.view_as_complex(torch.randn(*u.shape, 2, generator=generator, dtype=RDTYPE))
    for _ in range(2):  # twice, for orthogonality to round-off
        r = r - u * _inner(u, r) - a * _inner(a, r) / _inner(a, a).real
    return unit(r)


def project_to_surface(
    surface: Hypersurface, z: torch.Tensor, max_iter: int = 40, tol: float = 1e-14
) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton iterations along the normal, z <- z - p(z) conj(dp) / |dp|^2 at unit norm, batched.

    Returns (unit points [N, n+1], converged [N] bool: relative residual <= RESIDUAL_TOL and finite).
    Points stop moving once their relative residual is below tol (round-off).
    """
    z = unit(z.to(CDTYPE))
    active = torch.ones(len(z), dtype=torch.bool)
    for _ in range(max_iter):
        if not active.any():
            break
        za = z[active]
        dp = surface.gradient(za)
        step = surface(za)[:, None] * dp.conj() / (dp.abs() ** 2).sum(-1, keepdim=True)
        z[active] = unit(za - step)
        res = surface.residual(z[active])
        idx = active.nonzero().flatten()
        active[idx[(res <= tol) | ~torch.isfinite(res)]] = False
    res = surface.residual(z)
    ok = torch.isfinite(res) & (res <= RESIDUAL_TOL) & torch.isfinite(torch.view_as_real(z)).all(-1).all(-1)
    return z, ok


def manifold_noised(
    surface: Hypersurface,
    train: CYPoints,
    distance: float,
    generator: torch.Generator,
    rtol: float = 0.1,
    fit_rtol: float = 0.02,
    max_rescale: int = 12,
    max_tries: int = 5,
    keep_chart: bool = False,
) -> NoisedPoints:
    """Points on X at FS distance ``distance`` (within rtol) from each train point (module doc, method 2);
    keep_chart: each in its train point's chart (patch, elim) instead of its preferred one.

    Row i of the result comes from train row origin[i]; train points for which no point could be made
    (projection not converging, or distance off by more than rtol after max_tries directions) are dropped.
    """
    if not (0 < distance < torch.pi / 2):
        raise ValueError(f"the requested FS distance must be in (0, pi/2), got {distance!r}")
    if len(train) == 0:
        raise ValueError("no train points to move")
    u0 = unit(train.z.to(CDTYPE))
    n = len(u0)
    out = torch.zeros_like(u0)
    done = torch.zeros(n, dtype=torch.bool)
    for _ in range(max_tries):
        todo = (~done).nonzero().flatten()
        if len(todo) == 0:
            break
        u = u0[todo]
        t = tangent_directions(surface, u, generator)
        s = torch.full((len(u),), float(distance), dtype=RDTYPE)
        z = u.clone()
        ok = torch.zeros(len(u), dtype=torch.bool)
        moving = torch.ones(len(u), dtype=torch.bool)
        for _ in range(max_rescale):
            if not moving.any():
                break
            m = moving.nonzero().flatten()
            w = torch.cos(s[m])[:, None] * u[m] + torch.sin(s[m])[:, None] * t[m]
            w, conv = project_to_surface(surface, w)
            z[m] = w
            d = fs_distance(u[m], w)
            ok[m] = conv
            ratio = distance / d.clamp_min(1e-300)
            fine = conv & ((ratio - 1).abs() <= fit_rtol)
            moving[m[fine | ~conv]] = False  # converged and on target, or hopeless with this direction
            s[m] = (s[m] * ratio.clamp(0.5, 2.0)).clamp(max=torch.pi / 2 - 1e-6)
        d = fs_distance(u, z)
        good = ok & ((d / distance - 1).abs() <= rtol)
        out[todo[good]] = z[good]
        done[todo[good]] = True
    origin = done.nonzero().flatten()
    if keep_chart:
        pts = off_manifold_points(surface, out[origin], train.patch[origin], train.elim[origin])
    else:
        pts = cy_points(surface, out[origin], drop_ties=False)
    return NoisedPoints(pts, origin, fs_distance(train.z[origin], pts.z), surface.residual(pts.z), int(n - len(origin)))
