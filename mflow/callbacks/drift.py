"""NTKDrift: the empirical metric-NTK K_t (eq. 2.7, mflow.ntk) on a fixed probe set during training, against K_0
at the start of fit: relative change, kernel distance, centred kernel alignment, kernel velocity, and the
distance of the network-output kernel to the analytic frozen ReLU NTK where that exists (mflow.ntk.drift)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from mflow import ntk
from mflow.choices import NTKKind, NTKMethod
from mflow.io import pyplot, write_json, write_png
from mflow.ntk.drift import analytic_relu_network_kernel, cka, frobenius, kernel_distance, network_kernel, relative_change
from mflow.ntk.plan import check_kind_method


# ----------------------------------------------------------------------------- NTKDrift
class NTKDrift(L.Callback):
    """Tracks the empirical metric-NTK on a fixed probe set during fit (docs/conventions.md section 9).

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
        every_n_steps: int = 1000,
        kind: NTKKind = "trace",
        method: NTKMethod = "auto",
        analytic: bool = True,
        max_bytes: int = ntk.DEFAULT_MAX_BYTES,
        filename: str = "ntk_drift",
    ):
        check_kind_method(kind, method)
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
    def check_data(self, datamodule) -> None:
        """Refuse a datamodule without the validation points the probe needs (train.py asks before training)."""
        val = getattr(datamodule, "val", None)
        if val is None or len(val) < 2:
            n = "no" if val is None else len(val)
            raise ValueError(f"NTKDrift needs at least 2 validation points for its probe (n_probe={self.n_probe}); the "
                             f"val split has {n}: raise --data.n_points or --data.val_fraction, or drop the callback")

    def _probe_points(self, trainer) -> tuple:
        dm = getattr(trainer, "datamodule", None)
        self.check_data(dm)
        p = dm.val[: self.n_probe]
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
        png = write_png(root / f"{self.filename}.png", drift_figure(self.series, self.kind), dpi=100)
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


def drift_figure(series: list[dict], kind: str = "trace"):
    """Drift curves against optimizer step: relative change, kernel distance, 1 - CKA (left); velocity and
    the distance to the analytic kernel (right, log scale): a matplotlib figure."""
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 4))
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
    return fig


def _log_image(trainer, key: str, path: Path) -> None:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            lg.experiment.log({key: wandb.Image(str(path))})
