"""mflow: Calabi-Yau metrics learned by finite neural networks and by frozen metric-NTKs (Halverson & Ruehle,
"Metric Flows with Neural Networks"), in PyTorch Lightning.

The main objects, imported on first use (``import mflow`` itself costs nothing, and ``mflow.geometry`` /
``mflow.data`` never import Lightning or W&B):

    manifold, PRESETS, CompleteIntersection    a CY manifold by preset name, or from polynomials (mflow.geometry)
    sample, CYPoints                           points with charts, pullbacks, g_FS and MC weights
    sigma, kappa, eta                          the sigma measure (eq. B.11) and its parts (mflow.geometry.volume)
    MetricModel, HEADS                         metric networks: a network plus a head -> g (mflow.models)
    CYDataModule, ClusteredDataModule          the Lightning datamodules (mflow.data)
    NetworkFlow, KernelFlow, FrozenKernelFlow  the flows: trained networks and frozen-kernel flows (mflow.flows)
    metric_ntk, metric_ntk_fn                  the empirical metric-NTK, eq. 2.7 (mflow.ntk)
    evaluate, load_checkpoint                  evaluate.py's measures of checkpoints (mflow.evaluation)

docs/api.md shows them in use; docs/conventions.md defines every quantity.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "CompleteIntersection": "mflow.geometry.cicy",
    "NotCalabiYauError": "mflow.geometry.cicy",
    "manifold": "mflow.geometry.presets",
    "PRESETS": "mflow.geometry.presets",
    "CYPoints": "mflow.geometry.points",
    "sample": "mflow.geometry.points",
    "sigma": "mflow.geometry.volume",
    "kappa": "mflow.geometry.volume",
    "eta": "mflow.geometry.volume",
    "MetricModel": "mflow.models.metric",
    "HEADS": "mflow.models.metric",
    "CYDataModule": "mflow.data.datamodule",
    "ClusteredDataModule": "mflow.data.clustered",
    "NetworkFlow": "mflow.flows.network",
    "KernelFlow": "mflow.flows.kernel_module",
    "FrozenKernelFlow": "mflow.flows.kernel",
    "metric_ntk": "mflow.ntk.metric_ntk",
    "metric_ntk_fn": "mflow.ntk.metric_ntk",
    "evaluate": "mflow.evaluation.report",
    "load_checkpoint": "mflow.evaluation.checkpoints",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'mflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
