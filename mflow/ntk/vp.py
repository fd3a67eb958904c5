"""method='vp': NTK-vector products Theta v = J_a (J_b^T v) by a vjp then a jvp, no Jacobian held."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import jvp, vjp, vmap

from .components import OutputFn, Points, as_points, metric_output, ranges, slice_points, trainable
from .jacobian import mirror
from .plan import Plan

def vp_kernel(fn, params, A, B, sym: bool, p: Plan) -> torch.Tensor:
    """Columns Theta e_(b, k) of the kernel: a vjp over a chunk of x_b (one per column), then a jvp over x_a.

    With xb = xa only the rows a >= the chunk's first point are computed; the rest is mirrored.
    """
    out = torch.zeros(p.output_shape, dtype=torch.float64, device=A[0].device)
    C = p.components
    for sb in ranges(p.n_b, p.chunk):
        Bc = slice_points(B, sb)
        nc = sb.stop - sb.start
        _, pull = vjp(lambda q: fn(q, *Bc), params)
        E = torch.eye(nc * C, dtype=torch.float64, device=A[0].device).reshape(nc * C, nc, C)
        (u,) = vmap(pull)(E)  # {name: [nc C, *shape]}: J(x_b)^T e_(b, k), this chunk only
        del E
        start = sb.start if sym else 0
        for sa in ranges(p.n_a - start, p.block):
            sa = slice(sa.start + start, sa.stop + start)
            Aa = slice_points(A, sa)
            cols = vmap(lambda t: jvp(lambda q: fn(q, *Aa), (params,), (t,))[1])(u)  # [nc C, na, C]
            cols = cols.reshape(nc, C, sa.stop - sa.start, C)  # [b, k, a, i]
            if p.kind == "full":
                t = cols.permute(2, 0, 3, 1)  # [a, b, i, k]
            else:
                t = cols.diagonal(dim1=1, dim2=3).transpose(0, 1)  # [a, b, i = k]
                t = t.sum(-1) if p.kind == "trace" else t
            out[sa, sb] = t
            if sym:
                # rows a in this chunk's own range are written both ways (identical up to round-off)
                out[sb, sa] = mirror(t, p.kind)
            del cols, t
        del u
    return out

def ntk_vp(
    model: nn.Module,
    xa: Points,
    xb: Points,
    v: torch.Tensor,
    params: dict | None = None,
    block: int | None = None,
    fn: OutputFn | None = None,
) -> torch.Tensor:
    """NTK-vector product (Theta v)_i(x_a) = sum_b Theta_ik(x_a, x_b) v_k(x_b) without any Jacobian.

    u = J(x_b)^T v by one vjp per block of x_b, then J(x_a) u by one jvp per block of x_a.
    v [Nb, C] -> [Na, C]; a batch v [K, Nb, C] -> [K, Na, C] (vmapped). With v = dl/dr (r the real
    components of g) this is minus the right-hand side of the metric flow (eq. 2.8).
    """
    fn = metric_output(model) if fn is None else fn
    params = trainable(model) if params is None else params
    A, B = as_points(xa), as_points(xb)
    batched = v.ndim == 3
    if v.shape[-2] != len(B[0]) or v.ndim not in (2, 3):
        raise ValueError(f"v must be [Nb, C] or [K, Nb, C] with Nb = {len(B[0])}, got {tuple(v.shape)}")
    v = v.to(torch.float64)
    block = block or 4096
    with torch.no_grad():
        u = None
        for sb in ranges(len(B[0]), block):
            Bb = slice_points(B, sb)
            _, pull = vjp(lambda q: fn(q, *Bb), params)
            vb = v[..., sb, :]
            (ub,) = vmap(pull)(vb) if batched else pull(vb)
            u = ub if u is None else {k: u[k] + ub[k] for k in u}
        outs = []
        for sa in ranges(len(A[0]), block):
            Aa = slice_points(A, sa)
            push = lambda t: jvp(lambda q: fn(q, *Aa), (params,), (t,))[1]  # noqa: E731
            outs.append(vmap(push)(u) if batched else push(u))
        return torch.cat(outs, -2)
