"""Metric models: a network (mlp, bihomogeneous, cosine) plus a head that turns its output into g_ab on X (metric).

    MetricModel, HEADS, FEATURES     g = head(network(features(z))): free, addfs, multfs, matrixfs, phifs, bihomogeneous
    MLP, PARAMETRIZATIONS            fully connected networks (standard, NTK, muP parametrisation)
    BihomogeneousNet                 the Kaehler-potential network of MLGeometry's family
    CosineNet                        the random-feature cosine net of eq. 2.32
"""
from .bihomogeneous import BihomogeneousNet
from .cosine import CosineNet
from .metric import FEATURES, HEADS, MetricModel
from .mlp import MLP, PARAMETRIZATIONS

__all__ = ["FEATURES", "HEADS", "PARAMETRIZATIONS", "BihomogeneousNet", "CosineNet", "MLP", "MetricModel"]
