"""How test points given to evaluate.py (``--test_data FILE``) relate to a checkpoint's train points: the FS
distance of each to its nearest train point (mflow.geometry.distance, exact) and how many of them are train points.
A test set that holds train points measures the fit, not generalisation: evaluate.py warns."""
from __future__ import annotations

import torch

from .measures import stats

SAME_POINT = 1e-6  # FS distance below which a test point is taken to be the train point (round-off of d_FS ~ 1e-8)


def train_overlap(test_z: torch.Tensor, train_z: torch.Tensor, X=None, same: float = SAME_POINT) -> dict:
    """``{n, in_train, fraction_in_train, distance_to_train}``: the test points that are train points (nearest
    distance < ``same``), their fraction, and the nearest-distance statistics (n, min, mean, median, max)."""
    from mflow.geometry.distance import nearest_neighbours

    d, _ = nearest_neighbours(test_z, train_z, X)
    shared = int((d < same).sum())
    return {"n": len(d), "in_train": shared, "fraction_in_train": shared / max(len(d), 1), "distance_to_train": stats(d)}


def overlap_warning(ckpt, test_data, overlap: dict) -> str | None:
    """The warning for a test set that holds train points of the checkpoint (None when it holds none)."""
    if not overlap["in_train"]:
        return None
    return (f"{overlap['in_train']} of the {overlap['n']} points of {test_data} ({overlap['fraction_in_train']:.0%}) are "
            f"train points of {ckpt} (mean distance to the train set {overlap['distance_to_train']['mean']:.3g}): its "
            "test figures measure the fit, not generalisation")
