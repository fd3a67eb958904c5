"""The empirical metric-NTK of any metric model (eq. 2.7): Jacobian contraction or NTK-vector products.

Theta_ijkl(x, x') = sum_I dg_ij(x)/dtheta_I dg_kl(x')/dtheta_I  (eq. 2.7)

over the trainable parameters theta of a metric model ``model(z, patch, elim) -> g [N, m, m]``
(mflow.models.metric.MetricModel with any head, mflow.linearized.LinearizedModel, ...).
g is complex Hermitian, so it is handled through its C = m^2 real components
(:func:`real_components`): the m real diagonal entries, then Re and then Im of the m(m-1)/2 strictly
upper entries in row-major order, the input order of mflow.models.metric.hermitian. For the quintic
(m = 3) that is C = 9 components, and the kernel of two point sets is

  'full'      Theta [Na, Nb, C, C]  (Theta[a, b, i, k] = sum_I dr_i(x_a)/dtheta_I dr_k(x_b)/dtheta_I),
  'diagonal'  [Na, Nb, C]           (the component pairs i = k),
  'trace'     [Na, Nb]              (sum_i of the diagonal).

Implementations (they agree to round-off; tests/test_ntk.py):

  method='jacobian'    per-point Jacobians J [N, C, P] (one vmap over the points of a chart of a
                       jacrev over parameters), contracted block by block: at most two point blocks
                       (and, when needed, only a group of the parameters) of J are held at once.
                       Any model. Cost (Na C)(Nb C) P for 'full', Na Nb C P for 'trace'/'diagonal'.
  method='vp'          NTK-vector products Theta v = J_a (J_b^T v): a vjp over x_b then a jvp over
                       x_a, no Jacobian (:func:`ntk_vp`); the kernel's columns Theta e_(b, k) come a
                       chunk of columns at a time. Any model; about 2 Na Nb C P for an MLP.
  method='structured'  the same contraction with the Jacobian of each dense layer factorised,
                       dg/dW = s_w delta x^T (delta = dg/dy at the layer's output y, x its input):
                       Theta = sum_l (s_w^2 x.x' + s_b^2)(delta . delta'), Na Nb C^2 (in + out) per
                       layer instead of Na Nb C^2 in out. Needs every trainable parameter in a Dense
                       / nn.Linear layer called once per forward (all heads but phifs, whose g is a
                       derivative of the net); checked, and spot-checked against 'jacobian'.
  method='auto'        'structured' where it applies, else 'jacobian'.

Memory: before computing, :func:`plan` estimates the bytes (output plus working blocks) and raises
:class:`NTKTooLarge` above ``max_bytes`` (default 2 GiB) instead of running out of memory.

Points are CYPoints (anything with .z, .patch, .elim) or a tuple (z [N, n+1] complex, patch [N],
elim [N]). All outputs are float64 on the points' device; nothing here builds an autograd graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .checks import integer

KINDS = ("full", "trace", "diagonal")
METHODS = ("auto", "structured", "jacobian", "vp")
DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB
JACOBIAN_BLOCK_BYTES = 512 * 1024**2  # at most this much of J per point block (auto block size)
VP_PAIRS = 2**16  # auto sizes for 'vp': (columns in a chunk) x (rows in a block) <= this
_F64 = 8

Points = object  # CYPoints or (z, patch, elim)
OutputFn = Callable[[dict, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class NTKTooLarge(ValueError):
    """The requested kernel would need more memory than allowed (raised before anything is computed)."""

    def __init__(self, needed_bytes: int, limit_bytes: int, detail: str):
        self.needed_bytes, self.limit_bytes = int(needed_bytes), int(limit_bytes)
        super().__init__(
            f"the empirical metric-NTK would need about {_size(needed_bytes)} ({detail}), more than the "
            f"limit of {_size(limit_bytes)}: use kind='trace' or 'diagonal', fewer points or a smaller "
            "block, or raise max_bytes"
        )


def _size(b: float) -> str:
    for unit, k in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if b >= k:
            return f"{b / k:.3g} {unit}"
    return f"{int(b)} B"


# ----------------------------------------------------------------------------- components
def real_components(g: torch.Tensor) -> torch.Tensor:
    """The m^2 real components of Hermitian g: [..., m, m] -> [..., m^2].

    Order: g_00..g_(m-1)(m-1) (real), Re g_ab then Im g_ab for a < b (row-major): the input of
    mflow.models.metric.hermitian, so ``hermitian(real_components(g), m) == g``.
    """
    m = g.shape[-1]
    iu = torch.triu_indices(m, m, offset=1, device=g.device)
    up = g[..., iu[0], iu[1]]
    diag = g.diagonal(dim1=-2, dim2=-1)
    if not g.is_complex():
        return torch.cat([diag, up, torch.zeros_like(up)], -1)
    return torch.cat([diag.real, up.real, up.imag], -1)


def component_names(m: int) -> list[str]:
    """Names of the real components in :func:`real_components` order, e.g. 'g00', 'Re g01', 'Im g12'."""
    iu = torch.triu_indices(m, m, offset=1).T.tolist()
    return [f"g{a}{a}" for a in range(m)] + [f"Re g{a}{b}" for a, b in iu] + [f"Im g{a}{b}" for a, b in iu]


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters theta of eq. 2.7: {name: detached tensor} of every parameter that requires grad."""
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def metric_output(model: nn.Module) -> OutputFn:
    """fn(params, z, patch, elim) -> real components of model(z, patch, elim) at params: [N, m^2]."""

    def fn(params, z, patch, elim):
        return real_components(functional_call(model, params, (z, patch, elim)))

    return fn


def network_output(model: nn.Module) -> OutputFn:
    """fn(params, z, patch, elim) -> the scaled network output out_scale * net(inputs(z)) of a MetricModel: [N, d_out].

    The kernel of this map is what the infinite-width NTKs of mflow.kernels describe (the network
    itself, before the head turns its outputs into g).
    """
    for attr in ("net", "inputs", "out_scale"):
        if not hasattr(model, attr):
            raise TypeError(f"network_output needs a MetricModel (with .net, .inputs, .out_scale), got {type(model).__name__}")

    def fn(params, z, patch, elim):
        net_params = {k[4:]: v for k, v in params.items() if k.startswith("net.")}
        return model.out_scale * functional_call(model.net, net_params, (model.inputs(z),))

    return fn


def as_points(x: Points) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z [N, n+1] complex, patch [N] int64, elim [N] int64) from CYPoints or a tuple."""
    if hasattr(x, "z"):
        z, patch, elim = x.z, x.patch, x.elim
    else:
        try:
            z, patch, elim = x
        except (TypeError, ValueError):
            raise TypeError("points must be CYPoints or a tuple (z, patch, elim)") from None
    if z.ndim != 2 or len(z) == 0 or not z.is_complex():
        raise ValueError(f"z must be a non-empty complex [N, n+1] tensor, got {tuple(z.shape)} {z.dtype}")
    if patch.shape != (len(z),) or elim.shape != (len(z),):
        raise ValueError(f"patch and elim must be [N] = [{len(z)}], got {tuple(patch.shape)} and {tuple(elim.shape)}")
    return z, patch.to(torch.int64), elim.to(torch.int64)


def _slice(p, sl):
    return tuple(t[sl] for t in p)


def _ranges(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- Jacobians
def output_jacobian(fn: OutputFn, params: dict, x: Points, names: list[str] | None = None) -> torch.Tensor:
    """Per-point Jacobian d fn_c(x_n) / d theta_I: -> [N, C, P] (P = parameters in ``names`` order, flattened).

    One vmap over the points (with their charts) of a jacrev over the parameters, so the model sees one
    point at a time.
    """
    return _jacobian(fn, params, as_points(x), names, "full")


def _jacobian(fn: OutputFn, params: dict, pts, names, kind: str) -> torch.Tensor:
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
    for sl in _ranges(len(z), size):
        f = lambda p, x: fn({**rest, **p}, torch.view_as_complex(x), patch[sl], elim[sl])  # noqa: E731
        yield torch.arange(sl.start, sl.stop, device=z.device), jacrev(f)(sel, zr[sl])  # {name: [g, C, *shape]}


def _rows(J: torch.Tensor, sl: slice, kind: str) -> torch.Tensor:
    return J[:, sl] if kind == "diagonal" else J[sl]


def _contract(Ja: torch.Tensor, Jb: torch.Tensor, kind: str) -> torch.Tensor:
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


def _mirror(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Theta(x_b, x_a) from Theta(x_a, x_b) (symmetry Theta_ijkl(x, x') = Theta_klij(x', x))."""
    return t.permute(1, 0, 3, 2) if kind == "full" else t.transpose(0, 1)


# ----------------------------------------------------------------------------- dense-layer structure
class StructureError(ValueError):
    """method='structured' does not apply: a trainable parameter is not the weight or bias of a dense
    layer called once per forward on the points' rows (e.g. the phifs head, whose g is a derivative of the net)."""


def dense_layers(module: nn.Module, params: dict) -> dict[str, tuple[nn.Module, float, float]]:
    """{name: (layer, s_w, s_b)} of the Dense (mflow.models.mlp) / nn.Linear layers holding trainable
    parameters, y = s_w x W^T + s_b b; raises StructureError if some parameter lives elsewhere."""
    from .models.mlp import Dense

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


def _layer_inputs(fn, params, layers, pts) -> dict[str, torch.Tensor]:
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
            rec[name] = x.detach()

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
            for sl in _ranges(len(z), 8):
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
        x1, x2 = xa[name], xb[name]
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


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Plan:
    """Sizes and the memory estimate of one kernel computation (bytes, float64)."""

    method: str
    kind: str
    n_a: int
    n_b: int
    components: int
    parameters: int
    block: int  # points per block: Jacobian ('jacobian'), output tile ('structured'), jvp rows ('vp')
    chunk: int  # columns' points per vjp ('vp'); 0 for 'jacobian'
    parameter_groups: tuple  # tuples of parameter names contracted together
    output_bytes: int
    work_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.output_bytes + self.work_bytes

    @property
    def output_shape(self) -> tuple:
        C = self.components
        return {"full": (self.n_a, self.n_b, C, C), "diagonal": (self.n_a, self.n_b, C), "trace": (self.n_a, self.n_b)}[self.kind]


def _check(kind: str, method: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def _positive_int(name, v):
    if v is not None:
        integer(name, v)


def plan(
    params: dict,
    n_a: int,
    n_b: int,
    components: int,
    kind: str = "full",
    method: str = "jacobian",
    block: int | None = None,
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    layer_sizes: list[tuple[int, int]] | None = None,
) -> Plan:
    """Block sizes and memory estimate (bytes); raises :class:`NTKTooLarge` when it exceeds max_bytes.

    'structured': output + the layer inputs and deltas of both point sets + three output tiles of
    block x block points (block: all points unless the tiles would pass 512 MiB); needs layer_sizes
    [(in, out)] of the dense layers.
    'jacobian': output + three Jacobian blocks [block, C, P_group] (the two being contracted and
    the one being filled) + one output tile. Blocks default to the most points whose Jacobian fits
    in min(512 MiB, a third of what the output leaves); the parameters are split into groups
    (whole tensors) only when not even 32 points fit.
    'vp': output + one chunk of cotangents [chunk C, P] + the tangent outputs [chunk C, block, C];
    the jvp's activations (chunk C x block x the hidden widths, not counted) are kept in check by
    chunk x block <= 2^16 / C by default.
    """
    _check(kind, method)
    if method == "auto":
        raise ValueError("plan needs a concrete method: structured, jacobian or vp")
    _positive_int("block", block)
    _positive_int("chunk", chunk)
    C = components
    sizes = {k: v.numel() for k, v in params.items()}
    P = sum(sizes.values())
    if P == 0:
        raise ValueError("the model has no trainable parameters: its NTK is zero")
    per_pair = {"full": C * C, "diagonal": C, "trace": 1}[kind]
    out_bytes = n_a * n_b * per_pair * _F64
    free = max_bytes - out_bytes
    shape = [n_a, n_b] + ([C, C] if kind == "full" else [C] if kind == "diagonal" else [])
    if free <= 0:
        raise NTKTooLarge(out_bytes, max_bytes, f"the output {shape} alone is {_size(out_bytes)}")
    groups: list[tuple] = [tuple(params)]
    chunk_out = 0
    n_max = max(n_a, n_b)
    if method == "structured":
        if not layer_sizes:
            raise ValueError("method='structured' needs the dense layers' sizes")
        per_point = sum(i + C * o for i, o in layer_sizes) * _F64
        cap = min(JACOBIAN_BLOCK_BYTES, max(free - 2 * n_max * per_point, 0) // 3)
        if block is None:
            block = max(1, min(n_max, math.isqrt(max(cap // (per_pair * _F64), 1))))
        work = 2 * n_max * per_point + 3 * block * block * per_pair * _F64
        detail = f"output {shape} {_size(out_bytes)} + layer inputs and deltas + three [{block}, {block}] tiles"
    elif method == "jacobian":
        cap = min(JACOBIAN_BLOCK_BYTES, free // 3)
        if block is None:
            block = int(min(n_max, max(1, cap // (C * P * _F64))))
            if block < min(32, n_max):  # split the parameters instead of shrinking the blocks further
                block = min(32, n_max)
                groups = _group(sizes, cap // (C * block * _F64))
        p_max = max(sum(sizes[k] for k in g) for g in groups)
        work = 3 * C * block * p_max * _F64 + 2 * block * block * per_pair * _F64
        detail = f"output {shape} {_size(out_bytes)} + three Jacobian blocks [{block}, {C}, {p_max}] {_size(3 * C * block * p_max * _F64)}"
    else:
        chunk = max(1, min(n_b, 16)) if chunk is None else chunk
        if block is None:
            block = max(1, min(n_a, VP_PAIRS // (chunk * C)))
        chunk_out = chunk
        work = chunk * C * P * _F64 + 2 * chunk * C * block * C * _F64 + block * block * per_pair * _F64
        detail = f"output {shape} {_size(out_bytes)} + cotangent chunk [{chunk * C}, {P}] and tangent outputs"
    p = Plan(method, kind, n_a, n_b, C, P, int(block), chunk_out, tuple(groups), out_bytes, int(work))
    if p.total_bytes > max_bytes:
        raise NTKTooLarge(p.total_bytes, max_bytes, detail)
    return p


def _group(sizes: dict, per_group: int) -> list[tuple]:
    """Whole parameter tensors packed greedily into groups of at most per_group numbers."""
    groups, cur, n = [], [], 0
    for k, s in sizes.items():
        if cur and n + s > per_group:
            groups.append(tuple(cur))
            cur, n = [], 0
        cur.append(k)
        n += s
    groups.append(tuple(cur))
    return groups


# ----------------------------------------------------------------------------- kernels
def metric_ntk(
    model: nn.Module,
    xa: Points,
    xb: Points | None = None,
    kind: str = "full",
    method: str = "auto",
    params: dict | None = None,
    block: int | None = None,
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Empirical metric-NTK (eq. 2.7) of a metric model at params (default: its current trainable ones).

    xa, xb: points (xb defaults to xa, and then only half of the kernel is computed).
    Returns 'full' [Na, Nb, C, C], 'diagonal' [Na, Nb, C] or 'trace' [Na, Nb] (C = m^2 real
    components of g, see :func:`real_components`). method: 'jacobian' or 'vp' (any model),
    'structured' (all trainable parameters in dense layers called once per forward: every head but
    phifs), 'auto' (structured where it applies, else jacobian). Raises NTKTooLarge beyond max_bytes.
    """
    params = trainable(model) if params is None else params
    return output_ntk(metric_output(model), params, xa, xb, kind, method, block, chunk, max_bytes, module=model)


def network_ntk(
    model: nn.Module, xa: Points, xb: Points | None = None, kind: str = "full", method: str = "auto", **kw
) -> torch.Tensor:
    """NTK of the scaled network output of a MetricModel (:func:`network_output`): [Na, Nb, d_out, d_out] for 'full'.

    This is the kernel the analytic infinite-width NTKs describe (times out_scale^2, times the
    identity in the outputs), before the head maps the outputs to g.
    """
    params = kw.pop("params", None)
    params = trainable(model) if params is None else params
    return output_ntk(network_output(model), params, xa, xb, kind, method, module=model, **kw)


def output_ntk(
    fn: OutputFn,
    params: dict,
    xa: Points,
    xb: Points | None = None,
    kind: str = "full",
    method: str = "jacobian",
    block: int | None = None,
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    module: nn.Module | None = None,
) -> torch.Tensor:
    """The NTK sum_I dfn_i(x)/dtheta_I dfn_k(x')/dtheta_I of any real output map fn(params, z, patch, elim) -> [N, C].

    Same kinds, methods and guard as :func:`metric_ntk` (which is this with fn = :func:`metric_output`);
    'structured' and 'auto' need the module that holds the layers.
    """
    _check(kind, method)
    A = as_points(xa)
    sym = xb is None
    B = A if sym else as_points(xb)
    with torch.no_grad():
        p, layers, xa_in = _resolve(fn, params, A, B, kind, method, block, chunk, max_bytes, module)
        if p.method == "structured":
            try:
                return _structured_kernel(fn, params, layers, A, B, sym, p, xa_in)
            except StructureError:
                if method == "structured":
                    raise
                p = plan(params, p.n_a, p.n_b, p.components, kind, "jacobian", block, chunk, max_bytes)
        if p.method == "jacobian":
            return _jacobian_kernel(fn, params, A, B, sym, p)
        return _vp_kernel(fn, params, A, B, sym, p)


def _resolve(fn, params, A, B, kind, method, block, chunk, max_bytes, module):
    """(Plan, dense layers, layer inputs on A) with method 'auto' resolved; the guard runs here."""
    C = fn(params, *_slice(A, slice(0, 1))).shape[-1]
    layers = xa_in = None
    if method in ("auto", "structured"):
        try:
            if module is None:
                raise StructureError("method='structured' needs the module holding the layers")
            layers = dense_layers(module, params)
            xa_in = _layer_inputs(fn, params, layers, A)
            method = "structured"
        except StructureError:
            if method == "structured":
                raise
            method = "jacobian"
    sizes = None
    if method == "structured":
        sizes = [(xa_in[n].shape[1], (m.weight if hasattr(m, "weight") else m.bias).shape[0]) for n, (m, _, _) in layers.items()]
    return plan(params, len(A[0]), len(B[0]), C, kind, method, block, chunk, max_bytes, sizes), layers, xa_in


def metric_plan(
    model: nn.Module,
    xa: Points,
    xb: Points | None = None,
    kind: str = "full",
    method: str = "auto",
    params: dict | None = None,
    block: int | None = None,
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Plan:
    """What :func:`metric_ntk` with these arguments would do (method, blocks, bytes), without computing it.

    Raises NTKTooLarge exactly when metric_ntk would. (One forward pass on xa, to size the outputs
    and, for 'auto' / 'structured', to find the dense layers.)
    """
    _check(kind, method)
    params = trainable(model) if params is None else params
    A = as_points(xa)
    B = A if xb is None else as_points(xb)
    with torch.no_grad():
        return _resolve(metric_output(model), params, A, B, kind, method, block, chunk, max_bytes, model)[0]


def _check_structure(fn, params, layers, x1, d1, A1, kind: str) -> None:
    """Spot check at one point: the factorised kernel against J J^T of the generic Jacobian.

    Catches parameters that also enter g outside their layer's forward (e.g. read directly by a
    head), which the hooks cannot see; raises StructureError on a mismatch.
    """
    J = _jacobian(fn, params, A1, None, kind)
    ref = _contract(J, J, kind)
    got = _structured_tile(x1, x1, d1, d1, layers, params, kind)
    scale = float(ref.abs().max())
    if not torch.allclose(got, ref, rtol=1e-8, atol=1e-10 * max(scale, 1e-300)):
        raise StructureError(
            f"the dense-layer factorisation does not reproduce the Jacobian (max error {float((got - ref).abs().max()):.3g} "
            f"of {scale:.3g}): some parameters enter the output outside their layer's forward"
        )


def _structured_kernel(fn, params, layers, A, B, sym: bool, p: Plan, xa_in: dict) -> torch.Tensor:
    """eq. 2.7 by dense-layer factorisation (:func:`_structured_tile`), tile by tile (mirrored when xb = xa)."""
    da = _layer_deltas(fn, params, layers, A, p.kind)
    _check_structure(fn, params, layers, {n: x[:1] for n, x in xa_in.items()}, {n: _rows(d, slice(0, 1), p.kind) for n, d in da.items()}, _slice(A, slice(0, 1)), p.kind)
    xb_in, db = (xa_in, da) if sym else (_layer_inputs(fn, params, layers, B), _layer_deltas(fn, params, layers, B, p.kind))
    out = torch.empty(p.output_shape, dtype=torch.float64, device=A[0].device)
    ra, rb = _ranges(p.n_a, p.block), _ranges(p.n_b, p.block)
    for i, sa in enumerate(ra):
        xa = {n: x[sa] for n, x in xa_in.items()}
        dA = {n: _rows(d, sa, p.kind) for n, d in da.items()}
        for j, sb in enumerate(rb):
            if sym and j < i:
                continue
            xb = {n: x[sb] for n, x in xb_in.items()}
            dB = {n: _rows(d, sb, p.kind) for n, d in db.items()}
            t = _structured_tile(xa, xb, dA, dB, layers, params, p.kind)
            out[sa, sb] = t
            if sym and j > i:
                out[sb, sa] = _mirror(t, p.kind)
            del t
    return out


def _jacobian_kernel(fn, params, A, B, sym: bool, p: Plan) -> torch.Tensor:
    """Theta = sum over parameter groups and point blocks of J_a J_b^T (eq. 2.7)."""
    out = torch.zeros(p.output_shape, dtype=torch.float64, device=A[0].device)
    ra, rb = _ranges(p.n_a, p.block), _ranges(p.n_b, p.block)
    for names in p.parameter_groups:
        Jb_single = None if sym or len(rb) > 1 else _jacobian(fn, params, B, names, p.kind)
        for i, sa in enumerate(ra):
            Ja = _jacobian(fn, params, _slice(A, sa), names, p.kind)
            if sym:
                out[sa, sa] += _contract_symmetric(Ja, p.kind)
            for j, sb in enumerate(rb):
                if sym and j <= i:
                    continue
                Jb = Jb_single if Jb_single is not None else _jacobian(fn, params, _slice(B, sb), names, p.kind)
                t = _contract(Ja, Jb, p.kind)
                out[sa, sb] += t
                if sym:
                    out[sb, sa] += _mirror(t, p.kind)
                del Jb, t
            del Ja
    return out


def _contract_symmetric(J: torch.Tensor, kind: str, tile: int = 64) -> torch.Tensor:
    """Theta(x, x) of one block from its Jacobian (layout of :func:`_jacobian`): tiles i <= j, the rest mirrored."""
    n, C = (J.shape[1], J.shape[0]) if kind == "diagonal" else (J.shape[0], J.shape[1])
    if n <= tile:
        return _contract(J, J, kind)
    shape = (n, n, C, C) if kind == "full" else (n, n, C) if kind == "diagonal" else (n, n)
    out = torch.empty(shape, dtype=J.dtype, device=J.device)
    r = _ranges(n, tile)
    for i, si in enumerate(r):
        for sj in r[i:]:
            t = _contract(_rows(J, si, kind), _rows(J, sj, kind), kind)
            out[si, sj] = t
            if sj != si:
                out[sj, si] = _mirror(t, kind)
    return out


def _vp_kernel(fn, params, A, B, sym: bool, p: Plan) -> torch.Tensor:
    """Columns Theta e_(b, k) of the kernel: a vjp over a chunk of x_b (one per column), then a jvp over x_a.

    With xb = xa only the rows a >= the chunk's first point are computed; the rest is mirrored.
    """
    out = torch.zeros(p.output_shape, dtype=torch.float64, device=A[0].device)
    C = p.components
    for sb in _ranges(p.n_b, p.chunk):
        Bc = _slice(B, sb)
        nc = sb.stop - sb.start
        _, pull = vjp(lambda q: fn(q, *Bc), params)
        E = torch.eye(nc * C, dtype=torch.float64, device=A[0].device).reshape(nc * C, nc, C)
        (u,) = vmap(pull)(E)  # {name: [nc C, *shape]}: J(x_b)^T e_(b, k), this chunk only
        del E
        start = sb.start if sym else 0
        for sa in _ranges(p.n_a - start, p.block):
            sa = slice(sa.start + start, sa.stop + start)
            Aa = _slice(A, sa)
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
                out[sb, sa] = _mirror(t, p.kind)
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
        for sb in _ranges(len(B[0]), block):
            Bb = _slice(B, sb)
            _, pull = vjp(lambda q: fn(q, *Bb), params)
            vb = v[..., sb, :]
            (ub,) = vmap(pull)(vb) if batched else pull(vb)
            u = ub if u is None else {k: u[k] + ub[k] for k in u}
        outs = []
        for sa in _ranges(len(A[0]), block):
            Aa = _slice(A, sa)
            push = lambda t: jvp(lambda q: fn(q, *Aa), (params,), (t,))[1]  # noqa: E731
            outs.append(vmap(push)(u) if batched else push(u))
        return torch.cat(outs, -2)
