"""Frozen kernels for metric flows (paper sec. 2.3, 3.2): analytic infinite-width NTKs, FS-distance kernels,
the rescaling trick and the empirical NTK of a finite network frozen at initialisation."""
from .analytic import CosineNTK, DeltaKernel, GaussianFS, Kernel, ReluNTK, Scaled
from .empirical import EmpiricalNTK
from .registry import KERNELS, kernel

__all__ = ["KERNELS", "CosineNTK", "DeltaKernel", "EmpiricalNTK", "GaussianFS", "Kernel", "ReluNTK", "Scaled", "kernel"]
