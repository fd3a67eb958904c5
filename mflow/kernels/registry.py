"""Kernels by name, for configs (KernelFlow's ``kernel`` and ``kernel_params``)."""
from __future__ import annotations

from .analytic import CosineNTK, DeltaKernel, GaussianFS, Kernel, ReluNTK
from .empirical import EmpiricalNTK

KERNELS = {"relu": ReluNTK, "cosine": CosineNTK, "gaussian": GaussianFS, "delta": DeltaKernel, "empirical": EmpiricalNTK}


def kernel(name: str, **params) -> Kernel:
    """A kernel by name (relu, cosine, gaussian, delta, empirical), e.g. kernel('gaussian', sigma=30.0, inverse=True) (Table 1)."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}")
    return KERNELS[name](**params)
