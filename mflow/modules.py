"""LightningModule for finite-width metric networks (the feature-learning baseline).

No mathematics lives here: the model is mflow.models.metric, the losses mflow.losses, the
measures mflow.metrics; this class wires them to Lightning (optimisation, logging, checkpoints).
"""
from __future__ import annotations

import math

import lightning as L
import torch

from . import losses as losses_
from .geometry import volume
from .geometry.hypersurface import surface_from_args
from .geometry.points import CYPoints
from .linearized import LinearizedModel
from .metrics import SigmaMeasure, WeightedMean
from .models.metric import MetricModel

CHECKPOINT_FORMAT = 1
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class NotPositiveDefiniteError(FloatingPointError):
    """The metric stopped being positive definite."""


def points_batch(points: CYPoints) -> dict:
    """A CYPoints set as the batch dict the modules consume."""
    return {
        "z": points.z, "patch": points.patch, "elim": points.elim, "pullback": points.pullback,
        "weights": points.weights, "omega_sq": points.omega_sq, "g_fs": points.g_fs,
    }


class NetworkFlow(L.LightningModule):
    """Trains a metric network g_theta by gradient descent on a weighted sum of losses (eq. 2.2-2.5).

    Args:
        manifold, psi, ambient_n, surface_seed: the hypersurface (linked from the data config).
        head: free | addfs | multfs | matrixfs | phifs.
        depth, width, activation, parametrization, sigma_w, sigma_b, features, out_scale:
            the network (mflow.models.metric.MetricModel).
        loss_weights: weight per loss term; terms: sigma, ultra_local_square, ultra_local_entropy,
            volume, kaehler, transition, ricci, two_derivative.
        optimizer: adam (default) | sgd (plain gradient descent, the setting of the NTK theory: with sgd a
            linearized model's step is exactly the discrete frozen metric-NTK flow, eq. 2.12).
        lr: learning rate; lr_decay: multiplicative decay per epoch.
        init_seed: seed of the network's initialisation (not the data's ``seed``, so that the two can differ).
        linearize: train the first-order Taylor expansion of the network in its parameters at
            initialisation (eq. 2.10, mflow.linearized.LinearizedModel) instead of the network: its
            metric-NTK stays the initial one (eq. 2.11), the frozen-kernel limit at finite width.
    """

    def __init__(
        self,
        manifold: str = "fermat_quintic",
        psi: float = 0.0,
        ambient_n: int = 4,
        surface_seed: int = 0,
        head: str = "multfs",
        depth: int = 3,
        width: int = 64,
        activation: str = "gelu",
        parametrization: str = "standard",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
        features: str = "chart",
        out_scale: float = 0.01,
        loss_weights: dict[str, float] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        init_seed: int = 0,
        linearize: bool = False,
    ):
        super().__init__()
        loss_weights = {"sigma": 1.0} if loss_weights is None else loss_weights
        self.save_hyperparameters()
        if not (lr > 0 and math.isfinite(lr)) or not (0 < lr_decay <= 1):
            raise ValueError(f"need lr > 0 and 0 < lr_decay <= 1, got lr={lr}, lr_decay={lr_decay}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        self.loss_weights = losses_.check_weights(loss_weights)
        self.surface = surface_from_args(manifold, psi, ambient_n, surface_seed)
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            self.model = MetricModel(
                self.surface, head, depth, width, activation, parametrization, sigma_w, sigma_b, features, out_scale
            )
        if linearize:
            self.model = LinearizedModel(self.model)
        self.register_buffer("kappa", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("initial_sigma", torch.full((3,), float("nan"), dtype=torch.float64))
        self.val_sigma = SigmaMeasure()
        self.test_sigma = SigmaMeasure()
        self.val_loss = WeightedMean()

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = datamodule_of(self)
        if dm is None:
            return
        if torch.isnan(self.kappa):
            self.kappa.fill_(float(dm.kappa_fs))

    def on_fit_start(self) -> None:
        if torch.isnan(self.initial_sigma).any():
            dm = self.trainer.datamodule
            self.initial_sigma.copy_(torch.stack([self.sigma_on(p) for p in (dm.train, dm.val, dm.test)]))

    # ------------------------------------------------------------------ evaluation helpers
    def metric(self, batch: dict) -> torch.Tensor:
        return self.model(batch["z"], batch["patch"], batch["elim"])

    @torch.no_grad()
    def predict_metric(self, points: CYPoints, block: int = 8192) -> torch.Tensor:
        """g at every point, block by block: -> [N, n-1, n-1]."""
        out = []
        for i in range(0, len(points), block):
            b = points_batch(points[i : i + block])
            out.append(self.metric(_to(b, self.device)).cpu())
        return torch.cat(out)

    def sigma_on(self, points: CYPoints) -> torch.Tensor:
        """sigma measure of the current metric on a point set (its own kappa)."""
        g = self.predict_metric(points)
        return volume.sigma(points.weights, volume.real_det(g), points.omega_sq).to(self.device)

    # ------------------------------------------------------------------ steps
    def _checked_metric(self, batch: dict) -> torch.Tensor:
        g = self.metric(batch)
        _, info = torch.linalg.cholesky_ex(g.detach())
        if (info > 0).any():
            raise NotPositiveDefiniteError(
                f"the metric is not positive definite at {int((info > 0).sum())} of {len(g)} points "
                f"(step {self.global_step}); lower the learning rate or out_scale, or add a volume loss"
            )
        return g

    def training_step(self, batch, batch_idx):
        g = self._checked_metric(batch)
        loss, parts = losses_.total_loss(self.model, batch, self.kappa, self.loss_weights, g=g)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss is {float(loss)} at step {self.global_step} (terms: "
                f"{ {k: float(v) for k, v in parts.items()} }); lower the learning rate"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(g))
        for k, v in parts.items():
            self.log(f"train/{k}", v, batch_size=len(g))
        return loss

    def validation_step(self, batch, batch_idx):
        with torch.enable_grad():
            g = self._checked_metric(batch)
            loss, _ = losses_.total_loss(self.model, batch, self.kappa, self.loss_weights, g=g)
        self.val_sigma.update(volume.real_det(g), batch["omega_sq"], batch["weights"])
        self.val_loss.update(loss.detach(), batch["weights"].sum())

    def on_validation_epoch_end(self):
        sigma = self.val_sigma.compute()
        self.log("val/sigma", sigma, prog_bar=True, sync_dist=False)
        self.log("val/loss", self.val_loss.compute())
        if not torch.isnan(self.initial_sigma[1]):
            self.log("val/gain", self.initial_sigma[1] / sigma, prog_bar=True)
        self.val_sigma.reset()
        self.val_loss.reset()

    def test_step(self, batch, batch_idx):
        g = self.metric(batch)
        self.test_sigma.update(volume.real_det(g), batch["omega_sq"], batch["weights"])

    def on_test_epoch_end(self):
        self.log("test/sigma", self.test_sigma.compute())
        self.test_sigma.reset()

    def configure_optimizers(self):
        opt = OPTIMIZERS[self.hparams.optimizer](self.model.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.hparams.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mflow"] = {
            "format": CHECKPOINT_FORMAT,
            "kind": "network",
            "surface": self.surface.to_dict(),
            "fingerprint": self.surface.fingerprint(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint(checkpoint, self.surface)


def datamodule_of(module: L.LightningModule):
    """The trainer's datamodule (None outside a Trainer), refused if its manifold is not the module's."""
    dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if dm is not None and dm.surface.fingerprint() != module.surface.fingerprint():
        raise ValueError(
            f"the data are on {dm.surface.name} but the model was built for {module.surface.name}: "
            "use the same manifold settings for data and model"
        )
    return dm


def check_checkpoint(checkpoint: dict, surface) -> None:
    """Refuse checkpoints that are not mflow's, of another format, or of another manifold."""
    meta = checkpoint.get("mflow")
    if meta is None:
        raise ValueError("not an mflow checkpoint (no 'mflow' section): was it written by another program?")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {meta.get('format')} is not the supported {CHECKPOINT_FORMAT}")
    if meta.get("fingerprint") != surface.fingerprint():
        raise ValueError(
            f"checkpoint is for manifold {meta['surface'].get('name')} ({meta.get('fingerprint')}), "
            f"not {surface.name} ({surface.fingerprint()})"
        )


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}
