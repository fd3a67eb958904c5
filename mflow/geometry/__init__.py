"""Pure float64 geometry of Calabi-Yau complete intersections: points in, tensors out (conventions: docs/conventions.md).

    CompleteIntersection, manifold, PRESETS   the manifold (cicy), by preset name (presets)
    sample, CYPoints                          points with charts, pullbacks, g_FS and MC weights (points, sampling)
    sigma, kappa, eta                         the sigma measure and its parts (volume)
    fs_distance, NearestIndex                 FS / product geodesic distance, nearest neighbours (distance)
    ricci_measure_on, euler_characteristic    curvature of any metric function (curvature, chern)
"""
from .chern import euler_characteristic
from .cicy import CompleteIntersection, NotCalabiYauError
from .curvature import ricci_measure_on
from .distance import NearestIndex, fs_distance
from .forms import NotPositiveDefiniteError
from .points import CYPoints, sample
from .presets import EULER, PRESETS, manifold
from .volume import eta, kappa, sigma

__all__ = [
    "EULER", "PRESETS", "CYPoints", "CompleteIntersection", "NearestIndex", "NotCalabiYauError",
    "NotPositiveDefiniteError", "eta", "euler_characteristic", "fs_distance", "kappa", "manifold",
    "ricci_measure_on", "sample", "sigma",
]
