"""FlowModule: what the metric-flow LightningModules (NetworkFlow, KernelFlow) share.

The manifold (``surface``: the datamodule's, which train.py hands to the model; checkpoints record it once, in
their ``mflow`` section, and loading rebuilds it from there), kappa of the FS metric on the train split (the fixed
kappa of the losses, taken from the trainer's datamodule in ``setup`` and kept in checkpoints as a buffer), the sigma measure on any point set (``measure`` / ``sigma_on``: sigma and the number of points
where the metric is not positive definite), validation and test logging, the ``mflow`` checkpoint section and
checked loading (mflow.flows.checkpoint). No mathematics lives here: a subclass says how its metric is
predicted at points (``predict_metric``).
"""
from __future__ import annotations

import io
from typing import Any

import lightning as L
import torch
from torchmetrics.aggregation import SumMetric

from mflow.choices import PD_POLICIES, PDPolicy, check_pd_policy  # noqa: F401 - the flows' import of them
from mflow.data.datamodule import SPLITS
from mflow.geometry import volume
from mflow.geometry.forms import not_positive_definite
from mflow.geometry.cicy import CompleteIntersection
from mflow.geometry.points import CYPoints

from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, check_manifold, install_checkpoint_io, read_checkpoint
from .measures import SigmaMeasure

# PDPolicy (mflow.choices, with every named choice; the flows import it from here): what a flow does when its
# metric is not positive definite somewhere, the same meaning in every flow. stop: a one-line error at the first
# non-PD metric; continue: go on (the count is logged as train/not_pd); backtrack: undo the step and retry it
# halved; clip: shrink the step for the offending points. A flow refuses what it cannot do (check_pd_policy).


Surface = Any
"""The type of the flows' ``surface`` argument: a CompleteIntersection (mflow.geometry.cicy), typed loosely so that
LightningCLI does not offer it as options: train.py links it from the instantiated datamodule (data.surface)."""


def checkpoint_surface(checkpoint: dict) -> CompleteIntersection:
    """The manifold a checkpoint was written for (its ``mflow.surface`` record, checked against its fingerprint)."""
    meta = checkpoint.get("mflow") or {}
    try:
        surface = CompleteIntersection.from_dict(meta["surface"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint records no usable manifold ({type(e).__name__}: {e})") from None
    if surface.fingerprint() != meta.get("fingerprint"):
        raise CheckpointError("the checkpoint's manifold record does not match its fingerprint")
    return surface


def datamodule_of(module: L.LightningModule):
    """The trainer's datamodule (None outside a Trainer), refused if its manifold is not the module's (the one
    place where model and data are compared: train.py builds the model on the data's manifold)."""
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


def sigma_fs_on(points: CYPoints | dict) -> float:
    """sigma of the FS metric on a point set or batch dict (a moduli family's: each point against its own class)."""
    b = points.as_batch() if isinstance(points, CYPoints) else points
    return float(volume.sigma(b["weights"], family_det(b["g_fs"].cpu(), b), b["omega_sq"]))


class FlowModule(L.LightningModule):
    """Base class; subclasses set ``kind``, hold ``kappa`` (a float64 buffer, NaN until set) and implement
    ``predict_metric(points) -> g [N, m, m]``."""

    kind: str = "?"
    fit_logged_splits: tuple[str, ...] = ("val",)  # splits whose sigma / gain the module logs itself during fit

    def __init__(self, surface: Surface):
        super().__init__()
        if not isinstance(surface, CompleteIntersection):
            raise TypeError(f"surface must be a CompleteIntersection (e.g. a datamodule's .surface or "
                            f"mflow.geometry.presets.manifold('fermat_quintic')), not {type(surface).__name__}")
        self.surface = surface
        self.register_buffer("initial_sigma", torch.full((3,), float("nan"), dtype=torch.float64))
        self.sigma_metric = torch.nn.ModuleDict({s: SigmaMeasure() for s in ("val", "test")})
        self.sigma_fs_metric = torch.nn.ModuleDict({s: SigmaMeasure() for s in ("val", "test")})  # for the gain
        self.not_pd_metric = torch.nn.ModuleDict({s: SumMetric() for s in ("val", "test")})

    # ------------------------------------------------------------------ the metric and its measures
    def predict_metric(self, points: CYPoints | dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure(self, points: CYPoints | dict) -> dict:
        """{"sigma": sigma of the metric on the points (its own kappa, eq. B.11), "sigma_fs": that of g_FS (the gain
        is sigma_fs / sigma), "not_pd": points where g is not positive definite (they enter sigma through their det g
        like any other)}. points: CYPoints or a batch dict; a moduli family's batch (``kappa`` per point) measures
        each point against its own class."""
        b = points.as_batch() if isinstance(points, CYPoints) else points
        g = self.predict_metric(b).cpu()
        return {"sigma": float(volume.sigma(b["weights"], family_det(g, b), b["omega_sq"])),
                "sigma_fs": sigma_fs_on(b), "not_pd": int(not_positive_definite(g).sum())}

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
        """Accumulate sigma (of the metric and of g_FS) and the non-positive-definite count of a val / test batch;
        returns g."""
        g = self.predict_metric(batch).to(batch["omega_sq"].device) if g is None else g
        self.sigma_metric[stage].update(family_det(g, batch), batch["omega_sq"], batch["weights"])
        self.sigma_fs_metric[stage].update(family_det(batch["g_fs"], batch), batch["omega_sq"], batch["weights"])
        self.not_pd_metric[stage].update(not_positive_definite(g.detach()).sum().double())
        return g

    def log_evaluation(self, stage: str) -> None:
        """Log <stage>/sigma, <stage>/gain (sigma_FS / sigma, docs/conventions.md), <stage>/reduction_from_init
        (sigma_init / sigma) and <stage>/not_pd at the end of a val / test epoch."""
        sigma = self.sigma_metric[stage].compute()
        self.log(f"{stage}/sigma", sigma, prog_bar=stage == "val")
        self.log(f"{stage}/gain", self.sigma_fs_metric[stage].compute() / sigma, prog_bar=stage == "val")
        initial = self.initial_sigma[SPLITS.index(stage)]
        if not torch.isnan(initial):
            self.log(f"{stage}/reduction_from_init", initial / sigma)
        self.log(f"{stage}/not_pd", self.not_pd_metric[stage].compute())
        self.sigma_metric[stage].reset()
        self.sigma_fs_metric[stage].reset()
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
        meta = self.checkpoint_meta()
        dm = datamodule_of(self)
        if dm is not None and getattr(dm, "train", None) is not None and hasattr(dm, "points_record"):
            meta["data"] = dm.points_record()  # where the train points are (mflow.evaluation.checkpoints.train_points)
        checkpoint["mflow"] = meta

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("mflow") or {}
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"the checkpoint holds a {meta.get('kind')!r} model, not a {self.kind!r} one")
        check_manifold(checkpoint, self.surface)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's load_from_checkpoint, on the checkpoint as mflow.flows.checkpoint.read_checkpoint gives it
        (checksum verified, settings of older versions migrated), the model built on the manifold the checkpoint
        records (``surface=`` another one is refused unless it is the same). checkpoint_path: a file, or a checkpoint
        dict read_checkpoint returned (mflow.evaluation.checkpoints.load_checkpoint passes that, to read once)."""
        ck = checkpoint_path if isinstance(checkpoint_path, dict) else read_checkpoint(checkpoint_path)
        kwargs.setdefault("surface", checkpoint_surface(ck))
        ck = {"pytorch-lightning_version": L.__version__, **ck}  # a checkpoint put together by hand lacks it
        buf = io.BytesIO()
        torch.save(ck, buf)
        buf.seek(0)
        return super().load_from_checkpoint(buf, *args, **kwargs)
