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

Complete intersections in products (mflow.geometry.cicy) are handled by the same code: the chart rules are
those of mflow.geometry.charts (a patch per factor, the K x K minor of largest |det| for the eliminated
coordinates; for one P^n and K = 1 they are the rules above), each factor is kept at unit norm, the step is
the product metric's geodesic (factor i turns by s a_i, sum_i t_i (s a_i)^2 = s^2; :func:`geodesic_step`), the
projection the least-norm Newton step for the K equations, and distances are the product's sqrt(sum t_i d_i^2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mflow.geometry import charts
from mflow.geometry.distance import fs_distance
from mflow.geometry.cicy import CDTYPE, RDTYPE, CompleteIntersection
from mflow.geometry.points import CYPoints, cy_points, points_in_chart

RESIDUAL_TOL = 1e-10


@dataclass
class NoisedPoints:
    """Noised test points: ``points`` (CYPoints at the noised z), ``origin`` [N] (row of the train point each
    came from), ``offset`` [N] (FS distance to that train point), ``residual`` [N] (relative |p|,
    CompleteIntersection.residual), ``dropped`` (train points for which no point could be made, manifold mode)."""

    points: CYPoints
    origin: torch.Tensor
    offset: torch.Tensor
    residual: torch.Tensor
    dropped: int = 0


def off_manifold_points(
    surface: CompleteIntersection, z: torch.Tensor, patch: torch.Tensor | None = None, elim: torch.Tensor | None = None
) -> CYPoints:
    """CYPoints at arbitrary z [N, D] (on X or near it): charts, dp, |Omega|^2, J, g_FS, weights at z.

    patch / elim None: the preferred chart at z (charts.choose_chart); given: that chart (z rescaled to it).
    No point is dropped (ties for the patch are harmless here), so row i is always z_i.
    """
    if patch is None:
        return cy_points(surface, z, drop_ties=False)
    z = charts.to_patch(surface, z, patch)
    dp = surface.gradient(z)
    return points_in_chart(surface, z, dp, patch, charts.choose_elim(surface, dp, patch) if elim is None else elim)


def gaussian_noised(
    surface: CompleteIntersection,
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
    return NoisedPoints(pts, torch.arange(len(z)), fs_distance(z, pts.z, surface), surface.residual(pts.z))


# ----------------------------------------------------------------------------- on-manifold points
def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> = sum conj(a) b over the last axis, kept as [..., 1]."""
    return (a.conj() * b).sum(-1, keepdim=True)


def unit_factors(surface: CompleteIntersection, z: torch.Tensor) -> torch.Tensor:
    """Each factor's block of z scaled to unit norm: [N, D] -> [N, D] (z / |z| for one P^n)."""
    return z / charts.factor_norms_sq(surface, z).sqrt()[:, surface.factor_of.to(z.device)]


def tangent_directions(surface: CompleteIntersection, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal tangent vectors of X at points u [N, D] (unit in every factor): r with <u_i, r_i> = 0 in
    every factor and dp_k(u).r = 0 for every k; [N, D].

    A complex Gaussian vector with its components along the factors' u_i and along the normals conj(dp_k(u))
    removed (Gram-Schmidt, twice for orthogonality to round-off).
    """
    f = surface.factor_of.to(u.device)
    basis = [u * (f == i) for i in range(len(surface.dims))]  # the vertical directions, orthonormal
    for a in surface.gradient(u).conj().unbind(1):  # the normals, made orthonormal to all before them
        for _ in range(2):
            for b in basis:
                a = a - b * _inner(b, a)
        basis.append(a / _inner(a, a).real.sqrt())
    r = torch.view_as_complex(torch.randn(*u.shape, 2, generator=generator, dtype=RDTYPE))
    for _ in range(2):
        for b in basis:
            r = r - b * _inner(b, r)
    return r


def geodesic_step(surface: CompleteIntersection, u: torch.Tensor, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The point at distance s [N] from u [N, D] along the product geodesic in the horizontal direction r [N, D]:
    factor i moves along its FS great circle by s a_i, a_i = |r_i| / sqrt(sum_j t_j |r_j|^2), so that
    sqrt(sum_i t_i (s a_i)^2) = s (for s a_i <= pi/2)."""
    f = surface.factor_of.to(u.device)
    norm = charts.factor_norms_sq(surface, r).sqrt()
    t = torch.tensor(surface.kahler, dtype=RDTYPE, device=u.device)
    angle = (s[:, None] * norm / (t * norm**2).sum(-1, keepdim=True).sqrt())[:, f]  # [N, D]
    return torch.cos(angle) * u + torch.sin(angle) * r / norm.clamp_min(1e-300)[:, f]


def project_to_surface(
    surface: CompleteIntersection, z: torch.Tensor, max_iter: int = 40, tol: float = 1e-14
) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton iterations along the normals, z <- z - dp^H (dp dp^H)^-1 p(z) (the least-norm step; for one equation
    p conj(dp) / |dp|^2), every factor kept at unit norm, batched.

    Returns (points [N, D], converged [N] bool: relative residual <= RESIDUAL_TOL and finite).
    Points stop moving once their relative residual is below tol (round-off).
    """
    z = unit_factors(surface, z.to(CDTYPE))
    active = torch.ones(len(z), dtype=torch.bool)
    for _ in range(max_iter):
        if not active.any():
            break
        za = z[active]
        A = surface.gradient(za)  # [n, K, D]
        step = (A.conj().transpose(1, 2) @ torch.linalg.solve(A @ A.conj().transpose(1, 2), surface(za)[..., None]))[..., 0]
        z[active] = unit_factors(surface, za - step)
        res = surface.residual(z[active])
        idx = active.nonzero().flatten()
        active[idx[(res <= tol) | ~torch.isfinite(res)]] = False
    res = surface.residual(z)
    ok = torch.isfinite(res) & (res <= RESIDUAL_TOL) & torch.isfinite(torch.view_as_real(z)).all(-1).all(-1)
    return z, ok


def manifold_noised(
    surface: CompleteIntersection,
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
    diameter = torch.pi / 2 * sum(surface.kahler) ** 0.5  # of the product metric (pi/2 for one P^n)
    if not (0 < distance < diameter):
        raise ValueError(f"the requested distance must be in (0, {diameter:.4g}) (the diameter), got {distance!r}")
    if len(train) == 0:
        raise ValueError("no train points to move")
    u0 = unit_factors(surface, train.z.to(CDTYPE))
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
            w, conv = project_to_surface(surface, geodesic_step(surface, u[m], t[m], s[m]))
            z[m] = w
            d = fs_distance(u[m], w, surface)
            ok[m] = conv
            ratio = distance / d.clamp_min(1e-300)
            fine = conv & ((ratio - 1).abs() <= fit_rtol)
            moving[m[fine | ~conv]] = False  # converged and on target, or hopeless with this direction
            s[m] = (s[m] * ratio.clamp(0.5, 2.0)).clamp(max=diameter - 1e-6)
        d = fs_distance(u, z, surface)
        good = ok & ((d / distance - 1).abs() <= rtol)
        out[todo[good]] = z[good]
        done[todo[good]] = True
    origin = done.nonzero().flatten()
    if keep_chart:
        pts = off_manifold_points(surface, out[origin], train.patch[origin], train.elim[origin])
    else:
        pts = cy_points(surface, out[origin], drop_ties=False)
    return NoisedPoints(pts, origin, fs_distance(train.z[origin], pts.z, surface), surface.residual(pts.z),
                        int(n - len(origin)))
