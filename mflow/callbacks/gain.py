"""SigmaGain: sigma, the gain sigma_FS / sigma and the reduction sigma_init / sigma on the train and test splits at
every validation end (docs/conventions.md: one meaning of gain everywhere)."""
from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from mflow.data.datamodule import SPLITS
from mflow.flows.base import sigma_fs_on


class SigmaGain(L.Callback):
    """Logs ``<split>/sigma``, ``<split>/gain`` (sigma_FS / sigma) and ``<split>/reduction_from_init``
    (sigma_init / sigma) at every validation end, for the splits the module does not log itself during fit
    (its ``fit_logged_splits``: val for every flow, train too for a kernel flow), so that one name never holds two
    measurements. ``test/...`` then shows the test split during fit; the module logs the same names at test time.

    ``n_train`` / ``n_test``: points of each split used (the first ones; None = all). On a whole split sigma_init is
    the module's buffer ``initial_sigma``; on a subset it is measured at the start of fit (saved in the checkpoint
    with this callback's state). Train defaults to 2000 points to stay cheap.
    """

    def __init__(self, n_train: int | None = 2000, n_test: int | None = None):
        for name, n in (("n_train", n_train), ("n_test", n_test)):
            if n is not None and n < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {n}")
        self.limits = {"train": n_train, "val": None, "test": n_test}
        self.initial: dict[str, float] = {}  # sigma at initialisation on the subsets

    def _subset(self, batch, split):
        n = self.limits[split]
        return batch if n is None or n >= _size(batch) else {k: v[:n] for k, v in batch.items()}

    def _splits(self, trainer, module) -> dict:
        """The splits this callback logs, each as one batch dict (a moduli family's carries each point's t and kappa)."""
        dm = trainer.datamodule
        own = getattr(module, "fit_logged_splits", ("val",))
        return {s: dm.batch_of(s) if getattr(dm, s, None) is not None else None for s in SPLITS if s not in own}

    def on_fit_start(self, trainer, pl_module) -> None:
        for s, pts in self._splits(trainer, pl_module).items():
            if pts is None or _size(pts) == 0 or s in self.initial or self._subset(pts, s) is pts:
                continue
            if trainer.global_step > 0:
                rank_zero_warn(f"SigmaGain: no initial sigma for the {s} subset in the checkpoint: its "
                               "reduction_from_init is not logged")
                continue
            self.initial[s] = float(pl_module.sigma_on(self._subset(pts, s)))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {}
        for s, pts in self._splits(trainer, pl_module).items():
            if pts is None or _size(pts) == 0:
                continue
            sub = self._subset(pts, s)
            init = self.initial.get(s) if sub is not pts else float(pl_module.initial_sigma[SPLITS.index(s)])
            sigma = float(pl_module.sigma_on(sub))
            metrics[f"{s}/sigma"] = sigma
            if sigma > 0:
                metrics[f"{s}/gain"] = sigma_fs_on(sub) / sigma
                if init is not None and math.isfinite(init):
                    metrics[f"{s}/reduction_from_init"] = init / sigma
        for k, v in metrics.items():
            pl_module.log(k, v, on_step=False, on_epoch=True)

    def state_dict(self) -> dict:
        return {"initial": dict(self.initial)}

    def load_state_dict(self, state: dict) -> None:
        self.initial = dict(state.get("initial", {}))


def _size(batch: dict) -> int:
    return len(batch["z"])
