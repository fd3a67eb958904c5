"""How far an empirical NTK has moved from its value at initialisation (docs/conventions.md section 9), and the
analytic frozen kernel the network output of a ReLU net in NTK parametrisation tends to."""
from __future__ import annotations

import math

import torch

from .components import as_points, network_output
from .metric_ntk import network_ntk, output_ntk


def frobenius(K: torch.Tensor) -> float:
    """|K|_F over all axes."""
    return float(torch.linalg.vector_norm(K))


def relative_change(K: torch.Tensor, K0: torch.Tensor) -> float:
    """|K - K_0|_F / |K_0|_F (falls like 1/sqrt(width) in the lazy regime)."""
    return frobenius(K - K0) / frobenius(K0)


def kernel_distance(K: torch.Tensor, K0: torch.Tensor) -> float:
    """1 - <K, K_0>_F / (|K|_F |K_0|_F): 0 for kernels equal up to scale."""
    return 1.0 - float((K * K0).sum()) / (frobenius(K) * frobenius(K0))


def centre(K: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T/n acting on both point axes (dims 0 and 1) of a kernel [n, n, ...]."""
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean((0, 1), keepdim=True)


def cka(K: torch.Tensor, K0: torch.Tensor) -> float:
    """Centred kernel alignment <HKH, HK_0H>_F / (|HKH|_F |HK_0H|_F): 1 for kernels equal up to scale and shifts."""
    a, b = centre(K), centre(K0)
    return float((a * b).sum()) / (frobenius(a) * frobenius(b))


def analytic_relu_network_kernel(model, points) -> torch.Tensor | None:
    """The frozen (infinite-width) NTK of a MetricModel's network output, out_scale^2 K_ReLU(x, x') delta_ef:
    [n, n, d_out, d_out], or None unless the net is a ReLU MLP in NTK parametrisation.

    K_ReLU is mflow.kernels.analytic.ReluNTK(depth, sigma_w, sigma_b) on the network's input features
    (chart or invariant). This describes the network output v = out_scale * net(x) only: how v enters
    g depends on the head (addfs: r(g) = r(g_FS) + v, so the metric-NTK is this kernel; multfs, matrixfs:
    a point-dependent linear map A(x) of v, Theta = A(x) K A(x')^T; free: a non-linear map; phifs:
    second derivatives of K), so the drift callback compares the network-output kernel with it.
    """
    from mflow.kernels.analytic import ReluNTK
    from mflow.models.mlp import MLP, Dense

    base = getattr(model, "base", model)  # a LinearizedModel: its frozen theta_0 network
    if not isinstance(getattr(base, "net", None), MLP):
        return None
    layers = list(base.net.net)
    dense = [m for m in layers if isinstance(m, Dense)]
    acts = [m for m in layers if not isinstance(m, Dense)]
    if not acts or not all(isinstance(a, torch.nn.ReLU) for a in acts) or any(d.parametrization != "ntk" for d in dense):
        return None
    d0 = dense[0]
    sigma_w = d0.w_scale * math.sqrt(d0.weight.shape[1])
    kernel = ReluNTK(depth=len(acts), sigma_w=sigma_w, sigma_b=d0.b_scale)
    z = as_points(points)[0]
    with torch.no_grad():
        x = base.inputs(z).to(torch.float64)
    K = base.out_scale**2 * kernel.block(x, x)  # [n, n]
    d_out = dense[-1].weight.shape[0]
    return K[:, :, None, None] * torch.eye(d_out, dtype=torch.float64, device=K.device)


def network_kernel(model, points, method: str = "auto") -> torch.Tensor:
    """Empirical NTK of the network output [n, n, d_out, d_out] (for a LinearizedModel: at theta_0, its constant kernel)."""
    if hasattr(model, "base") and hasattr(model, "theta0"):
        return output_ntk(network_output(model.base), model.theta0(), points, kind="full", method=method, module=model.base)
    return network_ntk(model, points, kind="full", method=method)
