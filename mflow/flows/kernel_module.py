"""KernelFlow: the frozen-kernel metric flow (mflow.flows.kernel) as a LightningModule for train.py.

Each training batch (a cluster with ClusteredDataModule, a slice of the train split with CYDataModule) is
``steps_per_batch`` flow steps; the state lives in ``self.flow`` and goes into checkpoints. Under DDP the
ranks hold the same state: clustered, every rank flows its own clusters and the updated rows are
all-gathered (clusters are independent, so this is identical to one process); unclustered, the ranks'
batches are gathered into one batch and the receiving points are shared out (identical to one process).
"""
from __future__ import annotations

import torch

from mflow.checks import integer
from mflow.choices import ChartMode, KernelName, MetricLoss, Precision, Reduction
from mflow.geometry.points import CYPoints
from mflow.kernels.analytic import DEFAULT_BLOCK
from mflow.kernels.network import NetworkNTK
from mflow.kernels.registry import kernel as make_kernel

from .base import FlowModule, PDPolicy, Surface, datamodule_of
from .checkpoint import CheckpointError, install_checkpoint_io, read_checkpoint
from .kernel import FrozenKernelFlow


class KernelFlow(FlowModule):
    """Frozen metric-NTK flow (eq. 2.12, 2.23) with a fixed kernel, as a LightningModule.

    Args:
        surface: the manifold, a CompleteIntersection with its Kaehler moduli: the datamodule's (train.py passes
            data.surface; configure the manifold in the data section only).
        kernel: relu | cosine | gaussian | delta | empirical | scaled | network_ntk (mflow.kernels.registry);
            kernel_params: its parameters, e.g. {depth: 1, sigma_w: 5.716, sigma_b: 80.52} (relu), {sigma: 30.0,
            inverse: true} (gaussian), {kernel: gaussian, kernel_params: {sigma: 30.0, inverse: true}, h: det_g_fs,
            power: -0.25} (scaled: the rescaling trick h(x) h(x') k(x, x'), eq. 2.16), {checkpoint: <a network's
            .ckpt>, base: fs | network} (network_ntk: that network's empirical metric-NTK, frozen; the checkpoint
            must stay where it is, and a changed one is refused).
        lr: step size of eq. 2.12; lr_step_decay: multiplicative factor per flow step (1: constant, as in the paper).
        loss: a METRIC loss of mflow.losses (sigma, ultra_local_square, ultra_local_entropy, volume).
        reduction: "mean": G = gradient of the batch loss as mflow.losses defines it (weighted mean over the batch,
            the paper's sigma-loss); "sum": the batch size times that (the per-point gradient).
        chart_mode: ambient (default) | transform | reject (mflow.flows.kernel).
        pd_policy: backtrack | clip | stop | continue (mflow.flows.base.PDPolicy); max_backtracks: halvings
            (backtrack) or rounds (clip) per step.
        pd_margin: a step must keep g_new - pd_margin * g_old positive definite (0: plain positive definiteness).
        normalize: use h(x) h(x') k(x, x') with h = (sum_{x' in the cluster / train set} k(x, x'))^-1/2
            (eq. 2.15-2.16): the kernel's overall size and the number of points drop out of the step size.
        steps_per_batch: flow steps taken on each training batch (cluster).
        block: kernel tile size (memory O(block^2)).
        cache_mb: keep the kernel matrices of the clusters (or of the train set) when they all fit in this many MiB.
        precision: float64 | float32: of the kernel tiles (sums over tiles in float64; FS-distance kernels recompute
            close pairs exactly in float32). The tiles are computed on the module's device (CUDA when Lightning
            runs there), the flow's state stays on the CPU.
    """

    kind = "kernel_flow"
    has_derivatives = False  # the metric is not a differentiable network: no Ricci measure
    fit_logged_splits = ("train", "val")  # train/sigma, train/gain at every train epoch end (the flow's own state)

    def __init__(
        self,
        surface: Surface,
        kernel: KernelName = "gaussian",
        kernel_params: dict | None = None,
        lr: float = 0.1,
        lr_step_decay: float = 1.0,
        loss: MetricLoss = "sigma",
        reduction: Reduction = "mean",
        chart_mode: ChartMode = "ambient",
        pd_policy: PDPolicy = "backtrack",
        max_backtracks: int = 20,
        pd_margin: float = 0.0,
        normalize: bool = False,
        steps_per_batch: int = 1,
        block: int = DEFAULT_BLOCK,
        cache_mb: float = 512.0,
        precision: Precision = "float64",
    ):
        super().__init__(surface)
        kernel_params = {} if kernel_params is None else dict(kernel_params)
        self.save_hyperparameters(ignore=["surface"])  # the checkpoint records the manifold once (mflow.surface)
        self.automatic_optimization = False
        self.kernel_name, self.kernel_params = kernel, kernel_params
        self.kernel_digest = None
        try:
            if kernel == "network_ntk":
                k = self._network_kernel(**kernel_params)
            else:
                k = make_kernel(kernel, self.surface, **kernel_params)
        except TypeError as e:
            raise ValueError(f"bad kernel_params {kernel_params} for kernel {kernel!r}: {e}") from None
        self.steps_per_batch = integer("steps_per_batch", steps_per_batch)
        self.flow = FrozenKernelFlow(self.surface, k, lr, lr_step_decay, loss, reduction, chart_mode, pd_policy,
                                     max_backtracks, pd_margin, normalize, block, cache_mb, precision)
        self.model = None  # no network (RunSummary, NTKDrift and evaluate.py look for one)
        # a parameter that never moves (SGD with lr 0): Lightning then counts flow steps as global steps (step-based
        # checkpoints and logging) and DDP has something to wrap
        self._step_anchor = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def _network_kernel(self, checkpoint: str, base: str = "fs") -> NetworkNTK:
        """The frozen metric-NTK of the network in a NetworkFlow checkpoint (read and checked, mflow.flows.checkpoint)."""
        from .network import NetworkFlow

        ck = read_checkpoint(checkpoint)
        try:  # on this flow's manifold: a network of another one is refused (FlowModule.on_load_checkpoint)
            network = NetworkFlow.load_from_checkpoint(ck, map_location="cpu", surface=self.surface)
        except CheckpointError as e:
            raise CheckpointError(f"{checkpoint}: {e}") from None
        self.kernel_digest = ck["mflow"].get("checksum")
        return NetworkNTK(network.model.requires_grad_(False), base)

    @property
    def kappa(self) -> torch.Tensor:
        return self.flow.kappa

    def predict_metric(self, points: CYPoints | dict, use_state: bool = True) -> torch.Tensor:
        return self.flow.predict_metric(points, use_state)

    def initial_sigmas(self, dm) -> torch.Tensor:
        """sigma of the flow's starting metric on the splits: g_FS, or the network's own for a network_ntk kernel
        with base: network."""
        return torch.stack([p.sigma(self.flow.base_metric(p.as_batch())) for p in (dm.train, dm.val, dm.test)])

    # ------------------------------------------------------------------ Lightning
    def setup(self, stage: str) -> None:
        install_checkpoint_io(self.trainer)
        dm = datamodule_of(self)
        if dm is None:
            return
        if getattr(dm, "family", None):
            raise ValueError("a frozen-kernel flow has one manifold and one Kaehler class: unset data.kahler_range (give "
                             "data.kahler) and data.psi_range (give data.psi)")
        if stage == "fit" and self.flow.n_train == 0:
            self.flow.attach(dm.train, float(dm.kappa_fs), getattr(dm, "cluster_labels", None))
            if self.flow.chart_mode == "reject":
                kept = self.flow.n_train
                print(f"[mflow] chart_mode=reject: {kept} of {len(dm.train)} train points are in the most common chart "
                      f"(patch {int(self.flow.ref_chart[0])}, elim {int(self.flow.ref_chart[1])}) and take part")
        elif torch.isnan(self.kappa):
            self.kappa.fill_(float(dm.kappa_fs))

    def _world(self) -> tuple[int, int]:
        t = self._trainer
        if t is None or t.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return 1, 0
        return t.world_size, t.global_rank

    @staticmethod
    def _all_gather_object(obj) -> list:
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    def on_fit_start(self) -> None:
        super().on_fit_start()
        world, rank = self._world()
        self.flow.distributed = (world, rank, self._all_gather_object) if world > 1 else None
        self.flow.device = self.device if self.device.type != "cpu" else None

    def training_step(self, batch, batch_idx):
        world, _ = self._world()
        flow = self.flow
        idx = batch["index"].cpu()
        clustered = bool(flow.clustered)
        if world > 1 and not clustered:  # one batch: the union of the ranks' batches
            idx = torch.cat(self._all_gather_object(idx))
        rows = flow.row_of[torch.unique(idx)].cpu() if len(idx) else idx
        rows = rows[rows >= 0]
        total = {"backtracks": 0, "clipped": 0, "skipped": 0}
        loss, not_pd = float("nan"), 0
        for s in range(self.steps_per_batch):
            info = flow.flow_step(rows, shard=not clustered)
            loss = info["loss"] if s == 0 else loss
            not_pd += info.get("not_pd", 0)
            for k in total:
                total[k] += info[k]
        if world > 1 and clustered:
            self._share_clusters(rows, total)
        opt = self.optimizers()
        self.manual_backward(self._step_anchor.sum() * 0.0)  # lets DDP finish its (empty) reduction
        opt.step()  # counts the global step; the anchor does not move
        opt.zero_grad()
        n = max(len(rows), 1)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/not_pd", float(not_pd), reduce_fx="sum", batch_size=n)
        for i, name in enumerate(("backtracks", "clipped_points", "skipped_steps")):
            self.log(f"train/{name}", float(flow.pd_counts[i]), batch_size=n)
        return None

    def _share_clusters(self, rows: torch.Tensor, mine: dict) -> None:
        """All-gather the clusters the ranks flowed (disjoint, so the order does not matter)."""
        flow = self.flow
        counts = torch.tensor([mine["backtracks"], mine["clipped"], mine["skipped"]])
        done = self.steps_per_batch if len(rows) else 0
        cl = int(flow.labels[rows[0]]) if len(rows) else -1
        steps_cl = int(flow.cluster_steps[cl]) if len(rows) else 0
        parts = self._all_gather_object((rows, flow.metric[rows], flow.coeff[rows], counts, done, cl, steps_cl))
        flow.pd_counts -= counts
        flow.flow_steps -= done
        for r, g, c, cnt, n, cl, steps_cl in parts:
            flow.metric[r], flow.coeff[r] = g, c
            flow.pd_counts += cnt
            flow.flow_steps += n
            if cl >= 0:
                flow.cluster_steps[cl] = steps_cl

    def on_train_epoch_end(self) -> None:
        s = self.flow.train_sigma()
        self.log("train/sigma", s, prog_bar=True)
        self.log("train/gain", self.flow.train_sigma(fs=True) / s, prog_bar=True)  # sigma_FS / sigma on the flow's points
        if not torch.isnan(self.initial_sigma[0]) and self.flow.chart_mode != "reject":
            self.log("train/reduction_from_init", self.initial_sigma[0] / s)

    def configure_optimizers(self):
        """The flow updates its state itself (manual optimisation); this no-op optimizer only counts steps."""
        return torch.optim.SGD([self._step_anchor], lr=0.0)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict:
        return {**super().checkpoint_meta(), "kernel": self.kernel_name, "kernel_params": dict(self.kernel_params),
                "chart_mode": self.flow.chart_mode, "n_train": self.flow.n_train, "kernel_digest": self.kernel_digest}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        meta = checkpoint["mflow"]
        mine = (self.kernel_name, dict(self.kernel_params), self.flow.chart_mode)
        theirs = (meta.get("kernel"), dict(meta.get("kernel_params") or {}), meta.get("chart_mode"))
        if mine != theirs:
            raise CheckpointError(f"the checkpoint is a flow with (kernel, params, chart_mode) = {theirs}, this model has {mine}")
        if meta.get("kernel_digest") != self.kernel_digest:
            raise CheckpointError(f"the network checkpoint {self.kernel_params.get('checkpoint')} of this kernel flow has "
                                  "changed since the flow was written: its metric-NTK is not the flow's")
