"""EpochLines: lines instead of a progress bar, for runs whose output is not a terminal (logs, CI)."""
from __future__ import annotations

import time

import lightning as L

SHOWN = ("train/loss", "train/sigma", "val/sigma", "val/gain", "train/gain")


class EpochLines(L.Callback):
    """Prints ``[mflow] epoch e/E, step s: val/sigma ..., val/gain ... (t s)`` after every validation (rank 0), and
    between validations (kernel flows validate every 20 epochs) a line with the train measures at the end of an
    epoch, at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self._t0 = self._last = None
        self._validated = -1  # the last epoch that validated

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def _line(self, trainer, keys) -> None:
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.4g}" for k in keys if k in m]
        dt = f" ({time.perf_counter() - self._t0:.1f} s)" if self._t0 is not None else ""
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(f"[mflow] epoch {trainer.current_epoch + 1}/{total}, step {trainer.global_step}: {', '.join(parts)}{dt}",
              flush=True)
        self._last = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._validated = trainer.current_epoch
        self._line(trainer, SHOWN)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self._validated == trainer.current_epoch:
            return
        if self._last is None or time.perf_counter() - self._last >= self.every_s:
            self._line(trainer, [k for k in SHOWN if k.startswith("train/")])
