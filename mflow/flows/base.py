"""FlowModule: what the metric-flow LightningModules (NetworkFlow, KernelFlow) share.

The manifold (linked from the data config), kappa of the FS metric on the train split (the fixed kappa of
the losses), the sigma measure on any point set (``measure`` / ``sigma_on``: sigma and the number of points
where the metric is not positive definite), validation and test logging, the ``mflow`` checkpoint section and
checked loading (mflow.flows.checkpoint). No mathematics lives here: a subclass says how its metric is
predicted at points (``predict_metric``).
"""
from __future__ import annotations

import io

import lightning as L
import torch
from torchmetrics.aggregation import SumMetric

from mflow.data.datamodule import SPLITS
from mflow.geometry import volume
from mflow.geometry.forms import not_positive_definite
from mflow.geometry.presets import surface_from_args
from mflow.geometry.points import CYPoints

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, check_manifold, install_checkpoint_io, read_checkpoint
from .measures import SigmaMeasure


def datamodule_of(module: L.LightningModule):
    """The trainer's datamodule (None outside a Trainer), refused if its manifold is not the module's."""
    dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if dm is not None and dm.surface.fingerprint() != module.surface.fingerprint():
        raise ValueError(
            f"the data are on {dm.surface.name} but the model was built for {module.surface.name}: "
            "use the same manifold settings for data and model"
        )
    return dm


def family_det(g: torch.Tensor, batch: dict) -> torch.Tensor:
    """det g, divided by each point's kappa(t) in a moduli family's batch (then sigma with its own kappa compares
    every point with its own Kaehler class; for one class the division changes nothing)."""
    det = volume.real_det(g)
    return det / batch["kappa"].to(det) if "kappa" in batch else det


class FlowModule(L.LightningModule):
    """Base class; subclasses set ``kind``, hold ``kappa`` (a float64 buffer, NaN until set) and implement
    ``predict_metric(points) -> g [N, m, m]``."""

    kind: str = "?"

    def __init__(self, manifold: str, psi: float, ambient_n: int, surface_seed: int, kahler=None):
        super().__init__()
        self.surface = surface_from_args(manifold, psi, ambient_n, surface_seed, kahler)
        self.register_buffer("initial_sigma", torch.full((3,), float("nan"), dtype=torch.float64))
        self.sigma_metric = torch.nn.ModuleDict({s: SigmaMeasure() for s in ("val", "test")})
        self.not_pd_metric = torch.nn.ModuleDict({s: SumMetric() for s in ("val", "test")})

    # ------------------------------------------------------------------ the metric and its measures
    def predict_metric(self, points: CYPoints | dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure(self, points: CYPoints | dict) -> dict:
        """{"sigma": sigma of the metric on the points (its own kappa, eq. B.11), "not_pd": points where g is
        not positive definite (they enter sigma through their det g like any other)}. points: CYPoints or a batch
        dict; a moduli family's batch (``kappa`` per point) measures each point against its own class."""
        b = points.as_batch() if isinstance(points, CYPoints) else points
        g = self.predict_metric(b).cpu()
        return {"sigma": float(volume.sigma(b["weights"], family_det(g, b), b["omega_sq"])),
                "not_pd": int(not_positive_definite(g).sum())}

    def sigma_on(self, points: CYPoints | dict) -> torch.Tensor:
        """sigma measure of the current metric on a point set (its own kappa)."""
        return torch.tensor(self.measure(points)["sigma"], dtype=torch.float64)

    def initial_sigmas(self, dm) -> torch.Tensor:
        """sigma on the train / val / test splits before training: [3]."""
        return torch.stack([self.sigma_on(dm.batch_of(s)) for s in SPLITS])

    # ------------------------------------------------------------------ Lightning set-up
    def setup(self, stage: str) -> None:
        install_checkpoint_io(self.trainer)
        dm = datamodule_of(self)
        if dm is not None and torch.isnan(self.kappa):
            self.kappa.fill_(float(dm.kappa_fs))

    def on_fit_start(self) -> None:
        if torch.isnan(self.initial_sigma).any():
            self.initial_sigma.copy_(self.initial_sigmas(self.trainer.datamodule).to(self.initial_sigma))

    # ------------------------------------------------------------------ validation and test
    def evaluation_step(self, batch: dict, stage: str, g: torch.Tensor | None = None) -> torch.Tensor:
        """Accumulate sigma and the non-positive-definite count of a val / test batch; returns g."""
        g = self.predict_metric(batch).to(batch["omega_sq"].device) if g is None else g
        self.sigma_metric[stage].update(family_det(g, batch), batch["omega_sq"], batch["weights"])
        self.not_pd_metric[stage].update(not_positive_definite(g.detach()).sum().double())
        return g

    def log_evaluation(self, stage: str) -> None:
        """Log <stage>/sigma, <stage>/gain and <stage>/not_pd at the end of a val / test epoch."""
        sigma = self.sigma_metric[stage].compute()
        self.log(f"{stage}/sigma", sigma, prog_bar=stage == "val")
        initial = self.initial_sigma[SPLITS.index(stage)]
        if not torch.isnan(initial):
            self.log(f"{stage}/gain", initial / sigma, prog_bar=stage == "val")
        self.log(f"{stage}/not_pd", self.not_pd_metric[stage].compute())
        self.sigma_metric[stage].reset()
        self.not_pd_metric[stage].reset()

    def validation_step(self, batch, batch_idx):
        self.evaluation_step(batch, "val")

    def on_validation_epoch_end(self):
        self.log_evaluation("val")

    def test_step(self, batch, batch_idx):
        self.evaluation_step(batch, "test")

    def on_test_epoch_end(self):
        self.log_evaluation("test")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict:
        """The ``mflow`` section of this module's checkpoints (mflow.flows.checkpoint)."""
        return {"format": CHECKPOINT_FORMAT, "kind": self.kind, "surface": self.surface.to_dict(),
                "fingerprint": self.surface.fingerprint()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mflow"] = self.checkpoint_meta()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("mflow") or {}
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"the checkpoint holds a {meta.get('kind')!r} model, not a {self.kind!r} one")
        check_manifold(checkpoint, self.surface)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's load_from_checkpoint, on the checkpoint as mflow.flows.checkpoint.read_checkpoint gives it
        (checksum verified, settings of older versions migrated)."""
        buf = io.BytesIO()
        torch.save(read_checkpoint(checkpoint_path), buf)
        buf.seek(0)
        return super().load_from_checkpoint(buf, *args, **kwargs)
