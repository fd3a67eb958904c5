"""method='jacobian': per-point Jacobians dfn/dtheta [N, C, P] contracted block by block (eq. 2.7).

One vmap over the points (with their charts) of a jacrev over the parameters; at most two point blocks
(and, when the plan says so, only a group of the parameters) of J are held at once. Any model. Cost
(Na C)(Nb C) P for 'full', Na Nb C P for 'trace' / 'diagonal'.
"""
from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from .components import OutputFn, Points, as_points, ranges, slice_points
from .plan import Plan

def output_jacobian(fn: OutputFn, params: dict, x: Points, names: list[str] | None = None) -> torch.Tensor:
    """Per-point Jacobian d fn_c(x_n) / d theta_I: -> [N, C, P] (P = parameters in ``names`` order, flattened).

    One vmap over the points (with their charts) of a jacrev over the parameters, so the model sees one
    point at a time.
    """
    return jacobian(fn, params, as_points(x), names, "full")

def jacobian(fn: OutputFn, params: dict, pts, names, kind: str) -> torch.Tensor:
    """Per-point Jacobian, [C, N, P] for kind 'diagonal' (batched over C), else [N, C, P] (point rows contiguous).

    One vmap over the points of a jacrev over parameters. A model that cannot be vmapped over points
    (data-dependent control flow, ...) falls back to a jacrev of the whole output of small point
    blocks (the vmap is then over cotangents only; cost grows with the block size).
    """
    names = list(params) if names is None else list(names)
    sel = {k: params[k] for k in names}
    rest = {k: v for k, v in params.items() if k not in sel}
    sizes = [sel[k].numel() for k in names]
    z = pts[0]
    out = None
    try:
        groups = [_jacobian_per_point(fn, sel, rest, pts)]
    except RuntimeError as e:  # not vmappable over points: blocks of points instead
        if "vmap" not in str(e):
            raise
        groups = _jacobian_blocks(fn, sel, rest, pts)
    for idx, Jg in groups:
        if out is None:
            C = Jg[names[0]].shape[1]
            shape = (C, len(z), sum(sizes)) if kind == "diagonal" else (len(z), C, sum(sizes))
            out = torch.empty(shape, dtype=Jg[names[0]].dtype, device=z.device)
        off = 0
        for name, n in zip(names, sizes):
            Jn = Jg.pop(name).reshape(len(idx), C, n)
            if kind != "diagonal":
                out[idx, :, off : off + n] = Jn
            else:
                out[:, idx, off : off + n] = Jn.transpose(0, 1)
            off += n
    return out

def _jacobian_per_point(fn, sel, rest, pts):
    """(indices [N], {name: [N, C, *shape]}): one vmap over the points (and their charts) of jacrev at one point."""
    z, patch, elim = pts

    def one(p, zr, pa, el):  # a single point (real view of z) in its chart: -> [C]
        return fn({**rest, **p}, torch.view_as_complex(zr)[None], pa[None], el[None])[0]

    zr = torch.view_as_real(z.contiguous())
    return torch.arange(len(z), device=z.device), vmap(jacrev(one), in_dims=(None, 0, 0, 0))(sel, zr, patch, elim)

def _jacobian_blocks(fn, sel, rest, pts, size: int = 8):
    """(indices, Jacobians) by jacrev of the [g, C] output of blocks of ``size`` points (no vmap over points)."""
    z, patch, elim = pts
    zr = torch.view_as_real(z.contiguous())
    for sl in ranges(len(z), size):
        f = lambda p, x: fn({**rest, **p}, torch.view_as_complex(x), patch[sl], elim[sl])  # noqa: E731
        yield torch.arange(sl.start, sl.stop, device=z.device), jacrev(f)(sel, zr[sl])  # {name: [g, C, *shape]}

def rows(J: torch.Tensor, sl: slice, kind: str) -> torch.Tensor:
    return J[:, sl] if kind == "diagonal" else J[sl]

def contract(Ja: torch.Tensor, Jb: torch.Tensor, kind: str) -> torch.Tensor:
    """One tile of eq. 2.7 -> [na, nb, C, C] | [na, nb, C] | [na, nb].

    Jacobians: [na, C, P], [nb, C, P] for 'full' and 'trace' (one matrix product), [C, na, P],
    [C, nb, P] for 'diagonal' (a product per component).
    """
    if kind == "full":
        na, C, P = Ja.shape
        return (Ja.reshape(na * C, P) @ Jb.reshape(-1, P).T).reshape(na, C, -1, C).permute(0, 2, 1, 3)
    if kind == "trace":
        return Ja.reshape(Ja.shape[0], -1) @ Jb.reshape(Jb.shape[0], -1).T
    return torch.bmm(Ja, Jb.transpose(1, 2)).permute(1, 2, 0)  # [na, nb, C]

def mirror(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Theta(x_b, x_a) from Theta(x_a, x_b) (symmetry Theta_ijkl(x, x') = Theta_klij(x', x))."""
    return t.permute(1, 0, 3, 2) if kind == "full" else t.transpose(0, 1)

def jacobian_kernel(fn, params, A, B, sym: bool, p: Plan) -> torch.Tensor:
    """Theta = sum over parameter groups and point blocks of J_a J_b^T (eq. 2.7)."""
    out = torch.zeros(p.output_shape, dtype=torch.float64, device=A[0].device)
    ra, rb = ranges(p.n_a, p.block), ranges(p.n_b, p.block)
    for names in p.parameter_groups:
        Jb_single = None if sym or len(rb) > 1 else jacobian(fn, params, B, names, p.kind)
        for i, sa in enumerate(ra):
            Ja = jacobian(fn, params, slice_points(A, sa), names, p.kind)
            if sym:
                out[sa, sa] += _contract_symmetric(Ja, p.kind)
            for j, sb in enumerate(rb):
                if sym and j <= i:
                    continue
                Jb = Jb_single if Jb_single is not None else jacobian(fn, params, slice_points(B, sb), names, p.kind)
                t = contract(Ja, Jb, p.kind)
                out[sa, sb] += t
                if sym:
                    out[sb, sa] += mirror(t, p.kind)
                del Jb, t
            del Ja
    return out

def _contract_symmetric(J: torch.Tensor, kind: str, tile: int = 64) -> torch.Tensor:
    """Theta(x, x) of one block from its Jacobian (layout of :func:`_jacobian`): tiles i <= j, the rest mirrored."""
    n, C = (J.shape[1], J.shape[0]) if kind == "diagonal" else (J.shape[0], J.shape[1])
    if n <= tile:
        return contract(J, J, kind)
    shape = (n, n, C, C) if kind == "full" else (n, n, C) if kind == "diagonal" else (n, n)
    out = torch.empty(shape, dtype=J.dtype, device=J.device)
    r = ranges(n, tile)
    for i, si in enumerate(r):
        for sj in r[i:]:
            t = contract(rows(J, si, kind), rows(J, sj, kind), kind)
            out[si, sj] = t
            if sj != si:
                out[sj, si] = mirror(t, kind)
    return out
