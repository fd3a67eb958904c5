"""The empirical metric-NTK (eq. 2.7), the linearised model (eq. 2.10) and the NTK drift measures.

    metric_ntk(model, xa, xb, kind, method)     the kernel of two point sets (mflow.ntk.metric_ntk)
    metric_ntk_fn(model, kind, method)          the same as a function of (xa, xb, params)
    ntk_vp(model, xa, xb, v)                     NTK-vector products, no Jacobian (mflow.ntk.vp)
    LinearizedModel(model)                       g(theta_0) + J (theta - theta_0) (mflow.ntk.linearized)
    relative_change, kernel_distance, cka        drift of K_t from K_0 (mflow.ntk.drift)
"""
from .components import component_names, metric_output, network_output, real_components, trainable
from .drift import cka, kernel_distance, relative_change
from .jacobian import output_jacobian
from .linearized import LinearizedModel
from .metric_ntk import metric_ntk, metric_ntk_fn, metric_plan, network_ntk, output_ntk
from mflow.choices import NTK_KINDS, NTK_METHODS

from .plan import DEFAULT_MAX_BYTES, NTKTooLarge, Plan, plan
from .structured import StructureError
from .vp import ntk_vp

__all__ = [
    "DEFAULT_MAX_BYTES", "NTK_KINDS", "NTK_METHODS", "LinearizedModel", "NTKTooLarge", "Plan", "StructureError", "cka",
    "component_names", "kernel_distance", "metric_ntk", "metric_ntk_fn", "metric_output", "metric_plan",
    "network_ntk", "network_output", "ntk_vp", "output_jacobian", "output_ntk", "plan", "real_components",
    "relative_change", "trainable",
]
