"""NetworkFlow: finite-width metric networks trained by gradient descent (eq. 2.2-2.5), the feature-learning baseline.

No mathematics lives here: the model is mflow.models.metric, the losses mflow.losses, the linearisation
mflow.ntk.linearized; this class wires them to Lightning (optimisation, logging, checkpoints).
"""
from __future__ import annotations

import math

import torch

from mflow.choices import (NETWORK_PD_POLICIES, Activation, Features, Head, LossTerm, NetworkPDPolicy, Optimizer,
                           Parametrization, Precision, check_choice)

from mflow import losses as losses_
from mflow.geometry.forms import NotPositiveDefiniteError
from mflow.geometry.points import CYPoints
from mflow.models.metric import MetricModel
from mflow.models.mlp import lr_multipliers
from mflow.ntk.linearized import LinearizedModel, source_name

from .base import FlowModule, Surface, check_pd_policy, datamodule_of
from .measures import WeightedMean

FAMILY_LOSSES = {"sigma", "ultra_local_square", "ultra_local_entropy"}  # per-point kappa(t) enters through eta
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class NetworkFlow(FlowModule):
    """Trains a metric network g_theta by gradient descent on a weighted sum of losses (eq. 2.2-2.5).

    Args (the defaults are conf/default.yaml's, the default of ``python train.py``; tests/test_defaults.py holds
    them equal):
        surface: the manifold, a CompleteIntersection with its Kaehler moduli: the datamodule's (train.py passes
            data.surface; configure the manifold in the data section only).
        head: free | addfs | multfs | matrixfs | phifs | bihomogeneous.
        depth, width, activation, parametrization, sigma_w, sigma_b, features, out_scale:
            the network (mflow.models.metric.MetricModel).
        loss_weights: weight per loss term; terms: sigma, ultra_local_square, ultra_local_entropy,
            volume, kaehler, transition, ricci, two_derivative.
        optimizer: adam (default) | sgd (plain gradient descent, the setting of the NTK theory: with sgd a
            linearized model's step is exactly the discrete frozen metric-NTK flow, eq. 2.12).
        lr: learning rate; lr_decay: multiplicative decay per epoch.
        init_seed: seed of the network's initialisation (not the data's ``seed``, so that the two can differ).
        precision: float64 | float32: the network's arithmetic (geometry, g and losses stay float64).
        compile: torch.compile the network's part of the training step (first steps slower while it compiles).
        pd_policy: stop (a one-line error at the first training batch where g is not positive definite) | continue
            (train on: the loss of such a point (det g < 0, eta < 0) pushes it back; their count per epoch is logged
            as train/not_pd and val / test report theirs). backtrack and clip (mflow.flows.base.PDPolicy) are the
            kernel flows': a network refuses them.
        moduli_input: the Kaehler moduli t are an input of the network, so that one network learns a family
            g(x; t) (train it on data.kahler_range; its losses are then those of g alone: sigma, ultra_local_*); on a
            psi family (data.psi_range) psi is, so that it learns g(x; psi).
        linearize: train the first-order Taylor expansion of the network in its parameters at
            initialisation (eq. 2.10, mflow.ntk.linearized.LinearizedModel) instead of the network: its
            metric-NTK stays the initial one (eq. 2.11), the frozen-kernel limit at finite width.
    """

    kind = "network"

    def __init__(
        self,
        surface: Surface,
        head: Head = "multfs",
        depth: int = 3,
        width: int = 64,
        activation: Activation = "relu",
        parametrization: Parametrization = "standard",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
        features: Features | None = None,
        out_scale: float = 0.3,
        loss_weights: dict[LossTerm, float] | None = None,
        optimizer: Optimizer = "adam",
        lr: float = 2e-3,
        lr_decay: float = 0.95,
        init_seed: int = 0,
        linearize: bool = False,
        precision: Precision = "float64",
        compile: bool = False,
        moduli_input: bool = False,
        pd_policy: NetworkPDPolicy = "stop",
    ):
        super().__init__(surface)
        loss_weights = {"sigma": 1.0} if loss_weights is None else loss_weights
        self.save_hyperparameters(ignore=["surface"])  # the checkpoint records the manifold once (mflow.surface)
        if not (lr > 0 and math.isfinite(lr)) or not (0 < lr_decay <= 1):
            raise ValueError(f"need lr > 0 and 0 < lr_decay <= 1, got lr={lr}, lr_decay={lr_decay}")
        check_pd_policy(pd_policy, "a network (NetworkFlow)", NETWORK_PD_POLICIES)
        check_choice("optimizer", optimizer, Optimizer)
        self.loss_weights = losses_.check_weights(loss_weights)
        # losses of g alone (no derivatives of g in z): the points' stored pullback and g_FS serve the model
        self.stored_geometry = set(self.loss_weights) <= set(losses_.METRIC_LOSSES)
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            self.model = MetricModel(
                self.surface, head, depth, width, activation, parametrization, sigma_w, sigma_b, features, out_scale,
                precision, compile, moduli_input,
            )
        if linearize:
            self.model = LinearizedModel(self.model)
        self.register_buffer("kappa", torch.tensor(float("nan"), dtype=torch.float64))
        self.val_loss = WeightedMean()

    # ------------------------------------------------------------------ the metric
    def metric(self, batch: dict) -> torch.Tensor:
        kahler = batch.get("kahler")
        if self.stored_geometry and "pullback" in batch and "g_fs" in batch:
            return self.model(batch["z"], batch["patch"], batch["elim"], batch["pullback"], batch["g_fs"], kahler=kahler)
        return self.model(batch["z"], batch["patch"], batch["elim"], kahler=kahler)

    @torch.no_grad()
    def predict_metric(self, points: CYPoints | dict, block: int = 8192) -> torch.Tensor:
        """g at every point (CYPoints or batch dict), block by block: -> [N, n-1, n-1] on the CPU."""
        b = points.as_batch() if isinstance(points, CYPoints) else points
        n = len(b["z"])
        keys = [k for k in ("z", "patch", "elim", "pullback", "g_fs", "kahler") if k in b]
        out = [self.metric({k: b[k][i : i + block].to(self.device) for k in keys}).cpu() for i in range(0, n, block)]
        return torch.cat(out) if out else torch.zeros(0, self.surface.dim, self.surface.dim, dtype=torch.complex128)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = datamodule_of(self)
        if dm is None or not getattr(dm, "family", None):
            return
        if not self.hparams.moduli_input:
            raise ValueError("data.kahler_range / data.psi_range train on a moduli family: set model.moduli_input: true")
        other = set(self.loss_weights) - FAMILY_LOSSES
        if other:
            raise ValueError(f"a moduli family trains on losses of g alone {sorted(FAMILY_LOSSES)}; drop {sorted(other)} "
                             "from model.loss_weights, or train at one t / psi (unset data.kahler_range / data.psi_range)")

    # ------------------------------------------------------------------ steps
    def _checked_metric(self, batch: dict) -> torch.Tensor:
        g = self.metric(batch)
        _, info = torch.linalg.cholesky_ex(g.detach())
        bad = int((info > 0).sum())
        if bad and self.hparams.pd_policy == "stop":
            raise NotPositiveDefiniteError(
                f"the metric is not positive definite at {bad} of {len(g)} points (step {self.global_step}); lower "
                "the learning rate or out_scale, add a volume loss, or train on (model.pd_policy=continue)")
        self.log("train/not_pd", float(bad), reduce_fx="sum", batch_size=len(g))
        return g

    def training_step(self, batch, batch_idx):
        g = self._checked_metric(batch)
        loss, parts = losses_.total_loss(self.model, batch, batch.get("kappa", self.kappa), self.loss_weights, g=g)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss is {float(loss)} at step {self.global_step} (terms: "
                f"{ {k: float(v) for k, v in parts.items()} }); lower the learning rate"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(g))
        for k, v in parts.items():  # train/loss_<term>: train/sigma is the measure (SigmaGain), not the loss term
            self.log(f"train/loss_{k}", v, batch_size=len(g))
        return loss

    def validation_step(self, batch, batch_idx):
        """sigma, the loss and the non-positive-definite count (val/not_pd: validation reports, training refuses)."""
        with torch.enable_grad():
            g = self.metric(batch)
            loss, _ = losses_.total_loss(self.model, batch, batch.get("kappa", self.kappa), self.loss_weights, g=g)
        self.evaluation_step(batch, "val", g.detach())
        self.val_loss.update(loss.detach(), batch["weights"].sum())

    def on_validation_epoch_end(self):
        self.log_evaluation("val")
        self.log("val/loss", self.val_loss.compute())
        self.val_loss.reset()

    def test_step(self, batch, batch_idx):
        self.evaluation_step(batch, "test", self.metric(batch).detach())

    def configure_optimizers(self):
        """The optimizer with one parameter group per learning-rate multiplier (muP's; one group otherwise)."""
        mult = lr_multipliers(self.model, self.hparams.optimizer)
        groups: dict[float, list] = {}
        for name, p in self.model.named_parameters():
            groups.setdefault(mult.get(source_name(name), 1.0), []).append(p)
        opt = OPTIMIZERS[self.hparams.optimizer]([{"params": ps, "lr": self.hparams.lr * k} for k, ps in groups.items()],
                                                 lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.hparams.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
