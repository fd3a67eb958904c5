"""Evaluation of trained flows: checkpoints (checkpoints.py), measures (measures.py), noised test points
(noise.py), distance scaling and points needed (scaling.py), plots (plots.py), the report (report.py) and the
evaluate.py command line (cli.py)."""
from .checkpoints import EvaluationError, LoadedCheckpoint, load_checkpoint, train_points
from .report import evaluate, evaluate_checkpoint
from .scaling import distance_for_gain, distance_scaling, fit_power_law, points_needed

__all__ = ["EvaluationError", "LoadedCheckpoint", "distance_for_gain", "distance_scaling", "evaluate",
           "evaluate_checkpoint", "fit_power_law", "load_checkpoint", "points_needed", "train_points"]
