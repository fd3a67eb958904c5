"""Section 2.4: the Perelman functional as a loss gives the Ricci-flow step in the local limit (eq. 2.31, 2.39-2.42),
on rotationally symmetric metrics of P^1, checked against closed forms (FS: Ric = 2 pi g), curvature formulas
(finite differences, not autograd), Gauss-Bonnet, and the convergence orders of both discretisations."""
import math

import pytest
import torch

from mflow.geometry import charts
from mflow.geometry import perelman as P
from mflow.kernels.analytic import CosineNTK


def test_fs_conformal_factor_is_the_pulled_back_fs_metric_of_p1():
    s = torch.linspace(-3, 3, 13, dtype=torch.float64)
    w = torch.exp(s + 0.7j)
    z = torch.stack([torch.ones_like(w), w], -1)
    g = charts.fs_metric(None, z)[:, 1, 1].real  # g_{w wbar}: the pullback along dz/dw = (0, 1)
    assert torch.allclose(P.fs_rho(s), 2 * g * w.abs() ** 2, rtol=1e-13)  # ds^2 = 2 g_{w wbar} |dw|^2
    s, ds = P.grid(12.0, 4001)
    assert float(P.area(P.fs_rho(s), ds)) == pytest.approx(2.0, rel=1e-8)


def test_fs_is_einstein_with_scalar_curvature_4_pi():
    errs = []
    for n in (601, 1201):
        s, ds = P.grid(6.0, n)
        errs.append(float((P.scalar_curvature(P.fs_rho(s), ds) - 4 * math.pi).abs().max()) / (4 * math.pi))
    assert errs[0] < 2e-4 and errs[0] / errs[1] == pytest.approx(4, rel=0.1)  # second order in ds


def test_perelman_loss_in_the_local_limit_gives_the_ricci_flow_step_of_fs():
    """FS, phi = 0: one local step of the eq. 2.42 loss is Ricci flow, d rho/dt = -2K rho = -4 pi rho."""
    s, ds = P.grid(6.0, 1201)
    rho = P.fs_rho(s)
    rate = P.local_rate(rho, rho, ds)
    assert torch.allclose(rate, -4 * math.pi * rho[2:-2], rtol=5e-4, atol=0)
    # Gauss-Bonnet: dA/dt = -int R dA = -8 pi (the truncation at |s| = 6 leaves the flux -8 pi tanh 6)
    assert float(2 * math.pi * rate.sum() * ds) == pytest.approx(-8 * math.pi * math.tanh(6.0), rel=1e-6)


def test_perelman_gradient_is_minus_rho_times_r_plus_laplacian_phi():
    """A perturbed metric at a fixed measure m (phi = log(rho / m) != 0): autograd of the discrete eq. 2.41 against
    eq. 2.40's -rho (R + Delta phi) from the curvature formulas; the gap is the discretisation, O(ds^2)."""
    gaps = []
    for n in (601, 1201):
        s, ds = P.grid(6.0, n)
        rho, m = P.perturbed_fs(s)
        local, formula = P.local_rate(rho, m, ds), P.ricci_flow_rate(rho, m, ds)
        gaps.append(float((local - formula).abs().max() / formula.abs().max()))
        assert float((local + 4 * math.pi * P.fs_rho(s)[2:-2]).abs().max()) > 0.1  # not the FS answer
        assert float(2 * math.pi * local.sum() * ds) == pytest.approx(-8 * math.pi, rel=1e-4)  # Gauss-Bonnet
    assert gaps[0] < 1e-3 and gaps[0] / gaps[1] == pytest.approx(4, rel=0.05)


def test_gaussian_ntk_flow_tends_to_the_local_flow_as_sigma_w_grows():
    """eq. 2.30 -> eq. 2.31: the cosine net's normalised Gaussian NTK (eq. 2.35-2.37, width 1/sigma_w in d = 1)
    smears the local rate; the gap falls like sigma^2 = 1/sigma_w^2."""
    s, ds = P.grid(6.0, 1201)
    rho, m = P.perturbed_fs(s)
    local = P.local_rate(rho, m, ds)
    inner = slice(300, -300)  # |s| < 3: away from the grid's ends, where the Gaussian is cut off
    gaps = []
    for sigma_w in (8.0, 16.0, 32.0):
        smeared = P.nonlocal_rate(local, s[2:-2], ds, CosineNTK(sigma_w, 1))
        gaps.append(float((smeared - local)[inner].abs().max() / local[inner].abs().max()))
    assert gaps[0] < 0.05 and gaps[2] < 3e-3
    assert gaps[0] / gaps[1] == pytest.approx(4, rel=0.1) and gaps[1] / gaps[2] == pytest.approx(4, rel=0.1)


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="n >= 5"):
        P.grid(1.0, 3)
