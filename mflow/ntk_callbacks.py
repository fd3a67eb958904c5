"""Callbacks that watch the metric-NTK drift (REFERENCE.md sec. 4) and the sigma gains during training.

NTKDrift: the empirical metric-NTK K_t (eq. 2.7, mflow.ntk) on a fixed probe set, against K_0 at the
start of fit: relative change, kernel distance, centred kernel alignment, kernel velocity, and the
distance of the network-output kernel to the analytic frozen ReLU NTK where that exists.
SigmaGain: sigma gains on train / val / test against the initial metric at every validation.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from . import ntk
from .io import atomic_write, write_json

# ----------------------------------------------------------------------------- drift measures


def frobenius(K: torch.Tensor) -> float:
    """|K|_F over all axes."""
    return float(torch.linalg.vector_norm(K))


def relative_change(K: torch.Tensor, K0: torch.Tensor) -> float:
    """|K - K_0|_F / |K_0|_F (falls like 1/sqrt(width) in the lazy regime)."""
    return frobenius(K - K0) / frobenius(K0)


def kernel_distance(K: torch.Tensor, K0: torch.Tensor) -> float:
    """1 - <K, K_0>_F / (|K|_F |K_0|_F): 0 for kernels equal up to scale."""
    return 1.0 - float((K * K0).sum()) / (frobenius(K) * frobenius(K0))


def centre(K: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T/n acting on both point axes (dims 0 and 1) of a kernel [n, n, ...]."""
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean((0, 1), keepdim=True)


def cka(K: torch.Tensor, K0: torch.Tensor) -> float:
    """Centred kernel alignment <HKH, HK_0H>_F / (|HKH|_F |HK_0H|_F): 1 for kernels equal up to scale and shifts."""
    a, b = centre(K), centre(K0)
    return float((a * b).sum()) / (frobenius(a) * frobenius(b))


def analytic_relu_network_kernel(model, points) -> torch.Tensor | None:
    """The frozen (infinite-width) NTK of a MetricModel's network output, out_scale^2 K_ReLU(x, x') delta_ef:
    [n, n, d_out, d_out], or None unless the net is a ReLU MLP in NTK parametrisation.

    K_ReLU is mflow.kernels.analytic.ReluNTK(depth, sigma_w, sigma_b) on the network's input features
    (chart or invariant). This describes the network output v = out_scale * net(x) only: how v enters
    g depends on the head (addfs: r(g) = r(g_FS) + v, so the metric-NTK is this kernel; multfs, matrixfs:
    a point-dependent linear map A(x) of v, Theta = A(x) K A(x')^T; free: a non-linear map; phifs:
    second derivatives of K), so the drift callback compares the network-output kernel with it.
    """
    from .kernels.analytic import ReluNTK
    from .models.mlp import Dense

    base = getattr(model, "base", model)  # a LinearizedModel: its frozen theta_0 network
    if not all(hasattr(base, a) for a in ("net", "inputs", "out_scale")):
        return None
    layers = list(base.net.net)
    dense = [m for m in layers if isinstance(m, Dense)]
    acts = [m for m in layers if not isinstance(m, Dense)]
    if not acts or not all(isinstance(a, torch.nn.ReLU) for a in acts) or any(d.parametrization != "ntk" for d in dense):
        return None
    d0 = dense[0]
    sigma_w = d0.w_scale * math.sqrt(d0.weight.shape[1])
    kernel = ReluNTK(depth=len(acts), sigma_w=sigma_w, sigma_b=d0.b_scale)
    z = ntk.as_points(points)[0]
    with torch.no_grad():
        x = base.inputs(z).to(torch.float64)
    K = base.out_scale**2 * kernel.block(x, x)  # [n, n]
    d_out = dense[-1].weight.shape[0]
    return K[:, :, None, None] * torch.eye(d_out, dtype=torch.float64, device=K.device)


def network_kernel(model, points, method: str = "auto") -> torch.Tensor:
    """Empirical NTK of the network output [n, n, d_out, d_out] (for a LinearizedModel: at theta_0, its constant kernel)."""
    if hasattr(model, "base") and hasattr(model, "theta0"):
        return ntk.output_ntk(ntk.network_output(model.base), model.theta0(), points, kind="full", method=method, module=model.base)
    return ntk.network_ntk(model, points, kind="full", method=method)


# ----------------------------------------------------------------------------- NTKDrift
class NTKDrift(L.Callback):
    """Tracks the empirical metric-NTK on a fixed probe set during fit (REFERENCE.md sec. 4).

    Probe: the first ``n_probe`` validation points, fixed at the start of fit and kept in the
    checkpoint. K_0 at fit start, K_t every ``every_n_steps`` optimizer steps, at the end of every
    epoch (so that the epoch's checkpoint holds it) and at the end of fit
    (``kind``: 'trace' [n, n], 'diagonal' [n, n, C] or 'full' [n, n, C, C], mflow.ntk.metric_ntk).
    Logged under ``ntk/``:
      relative_change   |K_t - K_0|_F / |K_0|_F
      kernel_distance   1 - <K_t, K_0>_F / (|K_t|_F |K_0|_F)
      cka               centred kernel alignment of K_t and K_0 (H = I - 11^T/n on the point axes)
      velocity          |K_t - K_prev|_F / |K_0|_F per optimizer step since the previous measurement
      analytic_distance |Theta_v - Theta_v^inf|_F / |Theta_v^inf|_F for the network-output kernel
                        Theta_v of a ReLU MLP in NTK parametrisation against its analytic frozen
                        kernel out_scale^2 K_ReLU delta_ef (see :func:`analytic_relu_network_kernel`:
                        this is the network's kernel, not the metric-NTK, for every head); absent otherwise.
    K_0, the last K, the probe and the series are the callback's state (saved in checkpoints, so a
    resumed fit continues the same series). At the end of fit it writes <default_root_dir>/<filename>.json
    (atomically) and <filename>.png, and logs the figure to W&B when the logger is a WandbLogger.
    """

    def __init__(
        self,
        n_probe: int = 64,
        every_n_steps: int = 50,
        kind: str = "trace",
        method: str = "auto",
        analytic: bool = True,
        max_bytes: int = ntk.DEFAULT_MAX_BYTES,
        filename: str = "ntk_drift",
    ):
        if kind not in ntk.KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {ntk.KINDS}")
        if method not in ntk.METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {ntk.METHODS}")
        if n_probe < 2 or every_n_steps < 1:
            raise ValueError(f"need n_probe >= 2 and every_n_steps >= 1, got {n_probe}, {every_n_steps}")
        self.n_probe, self.every_n_steps, self.kind, self.method = n_probe, every_n_steps, kind, method
        self.analytic, self.max_bytes, self.filename = analytic, max_bytes, filename
        self.probe: tuple | None = None
        self.K0: torch.Tensor | None = None
        self.K_prev: torch.Tensor | None = None
        self.prev_step: int | None = None
        self.series: list[dict] = []
        self._analytic_K: torch.Tensor | None = None
        self.active = True  # False for modules without a metric network (on_fit_start)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(n_probe=self.n_probe, kind=self.kind, filename=self.filename)

    # ------------------------------------------------------------------ measuring
    def _probe_points(self, trainer) -> tuple:
        dm = getattr(trainer, "datamodule", None)
        val = getattr(dm, "val", None)
        if val is None or len(val) < 2:
            raise ValueError("NTKDrift needs a datamodule with a validation split (.val CYPoints) of at least 2 points")
        p = val[: self.n_probe]
        return (p.z.clone(), p.patch.clone(), p.elim.clone())

    def kernel(self, pl_module) -> torch.Tensor:
        """K_t of the module's current metric model on the probe: on CPU, float64."""
        dev = pl_module.device
        pts = tuple(t.to(dev) for t in self.probe)
        K = ntk.metric_ntk(pl_module.model, pts, kind=self.kind, method=self.method, max_bytes=self.max_bytes)
        return K.detach().cpu()

    def _analytic_distance(self, pl_module) -> float | None:
        if not self.analytic:
            return None
        pts = tuple(t.to(pl_module.device) for t in self.probe)
        if self._analytic_K is None:
            K = analytic_relu_network_kernel(pl_module.model, pts)
            if K is None:
                self.analytic = False
                return None
            self._analytic_K = K.cpu()
        Kv = network_kernel(pl_module.model, pts, self.method).detach().cpu()
        return frobenius(Kv - self._analytic_K) / frobenius(self._analytic_K)

    def measure(self, trainer, pl_module) -> dict:
        """Compute K_t, append the drift measures to the series and log them; returns the entry."""
        t = time.perf_counter()
        step = int(trainer.global_step)
        K = self.kernel(pl_module)
        entry = {"step": step, "epoch": int(trainer.current_epoch)}
        if self.K0 is None:
            self.K0 = K
            entry.update(relative_change=0.0, kernel_distance=0.0, cka=1.0, velocity=None)
        else:
            entry.update(
                relative_change=relative_change(K, self.K0),
                kernel_distance=kernel_distance(K, self.K0),
                cka=cka(K, self.K0),
                velocity=(frobenius(K - self.K_prev) / frobenius(self.K0) / (step - self.prev_step))
                if self.K_prev is not None and step > self.prev_step
                else None,
            )
        entry["analytic_distance"] = self._analytic_distance(pl_module)
        entry["norm"] = frobenius(K)
        entry["seconds"] = time.perf_counter() - t
        self.K_prev, self.prev_step = K, step
        self.series.append(entry)
        metrics = {f"ntk/{k}": float(v) for k, v in entry.items() if k not in ("step", "epoch", "seconds") and v is not None}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
        return entry

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        self.active = isinstance(getattr(pl_module, "model", None), torch.nn.Module)
        if not self.active:
            rank_zero_warn(
                f"NTKDrift does nothing for {type(pl_module).__name__}: it watches the NTK of a trained metric "
                "network (.model, e.g. NetworkFlow), and a frozen-kernel flow's kernel cannot drift"
            )
            return
        if self.probe is None:
            self.probe = self._probe_points(trainer)
        if self.K0 is None:
            if trainer.global_step > 0:
                rank_zero_warn(
                    f"NTKDrift starts at step {trainer.global_step} without a saved K_0 (resumed from a checkpoint "
                    "written without this callback): K_0 is the kernel now, not at initialisation"
                )
            self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active:
            return
        step = trainer.global_step
        epoch_end = batch_idx + 1 >= trainer.num_training_batches  # measured before the epoch's checkpoint
        if (step % self.every_n_steps == 0 or epoch_end) and step != self.prev_step:
            self.measure(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.active or self.K0 is None:
            return
        if trainer.global_step != self.prev_step:
            self.measure(trainer, pl_module)
        if trainer.is_global_zero:
            self.write(Path(trainer.default_root_dir), trainer)

    def summary(self) -> dict:
        """What the JSON holds: settings, probe size, K_0 norm and the series."""
        return {
            "kind": self.kind, "method": self.method, "n_probe": None if self.probe is None else len(self.probe[0]),
            "every_n_steps": self.every_n_steps, "K0_norm": None if self.K0 is None else frobenius(self.K0),
            "series": self.series,
        }

    def write(self, root: Path, trainer=None) -> tuple[Path, Path]:
        """<root>/<filename>.json (atomic) and <root>/<filename>.png; the PNG is logged to W&B if possible."""
        js = write_json(root / f"{self.filename}.json", self.summary())
        png = root / f"{self.filename}.png"
        atomic_write(png, lambda tmp: drift_figure(self.series, tmp, self.kind))
        if trainer is not None:
            _log_image(trainer, "ntk/drift", png)
        return js, png

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        return {
            "probe": None if self.probe is None else list(self.probe),
            "K0": self.K0, "K_prev": self.K_prev, "prev_step": self.prev_step,
            "series": json.loads(json.dumps(self.series)),
        }

    def load_state_dict(self, state: dict) -> None:
        self.probe = None if state.get("probe") is None else tuple(state["probe"])
        self.K0, self.K_prev, self.prev_step = state.get("K0"), state.get("K_prev"), state.get("prev_step")
        self.series = list(state.get("series", []))


def drift_figure(series: list[dict], path, kind: str = "trace") -> None:
    """Drift curves against optimizer step: relative change, kernel distance, 1 - CKA (left); velocity and
    the distance to the analytic kernel (right, log scale). Written as PNG to path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("relative_change", "|K_t - K_0| / |K_0|"), ("kernel_distance", "kernel distance"), ("cka", "1 - CKA")):
        pts = [(e["step"], (1 - e[key]) if key == "cka" else e[key]) for e in series]
        pts = [(s, y) for s, y in pts if y > 0]
        if pts:
            a.plot(*zip(*pts), marker="o", ms=3, label=label)
    a.set_yscale("log")
    a.set_xlabel("optimizer step")
    a.set_title(f"metric-NTK drift ({kind})")
    if a.get_legend_handles_labels()[0]:
        a.legend()
    for key, label in (("velocity", "velocity / |K_0| per step"), ("analytic_distance", "network kernel vs analytic")):
        pts = [(e["step"], e[key]) for e in series if e.get(key) is not None and e[key] > 0]
        if pts:
            b.plot(*zip(*pts), marker="o", ms=3, label=label)
    b.set_yscale("log")
    b.set_xlabel("optimizer step")
    if b.get_legend_handles_labels()[0]:
        b.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _log_image(trainer, key: str, path: Path) -> None:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            lg.experiment.log({key: wandb.Image(str(path))})


# ----------------------------------------------------------------------------- SigmaGain
SPLITS = ("train", "val", "test")


class SigmaGain(L.Callback):
    """Logs sigma and the gain sigma(initial metric) / sigma(current metric) on train / val / test at every
    validation end (``gain/<split>``, ``sigma/<split>``).

    ``n_train`` / ``n_val`` / ``n_test``: points of each split used (the first ones; None = all). On a
    whole split the initial sigma is NetworkFlow's buffer ``initial_sigma``; on a subset it is
    measured at the start of fit (saved in the checkpoint with this callback's state). Train defaults to
    2000 points to stay cheap.
    """

    def __init__(self, n_train: int | None = 2000, n_val: int | None = None, n_test: int | None = None):
        for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n is not None and n < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {n}")
        self.limits = {"train": n_train, "val": n_val, "test": n_test}
        self.initial: dict[str, float] = {}  # sigma at initialisation on the subsets

    def _subset(self, points, split):
        n = self.limits[split]
        return points if n is None or n >= len(points) else points[:n]

    def _splits(self, trainer) -> dict:
        dm = trainer.datamodule
        return {s: getattr(dm, s, None) for s in SPLITS}

    def on_fit_start(self, trainer, pl_module) -> None:
        for s, pts in self._splits(trainer).items():
            if pts is None or len(pts) == 0 or s in self.initial or self._subset(pts, s) is pts:
                continue
            if trainer.global_step > 0:
                rank_zero_warn(f"SigmaGain: no initial sigma for the {s} subset in the checkpoint: its gain is not logged")
                continue
            self.initial[s] = float(pl_module.sigma_on(self._subset(pts, s)))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {}
        for i, (s, pts) in enumerate(self._splits(trainer).items()):
            if pts is None or len(pts) == 0:
                continue
            sub = self._subset(pts, s)
            init = self.initial.get(s) if sub is not pts else float(pl_module.initial_sigma[i])
            sigma = float(pl_module.sigma_on(sub))
            metrics[f"sigma/{s}"] = sigma
            if init is not None and math.isfinite(init) and sigma > 0:
                metrics[f"gain/{s}"] = init / sigma
        for k, v in metrics.items():
            pl_module.log(k, v, on_step=False, on_epoch=True)

    def state_dict(self) -> dict:
        return {"initial": dict(self.initial)}

    def load_state_dict(self, state: dict) -> None:
        self.initial = dict(state.get("initial", {}))
