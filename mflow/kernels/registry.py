"""Kernels by name, for configs (KernelFlow's ``kernel`` and ``kernel_params``)."""
from __future__ import annotations

import math

import torch

from mflow.geometry.points import as_z, cy_points
from mflow.geometry.volume import real_det

from .analytic import CosineNTK, DeltaKernel, GaussianFS, Kernel, ReluNTK, Scaled
from .empirical import EmpiricalNTK
from .network import NetworkNTK

KERNELS = {"relu": ReluNTK, "cosine": CosineNTK, "gaussian": GaussianFS, "delta": DeltaKernel, "empirical": EmpiricalNTK,
           "scaled": Scaled, "network_ntk": NetworkNTK}
H_FUNCTIONS = ("det_g_fs", "weight")
ON_SPACE = ("gaussian", "delta")  # kernels of the distance on X: built with space=surface (products: sqrt(sum t_i d_i^2))


def scale_function(surface, h: str, power: float):
    """h(x) for the rescaling trick (eq. 2.15-2.16) by name, on points of ``surface`` (z [N, n+1] or CYPoints):
    'det_g_fs': det g_FS(x)^power in the point's chart (eq. 2.28 takes power -1/4: the volume factor);
    'weight': w(x)^power, w the MC weight (|Omega|^2 over the sampling density: chart-independent, the CY volume
    over the sampled one; deg |Omega|^2 / det g_FS for one P^n)."""
    if h not in H_FUNCTIONS:
        raise ValueError(f"unknown scale function h={h!r}; choose one of {H_FUNCTIONS}")
    power = float(power)

    def fn(x) -> torch.Tensor:
        p = x if hasattr(x, "g_fs") else cy_points(surface, as_z(x), drop_ties=False)
        base = real_det(p.g_fs) if h == "det_g_fs" else p.weights
        return base**power

    fn.__name__ = f"{h}^{power:g}"
    return fn


def kernel(name: str, surface=None, **params) -> Kernel:
    """A kernel by name (relu, cosine, gaussian, delta, empirical, scaled, network_ntk), e.g. kernel('gaussian',
    sigma=30.0, inverse=True) (Table 1). 'scaled' (eq. 2.16) takes {kernel: <name>, kernel_params: {...}, h: det_g_fs |
    weight, power: p} and needs the surface the points lie on; 'network_ntk' takes {model: a metric network, base}
    (KernelFlow loads the model from a checkpoint). The FS-distance kernels (gaussian, delta) get the surface as
    their ``space`` (its product distance; a ``space`` in params wins), so a kernel rebuilt from a config's name and
    params with the config's surface is the one it was."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}")
    if name in ON_SPACE and surface is not None:
        params = {"space": surface, **params}
    if name != "scaled":
        return KERNELS[name](**params)
    unknown = set(params) - {"kernel", "kernel_params", "h", "power"}
    if unknown or "kernel" not in params:
        raise ValueError(f"kernel 'scaled' takes {{kernel, kernel_params, h, power}} (kernel required), got {sorted(params)}")
    if surface is None:
        raise ValueError("kernel 'scaled' needs the manifold (its h is a function on X)")
    base = kernel(params["kernel"], surface, **(params.get("kernel_params") or {}))
    power = float(params.get("power", -0.25))
    if not math.isfinite(power):
        raise ValueError(f"the power of h must be finite, got {power}")
    return Scaled(base, scale_function(surface, params.get("h", "det_g_fs"), power))
