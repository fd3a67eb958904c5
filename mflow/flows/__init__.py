"""Metric flows: finite networks trained by gradient descent (NetworkFlow) and the discrete frozen metric-NTK
flow (FrozenKernelFlow, and KernelFlow for train.py); their checkpoint format (mflow.flows.checkpoint)."""
from .kernel import FrozenKernelFlow
from .kernel_module import KernelFlow
from .network import NetworkFlow

__all__ = ["FrozenKernelFlow", "KernelFlow", "NetworkFlow"]
