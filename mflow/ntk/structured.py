"""method='structured': eq. 2.7 with the Jacobian of each dense layer factorised.

dg/dW = s_w delta x^T (delta = dg/dy at the layer's output y, x its input), so
Theta = sum_l (s_w^2 x.x' + s_b^2)(delta . delta'): Na Nb C^2 (in + out) per layer instead of Na Nb C^2 in out.
Needs every trainable parameter in a Dense / nn.Linear layer called once per forward (all heads but phifs,
whose g is a derivative of the net); checked by hooks, and spot-checked against the Jacobian method.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import jacrev, vmap

from mflow.models.mlp import Dense

from .components import ranges, slice_points
from .jacobian import contract, jacobian, mirror, rows
from .plan import Plan

class StructureError(ValueError):
    """method='structured' does not apply: a trainable parameter is not the weight or bias of a dense
    layer called once per forward on the points' rows (e.g. the phifs head, whose g is a derivative of the net)."""

def dense_layers(module: nn.Module, params: dict) -> dict[str, tuple[nn.Module, float, float]]:
    """{name: (layer, s_w, s_b)} of the Dense (mflow.models.mlp) / nn.Linear layers holding trainable
    parameters, y = s_w x W^T + s_b b; raises StructureError if some parameter lives elsewhere."""
    layers, owned = {}, set()
    for name, mod in module.named_modules():
        if isinstance(mod, Dense):
            scales = (float(mod.w_scale), float(mod.b_scale))
        elif isinstance(mod, nn.Linear):
            scales = (1.0, 1.0)
        else:
            continue
        keys = {f"{name}.{p}" if name else p for p in ("weight", "bias")}
        if keys & set(params):
            layers[name] = (mod, *scales)
            owned |= keys
    stray = sorted(set(params) - owned)
    if stray:
        raise StructureError(f"parameters {stray[:3]} are not weights or biases of dense layers")
    return layers

def _layer_keys(name: str) -> tuple[str, str]:
    return (f"{name}.weight", f"{name}.bias") if name else ("weight", "bias")

def layer_inputs(fn, params, layers, pts) -> dict[str, torch.Tensor]:
    """Input x [N, in] of every dense layer in one plain forward; StructureError unless each layer
    is called exactly once, on [N, in], outside any derivative transform."""
    n = len(pts[0])
    rec: dict[str, torch.Tensor] = {}

    def pre(name):
        def hook(mod, args):
            x = args[0]
            if torch._C._functorch.is_functorch_wrapped_tensor(x):
                raise StructureError(f"layer {name!r} is evaluated inside a derivative transform (the metric is a derivative of the net)")
            if name in rec:
                raise StructureError(f"layer {name!r} is called more than once per forward")
            if x.ndim != 2 or x.shape[0] != n:
                raise StructureError(f"layer {name!r} sees input {tuple(x.shape)}, not one row per point [{n}, in]")
            rec[name] = x.detach()  # in the network's precision (the Gram products are float64)

        return hook

    handles = [mod.register_forward_pre_hook(pre(name)) for name, (mod, _, _) in layers.items()]
    try:
        fn(params, *pts)
    finally:
        for h in handles:
            h.remove()
    if set(rec) != set(layers):
        raise StructureError(f"layers {sorted(set(layers) - set(rec))} are not called in the forward")
    return rec

def _layer_deltas(fn, params, layers, pts, kind: str) -> dict[str, torch.Tensor]:
    """delta_l = d fn_c / d y_l (y_l the layer's output) per point: [C, N, out] ('diagonal') or [N, C, out].

    A zero perturbation eps_l is added to each layer's output by a forward hook and the Jacobian
    taken w.r.t. it: one vmap over the points (with their charts) of a jacrev at one point (as for
    :func:`output_jacobian`, with a block fallback), through activations only, no weight gradients.
    """
    z, patch, elim = pts
    box: dict[str, torch.Tensor] = {}

    def post(name):
        def hook(mod, args, out):
            return out + box[name] if name in box else out

        return hook

    def run(eps, zz, pa, el):
        box.update(eps)
        try:
            return fn(params, zz, pa, el)
        finally:
            box.clear()

    outs = {name: (mod.weight if hasattr(mod, "weight") else mod.bias).shape[0] for name, (mod, _, _) in layers.items()}
    handles = [mod.register_forward_hook(post(name)) for name, (mod, _, _) in layers.items()]
    res: dict[str, torch.Tensor] = {}
    zr = torch.view_as_real(z.contiguous())
    try:
        try:
            jac_one = vmap(jacrev(lambda e, x, pa, el: run(e, torch.view_as_complex(x)[None], pa[None], el[None])[0]))
            eps = {n: torch.zeros(len(z), 1, o, dtype=torch.float64, device=z.device) for n, o in outs.items()}
            d = jac_one(eps, zr, patch, elim)  # {name: [N, C, 1, out]}
            for n, t in d.items():
                _fill(res, n, torch.arange(len(z), device=z.device), t[:, :, 0], len(z), kind)
        except RuntimeError as e:
            if "vmap" not in str(e) or res:
                raise
            for sl in ranges(len(z), 8):
                g = sl.stop - sl.start
                eps = {n: torch.zeros(g, o, dtype=torch.float64, device=z.device) for n, o in outs.items()}
                f = lambda e, x: run(e, torch.view_as_complex(x), patch[sl], elim[sl])  # noqa: E731
                d = jacrev(f)(eps, zr[sl])  # {name: [g, C, g, out]}: block diagonal in the points
                for n, t in d.items():
                    _fill(res, n, torch.arange(sl.start, sl.stop, device=z.device), t.diagonal(dim1=0, dim2=2).permute(2, 0, 1), len(z), kind)
    finally:
        for h in handles:
            h.remove()
    return res


def _fill(res: dict, name: str, idx, t: torch.Tensor, n: int, kind: str) -> None:
    """res[name][idx] = t ([g, C, out]) in the layout of the kind."""
    if name not in res:
        g, C, o = t.shape
        res[name] = torch.empty((C, n, o) if kind == "diagonal" else (n, C, o), dtype=t.dtype, device=t.device)
    if kind != "diagonal":
        res[name][idx] = t
    else:
        res[name][:, idx] = t.transpose(0, 1)


def _structured_tile(xa, xb, da, db, layers, params, kind: str) -> torch.Tensor:
    """Theta(x_a, x_b) = sum_l (s_w^2 x_a.x_b + s_b^2) (delta_l(x_a) . delta_l(x_b)) for one tile.

    dy_l/dW_l = s_w delta x^T and dy_l/db_l = s_b: the Jacobian of a dense layer's parameters
    factorises, so the contraction over its in x out weights costs in + C^2 out per pair, not C^2 in out.
    Layer inputs x [n, in]; deltas [C, n, out] ('diagonal') or [n, C, out].
    """
    t = None
    for name, (mod, sw, sb) in layers.items():
        kw, kb = _layer_keys(name)
        x1, x2 = xa[name].double(), xb[name].double()
        gx = torch.zeros(x1.shape[0], x2.shape[0], dtype=torch.float64, device=x1.device)
        if kw in params:
            gx = torch.addmm(gx, x1, x2.T, alpha=sw * sw)
        if kb in params:
            gx += sb * sb
        d1, d2 = da[name], db[name]
        if kind == "full":  # [a, c, b, d] products in place, permuted once at the end
            na, C, o = d1.shape
            gd = (d1.reshape(na * C, o) @ d2.reshape(-1, o).T).view(na, C, -1, C)
            gd.mul_(gx[:, None, :, None])
        elif kind == "trace":  # sum_c delta_c . delta'_c in one product
            gd = (d1.reshape(d1.shape[0], -1) @ d2.reshape(d2.shape[0], -1).T).mul_(gx)
        else:
            gd = torch.bmm(d1, d2.transpose(1, 2)).mul_(gx)  # [C, a, b]
        t = gd if t is None else t.add_(gd)
    if kind == "full":
        return t.permute(0, 2, 1, 3)
    return t if kind == "trace" else t.permute(1, 2, 0)


def _check_structure(fn, params, layers, x1, d1, A1, kind: str) -> None:
    """Spot check at one point: the factorised kernel against J J^T of the generic Jacobian.

    Catches parameters that also enter g outside their layer's forward (e.g. read directly by a
    head), which the hooks cannot see; raises StructureError on a mismatch.
    """
    J = jacobian(fn, params, A1, None, kind)
    ref = contract(J, J, kind)
    got = _structured_tile(x1, x1, d1, d1, layers, params, kind)
    scale = float(ref.abs().max())
    eps = max(torch.finfo(x.dtype).eps for x in x1.values())  # a float32 network rounds at ~1e-7
    tol = max(1e-8, 1e3 * eps)  # a parameter outside its layer's forward errs at O(1)
    if not torch.allclose(got, ref, rtol=tol, atol=1e-2 * tol * max(scale, 1e-300)):
        raise StructureError(
            f"the dense-layer factorisation does not reproduce the Jacobian (max error {float((got - ref).abs().max()):.3g} "
            f"of {scale:.3g}): some parameters enter the output outside their layer's forward"
        )

def structured_kernel(fn, params, layers, A, B, sym: bool, p: Plan, xa_in: dict) -> torch.Tensor:
    """eq. 2.7 by dense-layer factorisation (:func:`_structured_tile`), tile by tile (mirrored when xb = xa)."""
    da = _layer_deltas(fn, params, layers, A, p.kind)
    _check_structure(fn, params, layers, {n: x[:1] for n, x in xa_in.items()}, {n: rows(d, slice(0, 1), p.kind) for n, d in da.items()}, slice_points(A, slice(0, 1)), p.kind)
    xb_in, db = (xa_in, da) if sym else (layer_inputs(fn, params, layers, B), _layer_deltas(fn, params, layers, B, p.kind))
    out = torch.empty(p.output_shape, dtype=torch.float64, device=A[0].device)
    ra, rb = ranges(p.n_a, p.block), ranges(p.n_b, p.block)
    for i, sa in enumerate(ra):
        xa = {n: x[sa] for n, x in xa_in.items()}
        dA = {n: rows(d, sa, p.kind) for n, d in da.items()}
        for j, sb in enumerate(rb):
            if sym and j < i:
                continue
            xb = {n: x[sb] for n, x in xb_in.items()}
            dB = {n: rows(d, sb, p.kind) for n, d in db.items()}
            t = _structured_tile(xa, xb, dA, dB, layers, params, p.kind)
            out[sa, sb] = t
            if sym and j > i:
                out[sb, sa] = mirror(t, p.kind)
            del t
    return out
