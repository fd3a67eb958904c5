"""Frozen-kernel metric flows (paper sec. 2.2 and 3.2): eq. 2.12 with Theta_ijkl = delta_ik delta_jl k(x, x').

The discrete frozen metric-NTK flow, one Euler step of size lr:

    g(x) <- g(x) - lr * sum_{x' in B} k(x, x') G(x'),      G(x') = dL/dg(x'),          (eq. 2.12, 2.23)

with L the batch loss (a METRIC loss of mflow.losses, default the sigma loss with the fixed kappa of the
FS metric on the train split). The metric at the train points starts at the pulled-back FS metric. The
per-train-point coefficients C(x') = sum over steps of lr G(x') are kept, so that the metric at ANY point is

    g(x) = g_FS(x) - sum_{x'} k(x, x') C(x')

(the same at the train points, by linearity): val / test / noised points are predicted from the kernel
alone. Clustered (mflow.data.clustered): every training batch is one cluster, only that cluster's points
are updated and only its points contribute (the kernel between clusters is neglected, sec. 3.1); a new
point takes the cluster of its FS-nearest train point. Unclustered: every batch B updates all train points
(full batch when the batch is the whole split), with Kernel.apply: memory O(block^2), never N^2.

Charts. The Kronecker deltas add metric components at different points, which only means something in one
coordinate system, but every point has its own chart (patch, elim) (sec. 3.1). ``chart_mode``:

* ``"ambient"`` (default): the metric-NTK of g(x) = g_FS(x) + F(x) A(x) F(x)^H with an ambient Hermitian
  (n+1)x(n+1) form A whose components are independent networks of scalar kernel k. F = J conj(P) / (|z| sqrt(pi))
  is the horizontal lift of the chart's coordinate vectors (P = 1 - z z^H / |z|^2; F F^H = g_FS). Then
  Theta(x, x') = k(x, x') (F(x) F(x')^H) (x) conj(F(x) F(x')^H) and the step is
  dg(x) = -lr F(x) [sum_x' k(x, x') F(x')^H G(x') F(x')] F(x)^H. Under a change of chart F -> e^{i phi} T F,
  so F^H G F and F(.)F^H are chart-independent: exact, chart-free, one kernel product on (n+1)^2 complex
  components, no Jacobians between far-apart points. At x = x' the deltas become the FS metric:
  dg = -lr k g_FS G g_FS, the covariant form of delta_ik delta_jl.
* ``"transform"``: the paper's delta_ik delta_jl in the chart of the receiving point x: each G(x') is moved
  into x's chart at x' with the chart Jacobian (the gradient is contravariant: G_to = T^-H G_from T^-1
  when g_to = T g_from T^H, so that Re tr(G^H dg) is chart-invariant). Rows are grouped by chart (at most
  20 on the quintic), so the cost is (number of charts) x N' small transforms plus the usual kernel product.
  Expressing G(x') in the chart of a distant x can involve large Jacobians.
* ``"reject"``: the paper's choice: only train points in the most common chart of the split take part
  (about 7% of quintic points, so about 14x more points must be sampled; the paper says ~20x); updates are
  added component-wise in that chart, and a prediction at a point of another chart is transformed to it
  as a form (exact).

Positive definiteness (``pd_policy``), when a step would make some metric non-positive-definite:
"backtrack" halves the whole step until every metric is PD (at most max_backtracks times, then raises);
"clip" leaves out dL/dg at the offending points (their update is skipped; with a smooth kernel the other
points' contributions are recomputed, repeated at most max_backtracks times, after which the whole step
is skipped); "stop" raises NotPositiveDefiniteError. Events are counted (``pd_counts``: backtracks,
clipped points, skipped steps) and logged. ``pd_margin`` > 0 asks for g_new - pd_margin g_old > 0 instead.

Step size. ``reduction="sum"`` takes G = the per-point gradient (the paper's sum over x' in B), "mean" the
gradient of the weighted batch mean (G smaller by the batch size). The sigma loss is |1 - eta|: with a
constant step its flow ends in an oscillation of the size of the step, so long flows need
``lr_step_decay`` < 1 (per step; per cluster when clustered, so that the order of the clusters does not
matter). ``normalize`` uses the rescaled kernel h(x) h(x') k(x, x'), h = (row sum of k)^-1/2 (eq. 2.15-2.16),
for kernels whose overall size would set the step (the ReLU NTK with sigma_b = 80 is ~1e4 and nearly constant).

DDP: the ranks hold the same state. Clustered: every rank flows its own clusters (ClusterBatchSampler
shares them out, padding with empty batches) and the updated rows are all-gathered: as clusters are
independent this is identical to one process. Unclustered: the ranks' batches are gathered into one
batch B, and the kernel rows (receiving points) are shared out and all-gathered: identical to one
process with batch B (the full split when the per-rank batch covers it).
"""
from __future__ import annotations

import math

import lightning as L
import torch

from . import losses as losses_
from .checks import integer
from .geometry import charts, volume
from .geometry.distance import nearest_neighbours
from .geometry.hypersurface import surface_from_args
from .geometry.points import CYPoints
from .kernels.analytic import DEFAULT_BLOCK, Kernel
from .kernels.registry import KERNELS
from .kernels.registry import kernel as make_kernel
from .kernels.clustering import check_labels
from .metrics import SigmaMeasure
from .modules import CHECKPOINT_FORMAT, NotPositiveDefiniteError, check_checkpoint, datamodule_of

CHART_MODES = ("ambient", "transform", "reject")
PD_POLICIES = ("backtrack", "clip", "stop")
REDUCTIONS = ("mean", "sum")
KIND = "kernel_flow"
RESIDUAL_TOL = 1e-6  # |p(z)| relative to its terms: above this a point is not on the model's manifold

# buffers whose first dimension is the number of train points in the flow (resized on load)
STATE_BUFFERS = (
    "train_z", "train_patch", "train_elim", "train_pullback", "train_g_fs", "train_weights", "train_omega_sq",
    "metric", "coeff", "labels", "row_of", "train_h", "cluster_steps",
)


# ----------------------------------------------------------------------------- chart helpers
def dagger(a: torch.Tensor) -> torch.Tensor:
    return a.conj().transpose(-1, -2)


def hermitian_part(a: torch.Tensor) -> torch.Tensor:
    return (a + dagger(a)) / 2


def pairing(G: torch.Tensor, dg: torch.Tensor) -> torch.Tensor:
    """Re tr(G^H dg) = the first-order change of the loss for a metric change dg: [..., m, m] x2 -> [...].

    (G is torch's gradient of a real loss w.r.t. complex g, dL = Re sum conj(G_ij) dg_ij; for Hermitian G
    this is tr(G dg) = tr(G'^T dg) with G' = dL/dg the Wirtinger derivative.)
    """
    return (G.conj() * dg).sum((-1, -2)).real


def chart_frame(surface, z: torch.Tensor, patch: torch.Tensor, elim: torch.Tensor):
    """The points z (any scaling, z_patch != 0) in chart (patch, elim): (z with z_patch = 1, pullback J [N, m, n+1])."""
    zc = charts.to_patch(z, patch)
    return zc, charts.pullback(surface.gradient(zc), patch, elim)


def chart_change(surface, z, patch_from, elim_from, patch_to, elim_to) -> torch.Tensor:
    """T [N, m, m] between two charts at the same points, g_to = T g_from T^H (T_ab = dx^from_b / dx^to_a)."""
    zt, Jt = chart_frame(surface, z, patch_to, elim_to)
    return charts.chart_jacobian(zt, Jt, patch_from, charts.local_indices(patch_from, elim_from, z.shape[-1]))


def form_to_chart(T: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A metric-like (1,1) form: g_to = T g_from T^H."""
    return T @ g @ dagger(T)


def gradient_to_chart(T: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """The gradient dL/dg transforms contragrediently: G_to = T^-H G_from T^-1 (keeps Re tr(G^H dg) invariant)."""
    Ti = torch.linalg.inv(T)
    return dagger(Ti) @ G @ Ti


def ambient_frame(z: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """F = J conj(P) / (|z| sqrt(pi)), P = 1 - z z^H / |z|^2: [N, n+1], [N, m, n+1] -> [N, m, n+1].

    Rows: the chart's coordinate vectors lifted horizontally to the unit sphere, so F F^H = g_FS and a
    change of chart at the same point gives F_to = e^{i phi} T F_from (phase from the rescaling of z).
    """
    r2 = (z.abs() ** 2).sum(-1)
    eye = torch.eye(z.shape[-1], dtype=z.dtype)
    pbar = eye - z.conj()[..., :, None] * z[..., None, :] / r2[..., None, None]
    return J @ pbar / torch.sqrt(math.pi * r2)[..., None, None]


def gradient_to_ambient(F: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """F^H G F: [N, m, m] -> [N, n+1, n+1], chart-independent."""
    return dagger(F) @ G @ F


def form_from_ambient(F: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """F H F^H: [N, n+1, n+1] -> [N, m, m] in the chart of F."""
    return F @ H @ dagger(F)


def not_positive_definite(g: torch.Tensor) -> torch.Tensor:
    """True where a Hermitian g is not (numerically) positive definite or not finite: [N, m, m] -> [N]."""
    _, info = torch.linalg.cholesky_ex(g)
    return (info != 0) | ~torch.isfinite(torch.view_as_real(g)).flatten(1).all(1)


def _real_matmul(K: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """K [Na, Nb] real @ V [Nb, ...] real or complex -> [Na, ...]."""
    flat = V.reshape(len(V), -1)
    if V.is_complex():
        out = K @ torch.view_as_real(flat).reshape(len(V), -1)
        return torch.view_as_complex(out.reshape(len(K), -1, 2)).reshape(len(K), *V.shape[1:])
    return (K @ flat).reshape(len(K), *V.shape[1:])


def _as_dict(points) -> dict:
    if isinstance(points, CYPoints):
        return {"z": points.z, "patch": points.patch, "elim": points.elim, "pullback": points.pullback,
                "g_fs": points.g_fs, "weights": points.weights, "omega_sq": points.omega_sq}
    return points


# ----------------------------------------------------------------------------- the module
class KernelFlow(L.LightningModule):
    """Frozen metric-NTK flow (eq. 2.12, 2.23) with an analytic kernel, as a LightningModule.

    Args:
        manifold, psi, ambient_n, surface_seed: the hypersurface (linked from the data config).
        kernel: relu | cosine | gaussian | delta | empirical (mflow.kernels.registry); kernel_params: its parameters,
            e.g. {depth: 1, sigma_w: 5.716, sigma_b: 80.52} (relu) or {sigma: 30.0} (gaussian).
        lr: step size of eq. 2.12; lr_step_decay: multiplicative factor per flow step (1: constant, as in the paper).
        loss: a METRIC loss of mflow.losses (sigma, ultra_local_square, ultra_local_entropy, volume).
        reduction: "mean": G = gradient of the batch loss as mflow.losses defines it (weighted mean over
            the batch); "sum": of the batch size times that (the per-point gradient, weights relative to their mean).
        chart_mode: ambient (default) | transform | reject (module doc).
        pd_policy: backtrack | clip | stop; max_backtracks: halvings (backtrack) or rounds (clip) per step.
        pd_margin: a step must keep g_new - pd_margin * g_old positive definite (0: plain positive
            definiteness; 0.1: no direction may shrink by more than 90% in one step, which keeps long flows
            off the boundary of the cone, where plain backtracking eventually needs ever more halvings).
        normalize: use h(x) h(x') k(x, x') with h = (sum_{x' in the cluster / train set} k(x, x'))^-1/2 (the
            rescaling trick, eq. 2.15-2.16): the kernel's overall size and the number of points drop out of
            the step size (the ReLU NTK with sigma_b = 80 is ~1e4 everywhere). No effect on the Delta kernel.
        steps_per_batch: flow steps taken on each training batch (cluster).
        block: kernel tile size (memory O(block^2)).
        cache_mb: keep the kernel matrices of the batches (clusters) while they fit in this many MiB in all;
            the kernel is frozen, so later epochs reuse them. 0 recomputes every tile every step.
    """

    has_derivatives = False  # the metric is not a differentiable network: no Ricci measure (RunSummary)

    def __init__(
        self,
        manifold: str = "fermat_quintic",
        psi: float = 0.0,
        ambient_n: int = 4,
        surface_seed: int = 0,
        kernel: str = "gaussian",
        kernel_params: dict | None = None,
        lr: float = 0.1,
        lr_step_decay: float = 1.0,
        loss: str = "sigma",
        reduction: str = "mean",
        chart_mode: str = "ambient",
        pd_policy: str = "backtrack",
        max_backtracks: int = 20,
        pd_margin: float = 0.0,
        normalize: bool = False,
        steps_per_batch: int = 1,
        block: int = DEFAULT_BLOCK,
        cache_mb: float = 512.0,
    ):
        super().__init__()
        kernel_params = {} if kernel_params is None else dict(kernel_params)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.kernel_name, self.kernel_params = kernel, kernel_params
        self.kernel: Kernel = _build_kernel(kernel, kernel_params)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(lr_step_decay, (int, float)) and 0 < lr_step_decay <= 1):
            raise ValueError(f"lr_step_decay must be in (0, 1], got {lr_step_decay!r}")
        if loss not in losses_.METRIC_LOSSES:
            raise ValueError(
                f"loss {loss!r} is not a metric loss; a kernel flow needs dL/dg at points: choose one of "
                f"{sorted(losses_.METRIC_LOSSES)}"
            )
        for name, value, choices in (("reduction", reduction, REDUCTIONS), ("chart_mode", chart_mode, CHART_MODES),
                                     ("pd_policy", pd_policy, PD_POLICIES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        integer("max_backtracks", max_backtracks, lo=0)
        integer("steps_per_batch", steps_per_batch)
        integer("block", block)
        if not (0 <= pd_margin < 1):
            raise ValueError(f"pd_margin must be in [0, 1), got {pd_margin!r}")
        if not (cache_mb >= 0):
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb!r}")
        self.lr, self.lr_step_decay, self.loss_name, self.reduction = float(lr), float(lr_step_decay), loss, reduction
        self.chart_mode, self.pd_policy, self.max_backtracks = chart_mode, pd_policy, max_backtracks
        self.steps_per_batch, self.block, self.cache_mb = steps_per_batch, block, float(cache_mb)
        self.normalize = bool(normalize)
        self.pd_margin = float(pd_margin)
        self.surface = surface_from_args(manifold, psi, ambient_n, surface_seed)
        self.model = None  # no network: RunSummary's Ricci measure needs has_derivatives
        n1, m = self.surface.n + 1, self.surface.n - 1
        cd, rd, i64 = torch.complex128, torch.float64, torch.int64
        for name, shape, dtype in (
            ("train_z", (0, n1), cd), ("train_patch", (0,), i64), ("train_elim", (0,), i64),
            ("train_pullback", (0, m, n1), cd), ("train_g_fs", (0, m, m), cd), ("train_weights", (0,), rd),
            ("train_omega_sq", (0,), rd), ("metric", (0, m, m), cd), ("coeff", (0, m, m), cd),
            ("labels", (0,), i64), ("row_of", (0,), i64), ("train_h", (0,), rd), ("cluster_steps", (0,), i64),
        ):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.register_buffer("kappa", torch.tensor(float("nan"), dtype=rd))
        self.register_buffer("initial_sigma", torch.full((3,), float("nan"), dtype=rd))
        self.register_buffer("pd_counts", torch.zeros(3, dtype=i64))  # backtracks, clipped points, skipped steps
        self.register_buffer("flow_steps", torch.zeros((), dtype=i64))
        self.register_buffer("ref_chart", torch.full((2,), -1, dtype=i64))  # (patch, elim) in reject mode
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))
        # DDP wraps modules with trainable parameters only; this one gets a zero gradient per step
        self._ddp_anchor = torch.nn.Parameter(torch.zeros(1, dtype=rd))
        self._cache: dict = {}
        self._cache_bytes = 0
        self.val_sigma = SigmaMeasure()
        self.test_sigma = SigmaMeasure()

    # ------------------------------------------------------------------ state
    @property
    def n_train(self) -> int:
        return len(self.train_z)

    def attach(self, train: CYPoints, kappa: float, labels: torch.Tensor | None = None) -> "KernelFlow":
        """Start the flow on the train split: state g = g_FS, C = 0 (also usable without a Trainer).

        labels [N] (cluster of each train point) makes the flow clustered. In reject mode only the points
        in the most common chart are kept (row_of maps split rows to state rows, -1 if left out).
        """
        self._check_points(train, "train")
        if not (math.isfinite(float(kappa)) and float(kappa) > 0):
            raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")
        n = len(train)
        if labels is not None:
            labels = check_labels(labels, n)
        keep = torch.ones(n, dtype=torch.bool)
        ref = torch.full((2,), -1, dtype=torch.int64)
        if self.chart_mode == "reject":
            cid = train.chart_id
            ids, counts = torch.unique(cid, return_counts=True)
            best = int(ids[counts.argmax()])
            ref = torch.tensor([best // train.z.shape[-1], best % train.z.shape[-1]])
            keep = cid == best
            print(f"[mflow] chart_mode=reject: keeping {int(keep.sum())} of {n} train points "
                  f"(chart patch={int(ref[0])}, elim={int(ref[1])}, {keep.float().mean():.1%} of the points)")
        p = train[keep]
        row_of = torch.full((n,), -1, dtype=torch.int64)
        row_of[keep] = torch.arange(int(keep.sum()))
        new = {
            "train_z": p.z, "train_patch": p.patch, "train_elim": p.elim, "train_pullback": p.pullback,
            "train_g_fs": p.g_fs, "train_weights": p.weights, "train_omega_sq": p.omega_sq,
            "metric": p.g_fs.clone(), "coeff": torch.zeros_like(p.g_fs),
            "labels": labels[keep] if labels is not None else torch.zeros(0, dtype=torch.int64), "row_of": row_of,
        }
        for k, v in new.items():
            setattr(self, k, v.detach().clone().to(self._buffers[k].dtype).to(self._buffers[k].device))
        self.kappa.fill_(float(kappa))
        self.ref_chart.copy_(ref)
        self.clustered.fill_(labels is not None)
        self.pd_counts.zero_()
        self.flow_steps.zero_()
        self._clear_cache()
        n_cl = int(self.labels.max()) + 1 if labels is not None and len(self.labels) else 0
        self.cluster_steps = torch.zeros(n_cl, dtype=torch.int64)
        h = torch.ones(self.n_train, dtype=torch.float64)
        if self.normalize:  # h(x) = (sum over the x's cluster, or all train points, of k(x, x'))^-1/2
            for src in self._groups():
                pts = self._rows(src)
                h[src] = self._row_sums(pts, pts["z"]).rsqrt()
        self.train_h = h
        return self

    def _check_points(self, points, what: str) -> None:
        d = _as_dict(points)
        z = d["z"]
        if z.ndim != 2 or z.shape[-1] != self.surface.n + 1:
            raise ValueError(
                f"{what} points have {z.shape[-1] if z.ndim == 2 else '?'} homogeneous coordinates but "
                f"{self.surface.name} lives in P^{self.surface.n}: points of another manifold?"
            )
        for k in ("z", "g_fs", "weights", "omega_sq", "pullback"):
            if k in d and not torch.isfinite(torch.view_as_real(d[k]) if d[k].is_complex() else d[k]).all():
                raise ValueError(f"{what} points have NaN or inf in {k}")
        if len(z):
            res = self.surface.residual(z)
            if float(res.max()) > RESIDUAL_TOL:
                raise ValueError(
                    f"{int((res > RESIDUAL_TOL).sum())} of {len(z)} {what} points are not on {self.surface.name} "
                    f"(|p(z)| relative {float(res.max()):.2e} > {RESIDUAL_TOL}): points of another manifold?"
                )

    def _clear_cache(self) -> None:
        self._cache, self._cache_bytes = {}, 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in STATE_BUFFERS:  # the state's size is only known from the checkpoint
            t = state_dict.get(prefix + name)
            if t is not None and t.shape != self._buffers[name].shape:
                self._buffers[name] = torch.empty_like(t, device=self._buffers[name].device)
        self._clear_cache()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _rows(self, rows: torch.Tensor) -> dict:
        return {"z": self.train_z[rows], "patch": self.train_patch[rows], "elim": self.train_elim[rows],
                "pullback": self.train_pullback[rows]}

    def _groups(self) -> list[torch.Tensor]:
        """State rows of each cluster (clustered), or all rows."""
        if not bool(self.clustered):
            return [torch.arange(self.n_train)]
        return [(self.labels == c).nonzero().flatten() for c in range(int(self.labels.max()) + 1)]

    def _row_sums(self, tgt: dict, src_z: torch.Tensor) -> torch.Tensor:
        """sum_{x'} k(x, x') over the sources, at the targets: [Nt] (> 0 required by normalize)."""
        n = self.kernel.apply(tgt["z"], src_z, torch.ones(len(src_z), dtype=torch.float64), self.block)
        if not (n > 0).all():
            raise ValueError(f"normalize=True needs positive kernel row sums; kernel {self.kernel_name} gives {float(n.min())}")
        return n

    # ------------------------------------------------------------------ the kernel sum
    def _kapply(self, tz, sz, V, key=None, sel=None) -> torch.Tensor:
        """sum_s k(t, s) V_s for targets tz (rows sel of them) and sources sz; cached kernel matrix if key fits."""
        K = self._cache.get(key) if key is not None else None
        if K is None and key is not None and self.cache_mb > 0:
            nbytes = 8 * len(tz) * len(sz)
            if self._cache_bytes + nbytes <= self.cache_mb * 2**20:
                K = self.kernel.matrix(tz, sz, self.block)
                self._cache[key] = K
                self._cache_bytes += nbytes
        if K is not None:
            return _real_matmul(K if sel is None else K[sel], V)
        return self.kernel.apply(tz if sel is None else tz[sel], sz, V, self.block)

    def kernel_sum(self, tgt: dict, src: dict, V: torch.Tensor, key=None, h_tgt=None, h_src=None) -> torch.Tensor:
        """sum_{x'} k(x, x') V(x') at each target x, in x's own chart (how depends on chart_mode).

        tgt, src: dicts with z, patch, elim, pullback; V [Ns, m, m] in the sources' charts (a gradient-type
        tensor such as dL/dg or the coefficients C). Returns [Nt, m, m], to be subtracted (times lr) from g.
        h_tgt [Nt], h_src [Ns]: the normalisation factors (kernel h(x) h(x') k(x, x')), if any.
        """
        if h_src is not None:
            V = V * h_src.to(V.dtype)[:, None, None]
        out = self._kernel_sum(tgt, src, V, key)
        return out if h_tgt is None else out * h_tgt.to(out.dtype)[:, None, None]

    def _kernel_sum(self, tgt: dict, src: dict, V: torch.Tensor, key=None) -> torch.Tensor:
        m = V.shape[-1]
        if len(tgt["z"]) == 0:
            return torch.zeros(0, m, m, dtype=torch.complex128)
        if len(src["z"]) == 0:
            return torch.zeros(len(tgt["z"]), m, m, dtype=torch.complex128)
        if self.chart_mode == "ambient":
            H = gradient_to_ambient(ambient_frame(src["z"], src["pullback"]), V)
            S = self._kapply(tgt["z"], src["z"], H, key)
            return hermitian_part(form_from_ambient(ambient_frame(tgt["z"], tgt["pullback"]), S))
        if self.chart_mode == "transform":
            n1 = tgt["z"].shape[-1]
            cid = tgt["patch"] * n1 + tgt["elim"]
            out = torch.empty(len(cid), m, m, dtype=torch.complex128)
            same = src["patch"] * n1 + src["elim"]
            for c in torch.unique(cid).tolist():
                sel = cid == c
                pc, ec = torch.full_like(src["patch"], c // n1), torch.full_like(src["elim"], c % n1)
                Vc = V.clone()
                move = same != c
                if move.any():
                    T = chart_change(self.surface, src["z"][move], src["patch"][move], src["elim"][move], pc[move], ec[move])
                    Vc[move] = gradient_to_chart(T, V[move])
                out[sel] = self._kapply(tgt["z"], src["z"], Vc, key, sel)
            return hermitian_part(out)
        # reject: sources are all in the reference chart; components are added there
        S = self._kapply(tgt["z"], src["z"], V, key)
        pr, er = int(self.ref_chart[0]), int(self.ref_chart[1])
        other = (tgt["patch"] != pr) | (tgt["elim"] != er)
        if other.any():
            zo = tgt["z"][other]
            T = chart_change(self.surface, zo, torch.full_like(tgt["patch"][other], pr),
                             torch.full_like(tgt["elim"][other], er), tgt["patch"][other], tgt["elim"][other])
            S[other] = form_to_chart(T, S[other])
        return hermitian_part(S)

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

    def _update(self, targets: torch.Tensor, rows: torch.Tensor, G: torch.Tensor, shard: bool) -> torch.Tensor:
        """sum_{x' in rows} k(x, x') G(x') at the target rows; rows of the kernel shared out over DDP ranks if shard."""
        world, rank = self._world()
        key = None
        if self.cache_mb > 0:
            key = (targets.numpy().tobytes(), rows.numpy().tobytes())
        h_src = self.train_h[rows] if self.normalize else None
        if not (shard and world > 1):
            h_tgt = self.train_h[targets] if self.normalize else None
            return self.kernel_sum(self._rows(targets), self._rows(rows), G, key, h_tgt, h_src)
        bounds = [len(targets) * r // world for r in range(world + 1)]
        mine = targets[bounds[rank] : bounds[rank + 1]]
        key = None if key is None else (mine.numpy().tobytes(), key[1])
        h_tgt = self.train_h[mine] if self.normalize else None
        part = self.kernel_sum(self._rows(mine), self._rows(rows), G, key, h_tgt, h_src)
        return torch.cat(self._all_gather_object(part))

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
            for src in self._groups():
                info = self.flow_step(src, shard)
                for k in total:
                    total[k] += info[k]
            return {**info, **total}
        rows = torch.arange(self.n_train) if rows is None else torch.as_tensor(rows, dtype=torch.int64).cpu()
        info = {"loss": float("nan"), "scale": 0.0, "backtracks": 0, "clipped": 0, "skipped": 0}
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
        targets = rows if bool(self.clustered) else torch.arange(self.n_train)
        U = self._update(targets, rows, G, shard)
        g0 = self.metric[targets]
        keep = torch.ones(len(rows), dtype=torch.bool)
        scale = 1.0

        def refused(g_new):
            return not_positive_definite(g_new - self.pd_margin * g0 if self.pd_margin else g_new)

        g1 = g0 - lr * U
        bad = refused(g1)
        if bad.any():
            if self.pd_policy == "stop":
                raise NotPositiveDefiniteError(
                    f"flow step {int(self.flow_steps)} (lr {lr:.4g}) would make the metric non-positive-definite at "
                    f"{int(bad.sum())} of {len(targets)} points (pd_policy=stop): lower lr, or use "
                    "pd_policy=backtrack or clip"
                )
            if self.pd_policy == "backtrack":
                for _ in range(self.max_backtracks):
                    scale /= 2
                    info["backtracks"] += 1
                    g1 = g0 - lr * scale * U
                    bad = refused(g1)
                    if not bad.any():
                        break
                if bad.any():
                    raise NotPositiveDefiniteError(
                        f"flow step {int(self.flow_steps)}: the metric is still not positive definite at "
                        f"{int(bad.sum())} points after halving the step {self.max_backtracks} times "
                        "(pd_policy=backtrack): lower lr or raise max_backtracks"
                    )
            else:  # clip: leave out the gradient at the offending points
                for r in range(self.max_backtracks + 1):
                    drop = keep & torch.isin(rows, targets[bad])
                    if not drop.any() or r == self.max_backtracks:
                        keep[:] = False
                        info["skipped"] = 1
                        g1 = g0.clone()
                        break
                    keep &= ~drop
                    info["clipped"] += int(drop.sum())
                    if not keep.any():
                        g1 = g0.clone()
                        break
                    U = self._update(targets, rows, G * keep[:, None, None], shard)  # same kernel (cached)
                    g1 = g0 - lr * U
                    bad = refused(g1)
                    if not bad.any():
                        break
        self.metric[targets] = g1
        if keep.any():
            self.coeff[rows[keep]] += (lr * scale) * G[keep]
        self.flow_steps += 1
        if clustered:
            self.cluster_steps[cluster] += 1
        self.pd_counts += torch.tensor([info["backtracks"], info["clipped"], info["skipped"]])
        info.update(loss=float(loss), scale=scale if keep.any() else 0.0)
        return info

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_metric(self, points) -> torch.Tensor:
        """g = g_FS - sum_{x'} k(x, x') C(x') at any points (CYPoints or batch dict): -> [N, m, m].

        Clustered: the sum runs over the cluster of the FS-nearest train point. At the train points this
        reproduces the flowed state (to round-off).
        """
        d = _as_dict(points)
        d = {k: d[k].cpu() for k in ("z", "patch", "elim", "pullback", "g_fs")}
        if self.n_train == 0:
            return d["g_fs"].clone()
        if len(d["z"]) == self.n_train and torch.equal(d["z"], self.train_z.cpu()):
            return self.metric.cpu().clone()
        if not bool(self.clustered):
            S = self._predict_from(d, torch.arange(self.n_train))
        else:
            _, nn = nearest_neighbours(d["z"], self.train_z)
            cl = self.labels[nn]
            S = torch.empty_like(d["g_fs"])
            for c in torch.unique(cl).tolist():
                sel = cl == c
                S[sel] = self._predict_from({k: v[sel] for k, v in d.items()}, (self.labels == c).nonzero().flatten())
        return d["g_fs"] - S

    def _predict_from(self, tgt: dict, src: torch.Tensor) -> torch.Tensor:
        srcp = self._rows(src)
        if not self.normalize:
            return self.kernel_sum(tgt, srcp, self.coeff[src])
        h_tgt = self._row_sums(tgt, srcp["z"]).rsqrt()
        return self.kernel_sum(tgt, srcp, self.coeff[src], None, h_tgt, self.train_h[src])

    def sigma_on(self, points: CYPoints) -> torch.Tensor:
        """sigma measure of the flowed metric on a point set (its own kappa)."""
        g = self.predict_metric(points)
        return volume.sigma(points.weights.cpu(), volume.real_det(g), points.omega_sq.cpu()).to(self.device)

    def train_sigma(self) -> torch.Tensor:
        """sigma of the state on the train points in the flow (cheap: no kernel)."""
        return volume.sigma(self.train_weights, volume.real_det(self.metric), self.train_omega_sq)

    # ------------------------------------------------------------------ Lightning
    def setup(self, stage: str) -> None:
        dm = datamodule_of(self)
        if dm is None:
            return
        if stage == "fit" and self.n_train == 0:
            labels = getattr(dm, "cluster_labels", None)
            self.attach(dm.train, float(dm.kappa_fs), labels)
        elif torch.isnan(self.kappa):
            self.kappa.fill_(float(dm.kappa_fs))

    def on_fit_start(self) -> None:
        if torch.isnan(self.initial_sigma).any():
            dm = self.trainer.datamodule
            self.initial_sigma.copy_(torch.stack([
                volume.sigma(p.weights, volume.real_det(p.g_fs), p.omega_sq) for p in (dm.train, dm.val, dm.test)
            ]).to(self.initial_sigma))

    def _world(self) -> tuple[int, int]:
        t = self._trainer
        if t is None or t.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return 1, 0
        return t.world_size, t.global_rank

    def _all_gather_object(self, obj) -> list:
        world, _ = self._world()
        out = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out

    def training_step(self, batch, batch_idx):
        world, _ = self._world()
        idx = batch["index"].cpu()
        clustered = bool(self.clustered)
        if world > 1 and not clustered:  # one batch: the union of the ranks' batches
            idx = torch.cat(self._all_gather_object(idx))
        rows = self.row_of[torch.unique(idx)].cpu() if len(idx) else idx
        rows = rows[rows >= 0]
        total = {"backtracks": 0, "clipped": 0, "skipped": 0}
        loss = float("nan")
        for s in range(self.steps_per_batch):
            info = self.flow_step(rows, shard=not clustered)
            loss = info["loss"] if s == 0 else loss
            for k in total:
                total[k] += info[k]
        if world > 1 and clustered:  # share the flowed clusters (disjoint: the order does not matter)
            mine = torch.tensor([total["backtracks"], total["clipped"], total["skipped"]])
            done = self.steps_per_batch if len(rows) else 0
            cl = int(self.labels[rows[0]]) if len(rows) else -1
            steps_cl = int(self.cluster_steps[cl]) if len(rows) else 0
            parts = self._all_gather_object((rows, self.metric[rows], self.coeff[rows], mine, done, cl, steps_cl))
            self.pd_counts -= mine
            self.flow_steps -= done
            for r, g, c, counts, n, cl, steps_cl in parts:
                self.metric[r], self.coeff[r] = g, c
                self.pd_counts += counts
                self.flow_steps += n
                if cl >= 0:
                    self.cluster_steps[cl] = steps_cl
        if world > 1:
            self.manual_backward(self._ddp_anchor.sum() * 0.0)  # lets DDP finish its (empty) reduction
            self._ddp_anchor.grad = None
        n = max(len(rows), 1)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/backtracks", float(self.pd_counts[0]), batch_size=n)
        self.log("train/clipped_points", float(self.pd_counts[1]), batch_size=n)
        self.log("train/skipped_steps", float(self.pd_counts[2]), batch_size=n)
        return None

    def on_train_epoch_end(self) -> None:
        s = self.train_sigma()
        self.log("train/sigma", s, prog_bar=True)
        if not torch.isnan(self.initial_sigma[0]) and self.chart_mode != "reject":
            self.log("train/gain", self.initial_sigma[0] / s, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        g = self.predict_metric(batch).to(batch["omega_sq"].device)
        self.val_sigma.update(volume.real_det(g), batch["omega_sq"], batch["weights"])

    def on_validation_epoch_end(self):
        sigma = self.val_sigma.compute()
        self.log("val/sigma", sigma, prog_bar=True)
        if not torch.isnan(self.initial_sigma[1]):
            self.log("val/gain", self.initial_sigma[1] / sigma, prog_bar=True)
        self.val_sigma.reset()

    def test_step(self, batch, batch_idx):
        g = self.predict_metric(batch).to(batch["omega_sq"].device)
        self.test_sigma.update(volume.real_det(g), batch["omega_sq"], batch["weights"])

    def on_test_epoch_end(self):
        sigma = self.test_sigma.compute()
        self.log("test/sigma", sigma)
        if not torch.isnan(self.initial_sigma[2]):
            self.log("test/gain", self.initial_sigma[2] / sigma)
        self.test_sigma.reset()

    def configure_optimizers(self):
        return None  # the flow updates its state directly (manual optimisation)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mflow"] = {
            "format": CHECKPOINT_FORMAT,
            "kind": KIND,
            "surface": self.surface.to_dict(),
            "fingerprint": self.surface.fingerprint(),
            "kernel": self.kernel_name,
            "kernel_params": dict(self.kernel_params),
            "chart_mode": self.chart_mode,
            "n_train": self.n_train,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint(checkpoint, self.surface)
        meta = checkpoint["mflow"]
        if meta.get("kind") != KIND:
            raise ValueError(f"checkpoint holds a {meta.get('kind', 'network')!r} model, not a kernel flow")
        mine = (self.kernel_name, dict(self.kernel_params), self.chart_mode)
        theirs = (meta.get("kernel"), dict(meta.get("kernel_params") or {}), meta.get("chart_mode"))
        if mine != theirs:
            raise ValueError(f"checkpoint is a flow with (kernel, params, chart_mode) = {theirs}, this model has {mine}")


def _build_kernel(name: str, params: dict) -> Kernel:
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}")
    try:
        return make_kernel(name, **params)
    except TypeError as e:
        raise ValueError(f"bad kernel_params {params} for kernel {name!r}: {e}") from None
