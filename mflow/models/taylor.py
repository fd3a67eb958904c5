"""d dbar of a network output along X by forward (Taylor-mode) propagation.

For phi = MLP(u(z)) the PhiFS head needs d_a dbar_b phi at every point. Nested reverse-mode
autodiff (jacrev of grad) does this generically; here the value, the holomorphic derivatives
d_a and the mixed second derivatives d_a dbar_b are carried through the layers together,
as batched matrix products:
  linear  h = W a + b:   dh = W da,            ddh = W dda
  act.    s = f(h):      ds = f'(h) dh,        dds_ab = f''(h) dh_a conj(dh_b) + f'(h) ddh_ab
(for real h, dbar_b h = conj(d_b h)). Only the input features are differentiated with torch.func.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from .mlp import Cos, Dense


def _derivatives(act: nn.Module, h: torch.Tensor):
    """f'(h), f''(h) of an elementwise activation."""
    if isinstance(act, nn.ReLU):
        return (h > 0).to(h.dtype), torch.zeros_like(h)
    if isinstance(act, nn.Tanh):
        t = torch.tanh(h)
        return 1 - t**2, -2 * t * (1 - t**2)
    if isinstance(act, Cos):
        return -torch.sin(h), -torch.cos(h)
    if isinstance(act, nn.GELU) and act.approximate == "none":
        pdf = torch.exp(-0.5 * h**2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(h / math.sqrt(2)))
        return cdf + h * pdf, pdf * (2 - h**2)
    raise TypeError(f"no Taylor-mode rule for activation {act}")


def chart_feature_jets(z: torch.Tensor, J: torch.Tensor):
    """Jets of u = [Re z, Im z] along z(x) = z + x^a J_a: linear, so d dbar u = 0.

    z [N, n+1], J [N, m, n+1] -> u [N, F], du [N, m, F], ddu [N, m, m, F] (F = 2(n+1)).
    """
    du = torch.cat([J / 2, -1j * J / 2], -1)
    ddu = torch.zeros(*J.shape[:2], *J.shape[1:2], du.shape[-1], dtype=du.dtype, device=J.device)
    return torch.cat([z.real, z.imag], -1), du, ddu


def invariant_feature_jets(z: torch.Tensor, J: torch.Tensor):
    """Jets of the C*-invariant features (Re, Im of P_ij = z_i conj(z_j) / |z|^2) along X.

    With r = |z|^2 and s_a = d_a r = (J conj(z))_a:
      d_a P_ij       = J_ai zb_j / r - z_i zb_j s_a / r^2
      d_a dbar_b P_ij = J_ai Jb_bj / r - J_ai zb_j sb_b / r^2 - z_i Jb_bj s_a / r^2
                        - z_i zb_j ((J J^+)_ab / r^2 - 2 s_a sb_b / r^3),
    and conj(P_ij) = P_ji gives the real and imaginary parts.
    z [N, n+1], J [N, m, n+1] -> u [N, F], du [N, m, F], ddu [N, m, m, F] (F = (n+1)^2).
    """
    n1 = z.shape[-1]
    zb, Jb = z.conj(), J.conj()
    r = (z.abs() ** 2).sum(-1)[:, None]  # [N, 1]
    s = (J @ zb[:, :, None])[..., 0]  # [N, m]
    P = z[:, :, None] * zb[:, None, :] / r[..., None]  # [N, i, j]
    dP = (J[:, :, :, None] * zb[:, None, None, :] - s[:, :, None, None] * P[:, None]) / r[:, :, None, None]
    JJ = J @ Jb.transpose(-1, -2)  # [N, a, b]
    r2 = r[:, :, None, None, None]
    ddP = (
        J[:, :, None, :, None] * Jb[:, None, :, None, :] / r2
        - J[:, :, None, :, None] * zb[:, None, None, None, :] * s.conj()[:, None, :, None, None] / r2**2
        - z[:, None, None, :, None] * Jb[:, None, :, None, :] * s[:, :, None, None, None] / r2**2
        - P[:, None, None] * (JJ[..., None, None] / r2 - 2 * s[:, :, None, None, None] * s.conj()[:, None, :, None, None] / r2**2)
    )  # [N, a, b, i, j]
    iu = torch.triu_indices(n1, n1, device=z.device)
    off = iu[0] != iu[1]
    io, jo = iu[0][off], iu[1][off]

    def parts(T):  # [..., i, j] -> [..., F]: Re over i <= j, Im over i < j, using conj(P_ij) = P_ji
        re = (T[..., iu[0], iu[1]] + T[..., iu[1], iu[0]]) / 2
        im = (T[..., io, jo] - T[..., jo, io]) / 2j
        return torch.cat([re, im], -1)

    u = torch.cat([P[:, iu[0], iu[1]].real, P[:, io, jo].imag], -1)
    return u, parts(dP), parts(ddP)


def mlp_ddbar(net: nn.Sequential, u: torch.Tensor, du: torch.Tensor, ddu: torch.Tensor):
    """Propagate (value, d, d dbar) through Dense / activation layers, features last.

    u [N, F], du [N, m, F], ddu [N, m, m, F] -> out [N, O], dout [N, m, O], ddout [N, m, m, O].
    """
    a, da, dda = u, du, ddu
    for layer in net:
        if isinstance(layer, Dense):
            Wt = (layer.w_scale * layer.weight).T  # [F, O]
            a = a @ Wt + layer.b_scale * layer.bias
            Wc = Wt.to(da.dtype)
            da, dda = da @ Wc, dda @ Wc
        else:
            d1, d2 = _derivatives(layer, a)
            d1, d2 = d1[:, None, None, :], d2[:, None, None, :]
            dda = d2 * da[:, :, None, :] * da.conj()[:, None, :, :] + d1 * dda
            da = d1[:, 0] * da
            a = layer(a)
    return a, da, dda
