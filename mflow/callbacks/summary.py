"""RunSummary: <run dir>/summary.json, written at the end of fit and of test, recording what ran and what it gave."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from mflow.geometry import curvature
from mflow.io import write_json

from .drift import NTKDrift


class RunSummary(L.Callback):
    """Writes <run dir>/summary.json: manifold, model settings, the optimizer and scheduler that actually ran,
    the loggers, point counts, sigma on train / val / test (``sigma_fs`` of the FS metric, ``sigma_init`` of the model
    at initialisation, ``sigma_final``), ``gain`` = sigma_FS / sigma_final and ``reduction_from_init`` =
    sigma_init / sigma_final (docs/conventions.md), non-positive-definite points, epochs, seconds per epoch, the Ricci measure on val points (networks), the checkpoint, and the last
    NTK-drift measurement (``ntk_drift``) when an NTKDrift callback ran. ``path`` is where it went."""

    def __init__(self, ricci_points: int = 1000):
        self.ricci_points = ricci_points
        self._t_epoch = None
        self._epochs = 0
        self._fit_seconds = 0.0
        self.path: Path | None = None
        self.summary: dict | None = None

    def state_dict(self) -> dict:  # a resumed run's seconds per epoch cover its earlier epochs too
        return {"fit_seconds": self._fit_seconds, "epochs_timed": self._epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self._fit_seconds = state_dict.get("fit_seconds", 0.0)
        self._epochs = state_dict.get("epochs_timed", 0)

    def on_train_epoch_start(self, trainer, pl_module):
        self._t_epoch = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if self._t_epoch is not None:  # None when fit resumed mid-epoch
            self._fit_seconds += time.perf_counter() - self._t_epoch
            self._epochs += 1

    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        if self.summary is None:  # a test after fit sees the fitted model: the summary is written already
            self._write(trainer, pl_module)

    def _write(self, trainer, module):
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        splits = {s: dm.batch_of(s) for s in ("train", "val", "test")}  # a moduli family's carry t and kappa(t)
        measured = {k: module.measure(p) for k, p in splits.items()}
        final = {k: m["sigma"] for k, m in measured.items()}
        initial = dict(zip(splits, module.initial_sigma.tolist()))
        ckpt = trainer.checkpoint_callback
        self.summary = {
            "manifold": module.surface.to_dict(),
            "model": {"class": f"{type(module).__module__}.{type(module).__name__}", **dict(module.hparams)},
            "optimizer": ran_optimizer(trainer) if module.kind == "network" else None,  # a kernel flow's step is its lr
            "loggers": [type(lg).__name__ for lg in trainer.loggers],
            "points": {k: len(p["z"]) for k, p in splits.items()},
            "kappa": float(module.kappa),
            "sigma_fs": {k: m["sigma_fs"] for k, m in measured.items()},
            "sigma_init": initial,
            "sigma_final": final,
            "gain": {k: measured[k]["sigma_fs"] / final[k] for k in splits},
            "reduction_from_init": {k: initial[k] / final[k] for k in splits},
            "not_positive_definite": {k: m["not_pd"] for k, m in measured.items()},
            "ricci_measure_val": self._ricci(module, dm.val),
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "seconds_per_epoch": self._fit_seconds / max(self._epochs, 1),
            "checkpoint": (ckpt.best_model_path or ckpt.last_model_path) if ckpt else None,
            "ntk_drift": _last_drift(trainer),
        }
        self.path = write_json(Path(trainer.default_root_dir) / "summary.json", self.summary)

    def _ricci(self, module, points):
        if self.ricci_points <= 0 or not getattr(module, "has_derivatives", True) or getattr(module, "model", None) is None:
            return None
        return curvature.ricci_measure_on(module.model, points[: self.ricci_points].to(module.device), module.surface.dim)[0]


def ran_optimizer(trainer) -> dict | None:
    """The optimizer(s) and lr scheduler(s) the trainer actually ran: class and hyperparameters of the first param
    group (a --optimizer / --lr_scheduler given on the command line shows here, not in the model's settings)."""
    if not trainer.optimizers:
        return None
    out = []
    for opt in trainer.optimizers:
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params" and isinstance(v, (int, float, str, bool, tuple))}
        out.append({"class": type(opt).__name__, **group})
    scheds = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
    return {"optimizers": out, "lr_schedulers": scheds}


def _last_drift(trainer) -> dict | None:
    """The last entry of the NTKDrift callback's series (None without one)."""
    drift = next((c for c in trainer.callbacks if isinstance(c, NTKDrift) and c.series), None)
    if drift is None:
        return None
    last = drift.series[-1]
    return {k: last.get(k) for k in ("step", "relative_change", "kernel_distance", "cka", "velocity", "analytic_distance")}
