"""Perelman's functional and the Ricci flow as a local metric flow, on rotationally symmetric metrics of P^1
(eq. 2.39-2.42, with the local limit of eq. 2.31).

Cylinder coordinates of P^1 = S^2: w = exp(s + i theta) in the affine chart z = [1 : w], s in R. A rotationally
symmetric metric is g = rho(s) (ds^2 + dtheta^2), and everything below is a function of the conformal
factor rho sampled on a uniform grid s_k (spacing ds), with central second differences at the interior
points. The Fubini-Study metric (Kaehler potential (1/pi) log|z|^2, real metric 2 g_{w wbar} |dw|^2) is
rho_FS = sech^2(s) / (2 pi): Gauss curvature K = 2 pi, Ric = 2 pi g (docs/conventions.md section 3), area 2.

In these coordinates: R = -(log rho)'' / rho, Laplacian Delta f = f'' / rho, |grad f|^2 = f'^2 / rho,
dV = 2 pi rho ds, so Perelman's functional (eq. 2.41) is
    F[phi, g] = 2 pi int ( -(log rho)'' + phi'^2 ) e^{-phi} ds.
Perelman's flow keeps the measure m = e^{-phi} rho fixed (phi = log(rho / m)); its conformal part is
    d rho / dt = -rho (R + Delta phi) = (log rho - phi)''          (eq. 2.40, the trace of -2(Ric + Hess phi)),
the gradient of F in the L^2 metric of conformal factors, <a, b> = int a b m / rho^2 2 pi ds. As the local
metric flow of eq. 2.31 with the loss of eq. 2.42 (l = -F / Omega) it is one kernel step with the local
kernel Theta(x, x') = Omega(x) delta(x - x'), where Omega (here rho^2 / (2 pi m)) is whatever makes the flow
the metric's own gradient flow; a normalised Gaussian NTK of width sigma (eq. 2.27-2.30) gives its
non-local generalisation, which tends to the local step as sigma -> 0.
"""
from __future__ import annotations

import math

import torch


def grid(half_length: float = 10.0, n: int = 2001) -> tuple[torch.Tensor, float]:
    """Uniform grid s_k on [-half_length, half_length]: (s [n], ds)."""
    if n < 5 or not half_length > 0:
        raise ValueError(f"need n >= 5 points and half_length > 0, got n={n}, half_length={half_length}")
    s = torch.linspace(-half_length, half_length, n, dtype=torch.float64)
    return s, float(s[1] - s[0])


def fs_rho(s: torch.Tensor) -> torch.Tensor:
    """Conformal factor of the Fubini-Study metric of P^1 in cylinder coordinates: sech^2(s) / (2 pi)."""
    return 1 / (2 * math.pi * torch.cosh(s) ** 2)


def perturbed_fs(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A worked example off the Einstein point: (rho, m) = (rho_FS e^{0.3 exp(-s^2)}, rho_FS e^{0.2 exp(-2 (s - 1/2)^2)}),
    a non-Einstein metric and a measure that is not its volume form (phi = log(rho / m) != 0): [k] -> ([k], [k])."""
    fs = fs_rho(s)
    return fs * torch.exp(0.3 * torch.exp(-(s**2))), fs * torch.exp(0.2 * torch.exp(-2 * (s - 0.5) ** 2))


def second_difference(f: torch.Tensor, ds: float) -> torch.Tensor:
    """f'' at the interior points by central differences: [n] -> [n - 2]."""
    return (f[2:] - 2 * f[1:-1] + f[:-2]) / ds**2


def first_difference(f: torch.Tensor, ds: float) -> torch.Tensor:
    """f' at the interior points by central differences: [n] -> [n - 2]."""
    return (f[2:] - f[:-2]) / (2 * ds)


def scalar_curvature(rho: torch.Tensor, ds: float) -> torch.Tensor:
    """R = 2K = -(log rho)'' / rho at the interior points: [n] -> [n - 2]."""
    return -second_difference(torch.log(rho), ds) / rho[1:-1]


def laplacian(f: torch.Tensor, rho: torch.Tensor, ds: float) -> torch.Tensor:
    """Delta f = f'' / rho at the interior points: [n] -> [n - 2]."""
    return second_difference(f, ds) / rho[1:-1]


def area(rho: torch.Tensor, ds: float) -> torch.Tensor:
    """Area 2 pi int rho ds (trapezoidal): [n] -> []."""
    return 2 * math.pi * torch.trapezoid(rho, dx=ds)


def perelman_functional(rho: torch.Tensor, phi: torch.Tensor, ds: float) -> torch.Tensor:
    """F[phi, g] = int (R + |grad phi|^2) e^{-phi} dV (eq. 2.41) = 2 pi int (-(log rho)'' + phi'^2) e^{-phi} ds."""
    integrand = (-second_difference(torch.log(rho), ds) + first_difference(phi, ds) ** 2) * torch.exp(-phi[1:-1])
    return 2 * math.pi * integrand.sum() * ds


def perelman_gradient(rho: torch.Tensor, m: torch.Tensor, ds: float) -> torch.Tensor:
    """dF/drho_k at fixed measure m = e^{-phi} rho (phi = log(rho / m)), by autograd of the discrete F: [n] -> [n].

    The derivative of the discretised eq. 2.41, i.e. the functional derivative times ds; the two end points
    (where F has no second difference) get the one-sided contributions of their neighbours only.
    """
    r = rho.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(perelman_functional(r, torch.log(r / m), ds), r)
    return grad


def local_rate(rho: torch.Tensor, m: torch.Tensor, ds: float) -> torch.Tensor:
    """d rho / dt of the local metric flow with loss l = -F / Omega (eq. 2.42 in eq. 2.31): Omega dF/drho / ds with
    Omega = rho^2 / (2 pi m) (the L^2 metric of conformal factors), at s[2:-2] (where every term of the
    discrete F that holds rho_k is present): [n] -> [n - 4]."""
    return (rho**2 / (2 * math.pi * m) * perelman_gradient(rho, m, ds) / ds)[2:-2]


def ricci_flow_rate(rho: torch.Tensor, m: torch.Tensor, ds: float) -> torch.Tensor:
    """The conformal part of eq. 2.40, -rho (R + Delta phi) with phi = log(rho / m), from the curvature formulas,
    at s[2:-2]: [n] -> [n - 4]. At phi = 0 it is Ricci flow (eq. 2.39): -2 Ric = -2K g, i.e. -rho R."""
    phi = torch.log(rho / m)
    return (-rho[1:-1] * (scalar_curvature(rho, ds) + laplacian(phi, rho, ds)))[1:-1]


def nonlocal_rate(rate: torch.Tensor, s: torch.Tensor, ds: float, kernel) -> torch.Tensor:
    """The non-local flow of eq. 2.30: int ds' Theta_sigma(s, s') rate(s') for a kernel on R^1 (e.g.
    mflow.kernels.analytic.CosineNTK(sigma_w, d=1), a normalised Gaussian of width 1/sigma_w), on the grid
    points s [k] where rate [k] is given: -> [k]."""
    x = s[:, None]
    return kernel.apply(x, x, rate[:, None])[:, 0] * ds
