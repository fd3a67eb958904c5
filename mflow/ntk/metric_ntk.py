"""The empirical metric-NTK of any metric model (eq. 2.7), with interchangeable methods.

Theta_ijkl(x, x') = sum_I dg_ij(x)/dtheta_I dg_kl(x')/dtheta_I  (eq. 2.7)

over the trainable parameters theta of a metric model ``model(z, patch, elim) -> g [N, m, m]`` and the real
components of g (mflow.ntk.components), for two point sets:

  'full'      Theta [Na, Nb, C, C]  (Theta[a, b, i, k] = sum_I dr_i(x_a)/dtheta_I dr_k(x_b)/dtheta_I),
  'diagonal'  [Na, Nb, C]           (the component pairs i = k),
  'trace'     [Na, Nb]              (sum_i of the diagonal).

Methods (they agree to round-off; tests/test_ntk.py): 'jacobian' (mflow.ntk.jacobian, any model),
'vp' (mflow.ntk.vp, NTK-vector products, any model), 'structured' (mflow.ntk.structured, dense-layer
factorisation; every head but phifs), 'auto' (structured where it applies, else jacobian).
Memory: mflow.ntk.plan estimates the bytes first and raises NTKTooLarge above ``max_bytes``.
All outputs are float64 on the points' device; nothing here builds an autograd graph.

:func:`metric_ntk_fn` returns the kernel as a function of (xa, xb, params), in the style of
neural-tangents' ``empirical_ntk_fn``.
"""
from __future__ import annotations

import torch
from torch import nn

from .components import OutputFn, Points, as_points, metric_output, network_output, slice_points, trainable
from .jacobian import jacobian_kernel
from .plan import DEFAULT_MAX_BYTES, Plan, check_kind_method, plan
from .structured import StructureError, dense_layers, layer_inputs, structured_kernel
from .vp import vp_kernel

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
    check_kind_method(kind, method)
    A = as_points(xa)
    sym = xb is None
    B = A if sym else as_points(xb)
    with torch.no_grad():
        p, layers, xa_in = _resolve(fn, params, A, B, kind, method, block, chunk, max_bytes, module)
        if p.method == "structured":
            try:
                return structured_kernel(fn, params, layers, A, B, sym, p, xa_in)
            except StructureError:
                if method == "structured":
                    raise
                p = plan(params, p.n_a, p.n_b, p.components, kind, "jacobian", block, chunk, max_bytes)
        if p.method == "jacobian":
            return jacobian_kernel(fn, params, A, B, sym, p)
        return vp_kernel(fn, params, A, B, sym, p)

def _resolve(fn, params, A, B, kind, method, block, chunk, max_bytes, module):
    """(Plan, dense layers, layer inputs on A) with method 'auto' resolved; the guard runs here."""
    C = fn(params, *slice_points(A, slice(0, 1))).shape[-1]
    layers = xa_in = None
    if method in ("auto", "structured"):
        try:
            if module is None:
                raise StructureError("method='structured' needs the module holding the layers")
            layers = dense_layers(module, params)
            xa_in = layer_inputs(fn, params, layers, A)
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
    check_kind_method(kind, method)
    params = trainable(model) if params is None else params
    A = as_points(xa)
    B = A if xb is None else as_points(xb)
    with torch.no_grad():
        return _resolve(metric_output(model), params, A, B, kind, method, block, chunk, max_bytes, model)[0]


def metric_ntk_fn(
    model: nn.Module, kind: str = "full", method: str = "auto", block: int | None = None, chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
):
    """``ntk_fn(xa, xb=None, params=None)``: the empirical metric-NTK of ``model`` as a function of the points
    and the parameters (default: the model's current trainable ones), like neural-tangents' ``empirical_ntk_fn``.

    kind and method are fixed here, as neural-tangents fixes the trace axes and the implementation; the
    methods are interchangeable (same kernel to round-off).
    """
    check_kind_method(kind, method)

    def ntk_fn(xa: Points, xb: Points | None = None, params: dict | None = None) -> torch.Tensor:
        return metric_ntk(model, xa, xb, kind, method, params, block, chunk, max_bytes)

    return ntk_fn
