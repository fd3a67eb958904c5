"""d dbar of a network output along X by forward (Taylor-mode) propagation.

For phi = MLP(u(z)) the PhiFS head needs d_a dbar_b phi at every point. Nested reverse-mode
autodiff (jacrev of grad) does this generically; here the value, the holomorphic derivatives
d_a and the mixed second derivatives d_a dbar_b are carried through the layers together,
as batched matrix products:
  linear  h = W a + b:   dh = W da,            ddh = W dda
  act.    s = f(h):      ds = f'(h) dh,        dds_ab = f''(h) dh_a conj(dh_b) + f'(h) ddh_ab
(for real h, dbar_b h = conj(d_b h)). Only the input features are differentiated by hand (their jets).

Layout (the work is real arithmetic only, on contiguous tensors): a jet is (u, du, ddu) with
  u [N, F] real, du [2, N, m, F] real (Re, Im of d_a u), ddu [2, N, P, F] real (Re, Im of d_a dbar_b u for the
  P = m(m+1)/2 pairs a <= b, in :func:`pairs` order; d dbar u is Hermitian in (a, b), so the rest follows).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .mlp import Cos, Dense, Square


def pairs(m: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with a <= b, row-major: the P = m(m+1)/2 entries of a Hermitian m x m matrix that determine it."""
    return torch.triu_indices(m, m, device=device)


def hermitian_from_pairs(dd: torch.Tensor, m: int) -> torch.Tensor:
    """[2, N, P, O] real (Re, Im of the a <= b entries) -> [N, m, m, O] complex Hermitian in (a, b)."""
    a, b = pairs(m, dd.device)
    upper = torch.complex(dd[0], dd[1])  # [N, P, O]
    out = torch.zeros(dd.shape[1], m, m, dd.shape[-1], dtype=upper.dtype, device=dd.device)
    out[:, a, b] = upper
    out[:, b, a] = upper.conj()
    return out


def _derivatives(act: nn.Module, h: torch.Tensor):
    """f'(h), f''(h) of an elementwise activation."""
    if isinstance(act, nn.Tanh):
        t = torch.tanh(h)
        return 1 - t**2, -2 * t * (1 - t**2)
    if isinstance(act, Square):
        return 2 * h, torch.full_like(h, 2.0)
    if isinstance(act, Cos):
        return -torch.sin(h), -torch.cos(h)
    if isinstance(act, nn.GELU) and act.approximate == "none":
        pdf = torch.exp(-0.5 * h**2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(h / math.sqrt(2)))
        return cdf + h * pdf, pdf * (2 - h**2)
    raise TypeError(f"no Taylor-mode rule for activation {act}")


def _stack(c: torch.Tensor) -> torch.Tensor:
    """complex [...] -> real [2, ...] (Re, Im)."""
    return torch.stack([c.real, c.imag])


def chart_feature_jets(z: torch.Tensor, J: torch.Tensor):
    """Jets of u = [Re z, Im z] along z(x) = z + x^a J_a: linear, so d dbar u = 0.

    z [N, n+1], J [N, m, n+1] -> u [N, F], du [2, N, m, F], ddu [2, N, P, F] (F = 2(n+1)).
    """
    m = J.shape[1]
    du = torch.cat([J / 2, -1j * J / 2], -1)
    ddu = torch.zeros(2, len(z), m * (m + 1) // 2, du.shape[-1], dtype=torch.float64, device=J.device)
    return torch.cat([z.real, z.imag], -1), _stack(du), ddu


def product_jets(jets):
    """Jets of several feature blocks side by side (features concatenated): [(u, du, ddu), ...] -> (u, du, ddu)."""
    return tuple(torch.cat(parts, -1) for parts in zip(*jets))


def constant_jets(c: torch.Tensor, m: int):
    """Jets of features constant along X (e.g. the Kaehler moduli fed to a network): c [N, k] -> (c, 0, 0)."""
    zeros = torch.zeros(2, len(c), m, c.shape[-1], dtype=c.dtype, device=c.device)
    return c, zeros, torch.zeros(2, len(c), m * (m + 1) // 2, c.shape[-1], dtype=c.dtype, device=c.device)


def invariant_feature_jets(z: torch.Tensor, J: torch.Tensor):
    """Jets of the C*-invariant features (Re, Im of P_ij = z_i conj(z_j) / |z|^2) along X.

    With r = |z|^2 and s_a = d_a r = (J conj(z))_a:
      d_a P_ij       = J_ai zb_j / r - z_i zb_j s_a / r^2
      d_a dbar_b P_ij = J_ai Jb_bj / r - J_ai zb_j sb_b / r^2 - z_i Jb_bj s_a / r^2
                        - z_i zb_j ((J J^+)_ab / r^2 - 2 s_a sb_b / r^3),
    and conj(P_ij) = P_ji gives the real and imaginary parts.
    z [N, n+1], J [N, m, n+1] -> u [N, F], du [2, N, m, F], ddu [2, N, P, F] (F = (n+1)^2, P = m(m+1)/2 pairs a <= b).
    """
    n1 = z.shape[-1]
    a, b = pairs(J.shape[1], z.device)
    zb, Jb = z.conj(), J.conj()
    r = (z.abs() ** 2).sum(-1)[:, None]  # [N, 1]
    s = (J @ zb[:, :, None])[..., 0]  # [N, m]
    P = z[:, :, None] * zb[:, None, :] / r[..., None]  # [N, i, j]
    dP = (J[:, :, :, None] * zb[:, None, None, :] - s[:, :, None, None] * P[:, None]) / r[:, :, None, None]
    JJ = (J[:, a] * Jb[:, b]).sum(-1)  # [N, P]: (J J^+)_ab
    Ja, Jbb, sa, sbb = J[:, a], Jb[:, b], s[:, a], s.conj()[:, b]  # [N, P, n+1] and [N, P]
    r2 = r[:, :, None, None]
    ddP = (
        Ja[:, :, :, None] * Jbb[:, :, None, :] / r2
        - Ja[:, :, :, None] * zb[:, None, None, :] * sbb[:, :, None, None] / r2**2
        - z[:, None, :, None] * Jbb[:, :, None, :] * sa[:, :, None, None] / r2**2
        - P[:, None] * (JJ[..., None, None] / r2 - 2 * (sa * sbb)[..., None, None] / r2**2)
    )  # [N, P, i, j]
    iu = torch.triu_indices(n1, n1, device=z.device)
    off = iu[0] != iu[1]
    io, jo = iu[0][off], iu[1][off]

    def parts(T):  # [..., i, j] -> [..., F]: Re over i <= j, Im over i < j, using conj(P_ij) = P_ji
        re = (T[..., iu[0], iu[1]] + T[..., iu[1], iu[0]]) / 2
        im = (T[..., io, jo] - T[..., jo, io]) / 2j
        return torch.cat([re, im], -1)

    u = torch.cat([P[:, iu[0], iu[1]].real, P[:, io, jo].imag], -1)
    return u, _stack(parts(dP)), _stack(parts(ddP))


def _outer(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d_a conj(d_b) on the pairs (a, b): d [2, N, m, O] (Re, Im) -> [2, N, P, O]."""
    ra, ia, rb, ib = d[0][:, a], d[1][:, a], d[0][:, b], d[1][:, b]
    return torch.stack([ra * rb + ia * ib, ia * rb - ra * ib])


def log_jet(x: torch.Tensor, d: torch.Tensor, dd: torch.Tensor):
    """Jet of log x for a positive x: d log x = d x / x, d dbar log x = d dbar x / x - d x conj(d x) / x^2.

    x [N, O], d [2, N, m, O], dd [2, N, P, O] -> the same shapes.
    """
    a, b = pairs(d.shape[2], x.device)
    d = d / x[:, None]
    return torch.log(x), d, dd / x[:, None] - _outer(d, a, b)


def mlp_ddbar(net: nn.Sequential, u: torch.Tensor, du: torch.Tensor, ddu: torch.Tensor):
    """Propagate (value, d, d dbar) through Dense / activation layers, features last (module doc's layout).

    u [N, F], du [2, N, m, F], ddu [2, N, P, F] -> out [N, O], dout [2, N, m, O], ddout [2, N, P, O], in the jets'
    precision (the float64 parameters are cast to it).
    """
    a, b = pairs(du.shape[2], u.device)
    x, d, dd = u, du, ddu
    for layer in net:
        if isinstance(layer, Dense):
            Wt = (layer.w_scale * layer.weight).T.to(x.dtype)  # [F, O]
            x = x @ Wt + (layer.b_scale * layer.bias).to(x.dtype)
            d, dd = d @ Wt, dd @ Wt
        else:
            d1, d2 = _derivatives(layer, x)
            dd = d2[:, None] * _outer(d, a, b) + d1[:, None] * dd
            d = d1[:, None] * d
            x = layer(x)
    return x, d, dd
