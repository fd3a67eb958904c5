"""EpochLines: one line per epoch instead of a progress bar, for runs whose output is not a terminal (logs, CI)."""
from __future__ import annotations

import time

import lightning as L

SHOWN = ("train/loss", "train/sigma", "val/sigma", "val/gain", "train/gain")


class EpochLines(L.Callback):
    """Prints ``[mflow] epoch e/E: val/sigma ..., val/gain ... (s seconds)`` after every validation (rank 0)."""

    def __init__(self):
        self._t0 = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.4g}" for k in SHOWN if k in m]
        dt = f" ({time.perf_counter() - self._t0:.1f} s)" if self._t0 is not None else ""
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(f"[mflow] epoch {trainer.current_epoch + 1}/{total}, step {trainer.global_step}: {', '.join(parts)}{dt}",
              flush=True)
