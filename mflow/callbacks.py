"""Callbacks: the run summary (summary.json) written at the end of fit and test."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from .geometry import curvature, volume
from .io import write_json
from .ntk_callbacks import NTKDrift


class RunSummary(L.Callback):
    """Writes <run dir>/summary.json: manifold, model, point counts, sigma (initial, final) and gains on
    train / val / test, epochs, seconds per epoch, the Ricci measure on val points, checkpoint path, and
    the last NTK-drift measurement (``ntk_drift``) when an NTKDrift callback ran."""

    def __init__(self, ricci_points: int = 1000):
        self.ricci_points = ricci_points
        self._t_epoch = None
        self._epochs = 0
        self._fit_seconds = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t_epoch = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if self._t_epoch is not None:  # None when fit resumed mid-epoch
            self._fit_seconds += time.perf_counter() - self._t_epoch
            self._epochs += 1

    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, pl_module)

    def _write(self, trainer, module):
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        splits = {"train": dm.train, "val": dm.val, "test": dm.test}
        final = {k: float(module.sigma_on(p)) for k, p in splits.items()}
        initial = dict(zip(splits, module.initial_sigma.tolist()))
        ckpt = trainer.checkpoint_callback
        summary = {
            "manifold": module.surface.to_dict(),
            "model": dict(module.hparams),
            "points": {k: len(p) for k, p in splits.items()},
            "kappa": float(module.kappa),
            "sigma_initial": initial,
            "sigma_final": final,
            "gain": {k: initial[k] / final[k] for k in splits},
            "ricci_measure_val": self._ricci(module, dm.val),
            "epochs": trainer.current_epoch,
            "seconds_per_epoch": self._fit_seconds / max(self._epochs, 1),
            "checkpoint": (ckpt.best_model_path or ckpt.last_model_path) if ckpt else None,
            "ntk_drift": _last_drift(trainer),
        }
        path = write_json(Path(trainer.default_root_dir) / "summary.json", summary)
        print(f"[mflow] summary: {path}  (val sigma {final['val']:.4g}, gain {summary['gain']['val']:.3g})")

    def _ricci(self, module, points):
        if self.ricci_points <= 0 or not getattr(module, "has_derivatives", True) or getattr(module, "model", None) is None:
            return None
        p = points[: self.ricci_points]
        dev = module.device
        z, patch, elim, J = (t.to(dev) for t in (p.z, p.patch, p.elim, p.pullback))
        with torch.enable_grad():
            ric = curvature.ricci_form(module.model, z, patch, elim, J)
            g = module.model(z, patch, elim)
        scalar = curvature.ricci_scalar(g, ric).detach().cpu()
        det = volume.real_det(g.detach().cpu())
        return float(curvature.ricci_measure(p.weights, det, p.omega_sq, scalar, module.surface.dim))


def _last_drift(trainer) -> dict | None:
    """The last entry of the NTKDrift callback's series (None without one)."""
    drift = next((c for c in trainer.callbacks if isinstance(c, NTKDrift) and c.series), None)
    if drift is None:
        return None
    last = drift.series[-1]
    return {k: last.get(k) for k in ("step", "relative_change", "kernel_distance", "cka", "velocity", "analytic_distance")}
