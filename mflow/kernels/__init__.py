"""Frozen kernels for metric flows (paper sec. 2.3, 3.2) and FS-distance clustering (sec. 3.1)."""
from .analytic import (
    CosineNet,
    CosineNTK,
    DeltaKernel,
    GaussianFS,
    Kernel,
    ReluNTK,
    Scaled,
    as_features,
    as_z,
    normalising_amplitude,
)
from .empirical import EmpiricalNTK
from .registry import KERNELS, kernel
from .clustering import agreement, batched_clustering, cluster_batch, cluster_figure

__all__ = [
    "KERNELS",
    "CosineNet",
    "CosineNTK",
    "DeltaKernel",
    "EmpiricalNTK",
    "GaussianFS",
    "Kernel",
    "ReluNTK",
    "Scaled",
    "as_features",
    "as_z",
    "kernel",
    "normalising_amplitude",
    "agreement",
    "batched_clustering",
    "cluster_batch",
    "cluster_figure",
]
