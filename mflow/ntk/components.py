"""The real components of the metric and the output maps whose NTK is taken (eq. 2.7).

g is complex Hermitian, so the metric-NTK is taken over its C = m^2 real components (:func:`real_components`):
the m real diagonal entries, then Re and then Im of the m(m-1)/2 strictly upper entries in row-major order,
the input order of mflow.models.metric.hermitian (C = 9 on the quintic, m = 3). An output map
fn(params, z, patch, elim) -> [N, C] is what the NTK methods differentiate; points are CYPoints (anything
with .z, .patch, .elim) or a tuple (z [N, n+1] complex, patch [N], elim [N]).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from mflow.geometry.forms import real_components

Points = object  # CYPoints or (z, patch, elim)

OutputFn = Callable[[dict, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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

def slice_points(p, sl):
    return tuple(t[sl] for t in p)

def ranges(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
