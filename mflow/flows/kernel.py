"""The frozen-kernel metric flow (paper sec. 2.2, 3.2): eq. 2.12 with Theta_ijkl = delta_ik delta_jl k(x, x').

:class:`FrozenKernelFlow` is a plain torch module (no Lightning: mflow.bo uses it directly, and
mflow.flows.kernel_module.KernelFlow wraps it for train.py). One Euler step of size lr:

    g(x) <- g(x) - lr * sum_{x' in B} k(x, x') G(x'),      G(x') = dL/dg(x'),          (eq. 2.12, 2.23)

with L the batch loss (a METRIC loss of mflow.losses, default the sigma loss with the fixed kappa of the
FS metric on the train split). The metric at the train points starts at the pulled-back FS metric. The
per-train-point coefficients C(x') = sum over steps of lr G(x') are kept, so that the metric at ANY point is

    g(x) = g_FS(x) - sum_{x'} k(x, x') C(x')

(the same at the train points, by linearity): val / test / noised points are predicted from the kernel
alone. The kernel can also be a network's full metric-NTK (mflow.kernels.network.NetworkNTK: the "after
kernel" of a trained network), applied to the metric components in each point's own chart. Clustered: every step is one cluster, only that cluster's points are updated and only its points
contribute (the kernel between clusters is neglected, sec. 3.1); a new point takes the cluster of its
FS-nearest train point. Unclustered: every batch B updates all train points, with Kernel.apply (memory
O(block^2), never N^2).

Charts. The Kronecker deltas add metric components at different points, which only means something in one
coordinate system, but every point has its own chart: ``chart_mode`` ambient (default), transform or reject says
how the sum is taken (mflow.flows.chart_sums).

Positive definiteness (``pd_policy``, mflow.flows.base.PDPolicy), when a step would make some metric
non-positive-definite: "backtrack" halves the whole step until every metric is PD (at most max_backtracks times,
then raises); "clip" leaves out dL/dg at the offending points (repeated at most max_backtracks times, after which
the whole step is skipped); "stop" raises NotPositiveDefiniteError; "continue" takes the step anyway (the step's
``not_pd`` count is returned and logged as train/not_pd). Events are counted (``pd_counts``: backtracks, clipped
points, skipped steps). ``pd_margin`` > 0 asks for g_new - pd_margin g_old > 0 instead.

Step size. ``reduction="mean"`` takes G = the gradient of the weighted batch mean (the paper's sigma-loss,
eq. B.11), "sum" that times the batch size (the per-point gradient). With a constant step the sigma flow ends
in an oscillation of the size of the step, so long flows use ``lr_step_decay`` < 1 (per step; per cluster
when clustered). ``normalize`` uses the rescaled kernel h(x) h(x') k(x, x'), h = (row sum of k)^-1/2
(eq. 2.15-2.16).

Kernel matrices are cached (``cache_mb``) when ALL of them fit (each cluster's, or the train x train one):
the decision depends on sizes only, so a resumed flow computes exactly as an uninterrupted one.

Sharing out (DDP): ``distributed = (world, rank, all_gather_object)``, set by the Lightning wrapper; the
unclustered step then computes this rank's share of the receiving points and gathers the rest.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mflow import losses as losses_
from mflow import checks
from mflow.choices import (PD_POLICIES, ChartMode, MetricLoss, PDPolicy, Precision, Reduction, check_choice,
                           check_pd_policy)
from mflow.checks import integer
from mflow.data.clustering import check_labels
from mflow.geometry import charts, volume
from mflow.geometry.distance import NearestIndex
from mflow.geometry.forms import NotPositiveDefiniteError, hermitian, hermitian_part, not_positive_definite, real_components
from mflow.geometry.points import CYPoints, check_points
from mflow.kernels.analytic import DEFAULT_BLOCK, Kernel

from . import chart_sums

# buffers whose first dimension is the number of train points (or clusters) in the flow (resized on load)
STATE_BUFFERS = (
    "train_z", "train_patch", "train_elim", "train_pullback", "train_g_fs", "train_weights", "train_omega_sq",
    "metric", "coeff", "labels", "row_of", "train_h", "cluster_steps",
)


def _chart_fields(d: dict) -> dict:
    return {k: d[k] for k in ("z", "patch", "elim", "pullback")}


class FrozenKernelFlow(nn.Module):
    """The discrete frozen metric-NTK flow (module doc) on a set of train points: attach, flow_step, predict_metric.

    Args:
        surface: the manifold (mflow.geometry.cicy). kernel: a mflow.kernels Kernel (scalar k, Theta = delta delta k).
        lr, lr_step_decay, loss, reduction, chart_mode, pd_policy, max_backtracks, pd_margin, normalize,
        block, cache_mb: see the module doc (block: kernel tile size, memory O(block^2)).
    """

    def __init__(self, surface, kernel: Kernel, lr: float = 0.1, lr_step_decay: float = 1.0, loss: MetricLoss = "sigma",
                 reduction: Reduction = "mean", chart_mode: ChartMode = "ambient", pd_policy: PDPolicy = "backtrack",
                 max_backtracks: int = 20, pd_margin: float = 0.0, normalize: bool = False,
                 block: int = DEFAULT_BLOCK, cache_mb: float = 512.0, precision: Precision = "float64", device=None):
        super().__init__()
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(lr_step_decay, (int, float)) and 0 < lr_step_decay <= 1):
            raise ValueError(f"lr_step_decay must be in (0, 1], got {lr_step_decay!r}")
        if loss not in losses_.METRIC_LOSSES:
            raise ValueError(f"loss {loss!r} is not a metric loss; a kernel flow needs dL/dg at points: choose one "
                             f"of {sorted(losses_.METRIC_LOSSES)}")
        check_choice("reduction", reduction, Reduction)
        check_choice("chart_mode", chart_mode, ChartMode)
        check_pd_policy(pd_policy, "a frozen-kernel flow", PD_POLICIES)
        integer("max_backtracks", max_backtracks, lo=0)
        integer("block", block)
        if not (0 <= pd_margin < 1):
            raise ValueError(f"pd_margin must be in [0, 1), got {pd_margin!r}")
        if not (cache_mb >= 0):
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb!r}")
        self.metric_kernel = bool(getattr(kernel, "acts_on_components", False))
        if self.metric_kernel and normalize:
            raise ValueError("normalize applies to scalar kernels; the network's metric-NTK is used as it is")
        self.tile_dtype, self.device = checks.precision("precision", precision), device  # of the kernel tiles (Kernel.apply)
        base_kernel = getattr(kernel, "kernel", kernel)  # a Scaled kernel wraps one
        if getattr(base_kernel, "space", "n/a") is None and (len(surface.dims) > 1 or surface.kahler != (1.0,)):
            raise ValueError(f"the kernel {kernel!r} measures the FS distance of one P^n, but {surface.name} lives in "
                             f"{surface.ambient} with t = {surface.kahler}: build it with space=surface "
                             "(mflow.kernels.registry.kernel(name, surface, ...))")
        self.surface, self.kernel = surface, kernel
        self.lr, self.lr_step_decay, self.loss_name, self.reduction = float(lr), float(lr_step_decay), loss, reduction
        self.chart_mode, self.pd_policy, self.max_backtracks = chart_mode, pd_policy, max_backtracks
        self.pd_margin, self.normalize, self.block, self.cache_mb = float(pd_margin), bool(normalize), block, float(cache_mb)
        self.distributed: tuple | None = None  # (world, rank, all_gather_object) under DDP
        n1, m = surface.n_coords, surface.dim
        cd, rd, i64 = torch.complex128, torch.float64, torch.int64
        for name, shape, dtype in (
            ("train_z", (0, n1), cd), ("train_patch", (0,), i64), ("train_elim", (0,), i64),
            ("train_pullback", (0, m, n1), cd), ("train_g_fs", (0, m, m), cd), ("train_weights", (0,), rd),
            ("train_omega_sq", (0,), rd), ("metric", (0, m, m), cd), ("coeff", (0, m, m), cd),
            ("labels", (0,), i64), ("row_of", (0,), i64), ("train_h", (0,), rd), ("cluster_steps", (0,), i64),
        ):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.register_buffer("kappa", torch.tensor(float("nan"), dtype=rd))
        self.register_buffer("pd_counts", torch.zeros(3, dtype=i64))  # backtracks, clipped points, skipped steps
        self.register_buffer("flow_steps", torch.zeros((), dtype=i64))
        self.register_buffer("ref_chart", torch.full((2,), -1, dtype=i64))  # (patch, elim) in reject mode
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))
        self._reset_derived()

    # ------------------------------------------------------------------ state
    @property
    def n_train(self) -> int:
        return len(self.train_z)

    def _reset_derived(self) -> None:
        """Forget what is derived from the state (kernel cache, nearest-point index)."""
        self._cache: dict = {}
        self._index: NearestIndex | None = None
        self._groups: list[torch.Tensor] | None = None

    def attach(self, train: CYPoints, kappa: float, labels: torch.Tensor | None = None) -> "FrozenKernelFlow":
        """Start the flow on the train split: state g = the base metric (g_FS, or a NetworkNTK's network), C = 0.

        labels [N] (cluster of each train point) makes the flow clustered. In reject mode only the points
        in the most common chart are kept (row_of maps split rows to state rows, -1 if left out).
        """
        check_points(train, self.surface, "train points")
        if not (math.isfinite(float(kappa)) and float(kappa) > 0):
            raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")
        n = len(train)
        if labels is not None:
            labels = check_labels(labels, n)
        keep = torch.ones(n, dtype=torch.bool)
        ref = torch.full((2,), -1, dtype=torch.int64)
        if self.chart_mode == "reject":
            cid = charts.chart_id(self.surface, train.patch, train.elim)
            ids, counts = torch.unique(cid, return_counts=True)
            best = int(ids[counts.argmax()])
            ref = torch.tensor([int(c) for c in charts.chart_of_id(self.surface, best)])
            keep = cid == best
        p = train[keep]
        row_of = torch.full((n,), -1, dtype=torch.int64)
        row_of[keep] = torch.arange(int(keep.sum()))
        new = {
            "train_z": p.z, "train_patch": p.patch, "train_elim": p.elim, "train_pullback": p.pullback,
            "train_g_fs": p.g_fs, "train_weights": p.weights, "train_omega_sq": p.omega_sq,
            "metric": self.base_metric(p.as_batch()), "coeff": torch.zeros_like(p.g_fs),
            "labels": labels[keep] if labels is not None else torch.zeros(0, dtype=torch.int64), "row_of": row_of,
        }
        for k, v in new.items():
            setattr(self, k, v.detach().clone().to(self._buffers[k].dtype).to(self._buffers[k].device))
        self.kappa.fill_(float(kappa))
        self.ref_chart.copy_(ref)
        self.clustered.fill_(labels is not None)
        self.pd_counts.zero_()
        self.flow_steps.zero_()
        self._reset_derived()
        n_cl = int(self.labels.max()) + 1 if labels is not None and len(self.labels) else 0
        self.cluster_steps = torch.zeros(n_cl, dtype=torch.int64)
        h = torch.ones(self.n_train, dtype=torch.float64)
        if self.normalize:  # h(x) = (sum over x's cluster, or all train points, of k(x, x'))^-1/2
            for src in self.groups():
                if len(src):  # (a cluster can be empty of points in the reference chart, reject mode)
                    pts = self.rows(src)
                    h[src] = self._row_sums(pts, pts["z"]).rsqrt()
        self.train_h = h
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in STATE_BUFFERS:  # the state's size is only known from the checkpoint
            t = state_dict.get(prefix + name)
            if t is not None and t.shape != self._buffers[name].shape:
                self._buffers[name] = torch.empty_like(t, device=self._buffers[name].device)
        self._reset_derived()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def rows(self, rows: torch.Tensor) -> dict:
        """Chart data (z, patch, elim, pullback) of state rows."""
        return {"z": self.train_z[rows], "patch": self.train_patch[rows], "elim": self.train_elim[rows],
                "pullback": self.train_pullback[rows]}

    def groups(self) -> list[torch.Tensor]:
        """State rows of each cluster (clustered), or all rows."""
        if self._groups is None:
            if not bool(self.clustered):
                self._groups = [torch.arange(self.n_train)]
            else:
                self._groups = [(self.labels == c).nonzero().flatten() for c in range(int(self.labels.max()) + 1)]
        return self._groups

    def _row_sums(self, tgt: dict, src_z: torch.Tensor) -> torch.Tensor:
        """sum_{x'} k(x, x') over the sources, at the targets: [Nt] (> 0 required by normalize)."""
        n = self.kernel.apply(tgt["z"], src_z, torch.ones(len(src_z), dtype=torch.float64), self.block)
        if not (n > 0).all():
            raise ValueError(f"normalize=True needs positive kernel row sums; kernel {self.kernel!r} gives {float(n.min())}")
        return n

    # ------------------------------------------------------------------ the kernel sum
    def base_metric(self, points: dict) -> torch.Tensor:
        """The metric the corrections are added to: g_FS, or the kernel's own (a network's, NetworkNTK base 'network')."""
        g = self.kernel.base_metric(points) if self.metric_kernel else None
        return points["g_fs"].clone() if g is None else g.to(points["g_fs"])

    def _cached_matrix(self, group: int | None) -> torch.Tensor | None:
        """The kernel matrix of a cluster (group = its label) or of all train points (None), if ALL such
        matrices fit in cache_mb together (a decision on sizes alone, so that resumed flows compute the same)."""
        sizes = [len(g) ** 2 * 8 for g in self.groups()]
        if self.metric_kernel or self.cache_mb <= 0 or sum(sizes) > self.cache_mb * 2**20:
            return None
        key = -1 if group is None else group
        if key not in self._cache:
            rows = torch.arange(self.n_train) if group is None else self.groups()[group]
            z = self.train_z[rows]
            self._cache[key] = self.kernel.matrix(z, z, self.block)
        return self._cache[key]

    def kernel_sum(self, tgt: dict, src: dict, V: torch.Tensor, K: torch.Tensor | None = None,
                   h_tgt: torch.Tensor | None = None, h_src: torch.Tensor | None = None) -> torch.Tensor:
        """sum_{x'} k(x, x') V(x') at each target x, in x's own chart (how depends on chart_mode).

        tgt, src: dicts with z, patch, elim, pullback; V [Ns, m, m] in the sources' charts (a gradient G or the
        coefficients C). K [Nt, Ns]: the kernel matrix of the pair if known (else computed tile by tile).
        h_tgt [Nt], h_src [Ns]: the normalisation factors (kernel h(x) h(x') k(x, x')), if any.
        Returns [Nt, m, m], to be subtracted (times lr) from g.
        """
        if h_src is not None:
            V = V * h_src.to(V.dtype)[:, None, None]
        m = V.shape[-1]
        if len(tgt["z"]) == 0 or len(src["z"]) == 0:
            out = torch.zeros(len(tgt["z"]), m, m, dtype=torch.complex128)
        else:
            out = self._kernel_sum(tgt, src, V, K)
        return out if h_tgt is None else out * h_tgt.to(out.dtype)[:, None, None]

    def _kapply(self, tz, sz, V, K) -> torch.Tensor:
        """sum_s k(t, s) V_s for Hermitian V [Ns, d, d], on its d^2 real components (half the work of complex V)."""
        R = real_components(V)
        S = K @ R if K is not None else self.kernel.apply(tz, sz, R, self.block, self.tile_dtype, self.device)
        return hermitian(S, V.shape[-1])

    def _kernel_sum(self, tgt: dict, src: dict, V: torch.Tensor, K) -> torch.Tensor:
        if self.metric_kernel:  # a network's metric-NTK maps each point's chart to each point's chart itself
            return hermitian_part(self.kernel.apply_metric(tgt, src, V))
        if self.chart_mode == "ambient":
            return chart_sums.ambient_sum(self._kapply, self.surface, tgt, src, V, K)
        if self.chart_mode == "transform":
            return chart_sums.transform_sum(self._kapply, self.surface, tgt, src, V, K)
        return chart_sums.reject_sum(self._kapply, self.surface, (int(self.ref_chart[0]), int(self.ref_chart[1])), tgt, src, V, K)

    # ------------------------------------------------------------------ one flow step
    def gradient(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch loss, G = dL/dg [|B|, m, m] Hermitian) at state rows, L the chosen metric loss with fixed kappa."""
        batch = {"weights": self.train_weights[rows], "omega_sq": self.train_omega_sq[rows]}
        with torch.enable_grad():
            g = self.metric[rows].detach().clone().requires_grad_(True)
            loss = losses_.METRIC_LOSSES[self.loss_name](g, batch, self.kappa)
            obj = loss * len(rows) if self.reduction == "sum" else loss
            (G,) = torch.autograd.grad(obj, g)
        if not torch.isfinite(loss) or not torch.isfinite(torch.view_as_real(G)).all():
            raise FloatingPointError(
                f"the {self.loss_name} loss or its gradient is not finite at flow step {int(self.flow_steps)}: "
                "lower lr or use pd_policy=backtrack"
            )
        return loss.detach(), hermitian_part(G)

    def _update(self, targets: torch.Tensor, rows: torch.Tensor, G: torch.Tensor, cluster: int | None,
                shard: bool) -> torch.Tensor:
        """sum_{x' in rows} k(x, x') G(x') at the target rows; receiving rows shared out over DDP ranks if shard."""
        world, rank, gather = self.distributed or (1, 0, None)
        h_src = self.train_h[rows] if self.normalize else None
        if cluster is None:
            K = self._cached_matrix(None)
            K = None if K is None else K[:, rows]
        else:  # a whole cluster (the training loop's case) uses the cluster's matrix
            K = self._cached_matrix(cluster) if torch.equal(rows, self.groups()[cluster]) else None
        mine = targets
        if shard and world > 1:
            bounds = [len(targets) * r // world for r in range(world + 1)]
            sel = slice(bounds[rank], bounds[rank + 1])
            mine, K = targets[sel], None if K is None else K[sel]
        h_tgt = self.train_h[mine] if self.normalize else None
        part = self.kernel_sum(self.rows(mine), self.rows(rows), G, K, h_tgt, h_src)
        return torch.cat(gather(part)) if shard and world > 1 else part

    @torch.no_grad()
    def flow_step(self, rows: torch.Tensor | None = None, shard: bool = True) -> dict:
        """One step of eq. 2.12 with the batch B = state rows ``rows``.

        Unclustered: every train point is updated from B (default B: all points). Clustered: B must be one
        cluster and only its points are updated; rows=None takes one step on every cluster in turn.
        The step size is lr * lr_step_decay^k, k = steps taken so far (by this cluster, when clustered).
        Returns {"loss": batch loss before the step, "scale": step multiplier used, "backtracks", "clipped",
        "skipped"} (summed over clusters for rows=None; loss and scale of the last).
        """
        if self.n_train == 0:
            raise RuntimeError("the flow has no train points: call attach() (or fit with a datamodule) first")
        clustered = bool(self.clustered)
        if rows is None and clustered:
            total = {"backtracks": 0, "clipped": 0, "skipped": 0}
            for src in self.groups():
                info = self.flow_step(src, shard)
                for k in total:
                    total[k] += info[k]
            return {**info, **total}
        rows = torch.arange(self.n_train) if rows is None else torch.as_tensor(rows, dtype=torch.int64).cpu()
        info = {"loss": float("nan"), "scale": 0.0, "backtracks": 0, "clipped": 0, "skipped": 0, "not_pd": 0}
        if len(rows) == 0:
            return info
        cluster = None
        if clustered:
            cl = torch.unique(self.labels[rows])
            if len(cl) != 1:
                raise ValueError(f"a clustered flow step takes the points of one cluster, got clusters {cl.tolist()[:10]}")
            cluster = int(cl[0])
        k = int(self.cluster_steps[cluster]) if clustered else int(self.flow_steps)
        lr = self.lr * self.lr_step_decay**k
        loss, G = self.gradient(rows)
        targets = rows if clustered else torch.arange(self.n_train)
        g1, keep, scale = self._safe_step(targets, rows, G, lr, cluster, shard, info)
        self.metric[targets] = g1
        if keep.any():
            self.coeff[rows[keep]] += (lr * scale) * G[keep]
        self.flow_steps += 1
        if clustered:
            self.cluster_steps[cluster] += 1
        self.pd_counts += torch.tensor([info["backtracks"], info["clipped"], info["skipped"]])
        info.update(loss=float(loss), scale=scale if keep.any() else 0.0)
        return info

    def _safe_step(self, targets, rows, G, lr, cluster, shard, info):
        """The new metric at the targets under the pd_policy: (g_new, sources kept [|B|] bool, step multiplier)."""
        U = self._update(targets, rows, G, cluster, shard)
        g0 = self.metric[targets]
        keep = torch.ones(len(rows), dtype=torch.bool)

        def refused(g_new):
            return not_positive_definite(g_new - self.pd_margin * g0 if self.pd_margin else g_new)

        scale = 1.0
        g1 = g0 - lr * U
        bad = refused(g1)
        if not bad.any():
            return g1, keep, scale
        if self.pd_policy == "continue":
            info["not_pd"] = int(not_positive_definite(g1).sum())
            return g1, keep, scale
        if self.pd_policy == "stop":
            raise NotPositiveDefiniteError(
                f"flow step {int(self.flow_steps)} (lr {lr:.4g}) would make the metric non-positive-definite at "
                f"{int(bad.sum())} of {len(targets)} points (pd_policy=stop): lower lr, or use pd_policy=backtrack or clip"
            )
        if self.pd_policy == "backtrack":
            for _ in range(self.max_backtracks):
                scale /= 2
                info["backtracks"] += 1
                g1 = g0 - lr * scale * U
                if not refused(g1).any():
                    return g1, keep, scale
            raise NotPositiveDefiniteError(
                f"flow step {int(self.flow_steps)}: the metric is still not positive definite after halving the step "
                f"{self.max_backtracks} times (pd_policy=backtrack): lower lr or raise max_backtracks"
            )
        for r in range(self.max_backtracks + 1):  # clip: leave out the gradient at the offending points
            drop = keep & torch.isin(rows, targets[bad])
            if not drop.any() or r == self.max_backtracks:
                info["skipped"] = 1
                return g0.clone(), torch.zeros_like(keep), scale
            keep &= ~drop
            info["clipped"] += int(drop.sum())
            if not keep.any():
                return g0.clone(), keep, scale
            g1 = g0 - lr * self._update(targets, rows, G * keep[:, None, None], cluster, shard)
            bad = refused(g1)
            if not bad.any():
                return g1, keep, scale
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_metric(self, points: CYPoints | dict, use_state: bool = True) -> torch.Tensor:
        """g = g_FS - sum_{x'} k(x, x') C(x') at any points (CYPoints or batch dict): -> [N, m, m].

        Clustered: the sum runs over the cluster of the FS-nearest train point. Given exactly the train points,
        the stored state is returned (``use_state``; the kernel expansion equals it to round-off).
        """
        d = points.as_batch() if isinstance(points, CYPoints) else points
        d = {k: d[k].cpu() for k in ("z", "patch", "elim", "pullback", "g_fs")}
        base = self.base_metric(d)
        if self.n_train == 0:
            return base
        if use_state and len(d["z"]) == self.n_train and torch.equal(d["z"], self.train_z.cpu()):
            return self.metric.cpu().clone()
        if not bool(self.clustered):
            return base - self._predict_from(_chart_fields(d), torch.arange(self.n_train))
        if self._index is None:
            self._index = NearestIndex(self.train_z, self.surface)
        cl = self.labels[self._index.query(d["z"])[1]]
        S = torch.empty_like(d["g_fs"])
        for c in torch.unique(cl).tolist():
            sel = cl == c
            S[sel] = self._predict_from({k: v[sel] for k, v in _chart_fields(d).items()}, self.groups()[c])
        return base - S

    def _predict_from(self, tgt: dict, src: torch.Tensor) -> torch.Tensor:
        srcp = self.rows(src)
        if not self.normalize or len(src) == 0:
            return self.kernel_sum(tgt, srcp, self.coeff[src])
        h_tgt = self._row_sums(tgt, srcp["z"]).rsqrt()
        return self.kernel_sum(tgt, srcp, self.coeff[src], None, h_tgt, self.train_h[src])

    def train_sigma(self, fs: bool = False) -> torch.Tensor:
        """sigma of the state (fs: of g_FS) on the train points in the flow (cheap: no kernel)."""
        g = self.train_g_fs if fs else self.metric
        return volume.sigma(self.train_weights, volume.real_det(g), self.train_omega_sq)
