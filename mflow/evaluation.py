"""Evaluation of trained metric flows (networks and frozen kernels) on train, test and noised points.

``python evaluate.py --ckpt PATH [PATH ...]`` (``main``) loads each mflow checkpoint, restores its manifold
and data identity from the checkpoint, and measures, for the model and for the FS metric on the same points
(gain = sigma_FS / sigma_model, REFERENCE.md section 1):

* its train points (networks: the train split re-created from the data settings saved in the checkpoint;
  kernel flows: the train points stored in the flow's state);
* fresh test points (Shiffman-Zelditch, a seed that is not the data seed), with their FS distance to the
  nearest train point;
* noised points at increasing distance from the train set (mflow.noise): the paper's Gaussian noise on
  the homogeneous coordinates and/or points moved along X to requested FS distances; per level the mean
  shortest FS distance to the train set, sigma and gain (paper Fig. 3 left);
* the Ricci measure (REFERENCE.md section 1) on train and test points where the model has second
  derivatives (networks; not the kernel flows);

and, on request, the distance scaling of Fig. 3 right (``distance_scaling``: min / mean / max
nearest-neighbour distance against N with the power-law fit mean = a N^b, eq. 3.6) and the paper's
extrapolation (``points_needed``: the N at which fresh test points would reach a target gain).

Results: <out>/eval.json (atomic), gain_vs_distance.png (and distance_scaling.png), logged to W&B when a
run is active; nothing is written when an input is refused (all checkpoints are checked first).

Nearest train point: exact, with a k-d tree on the embedding z -> u u^H (u = z/|z|) of P^n into Hermitian
matrices, where |u u^H - v v^H|_F^2 = 2 sin^2 d_FS(u, v) is increasing in the FS distance, so the
Euclidean nearest neighbour is the FS-nearest one; its distance is then recomputed with
mflow.geometry.distance.fs_distance (exact near 0). Same answer as nearest_neighbours (brute force),
much faster for noised points near the train set.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .geometry import curvature, volume
from .geometry.distance import fs_distance
from .geometry.hypersurface import CDTYPE, Hypersurface, surface_from_args
from .geometry.points import CYPoints
from .io import atomic_write, write_json

EVAL_FORMAT = 1
PAPER_FIT = (0.968, -0.184)  # eq. 3.6: mean nearest-neighbour FS distance = 0.968 N^-0.184
DEFAULT_VARIANCES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_DISTANCES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
DEFAULT_SCALING_N = (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
DEFAULT_SEED = 7_654_321
KINDS = {"network": "mflow.modules.NetworkFlow", "kernel_flow": "mflow.kernel_flow.KernelFlow",
         "kernel": "mflow.kernel_flow.KernelFlow"}
TRAIN_RESIDUAL_TOL = 1e-6


class EvaluationError(ValueError):
    """An input evaluate.py refuses (missing / corrupt / foreign checkpoint, wrong manifold, bad option)."""


# ============================================================================ loading
@dataclass
class LoadedCheckpoint:
    """An mflow checkpoint, checked and restored: the module (eval mode, CPU) and the identity of its data."""

    path: Path
    kind: str
    module: torch.nn.Module
    surface: Hypersurface
    hparams: dict
    data_hparams: dict | None
    epoch: int | None = None
    global_step: int | None = None
    datamodule: object = field(default=None, repr=False)

    @property
    def label(self) -> str:
        hp = self.hparams
        if self.kind == "network":
            what = f"{hp.get('head', '?')} {hp.get('depth', '?')}x{hp.get('width', '?')} {hp.get('activation', '')}".strip()
        else:
            what = f"{hp.get('kernel', '?')} kernel"
        run = self.path.parent.parent.name if self.path.parent.name == "checkpoints" else self.path.parent.name
        return f"{what} ({run}/{self.path.name})"

    @property
    def has_derivatives(self) -> bool:
        return bool(getattr(self.module, "has_derivatives", True)) and getattr(self.module, "model", None) is not None


def _import_class(path: str):
    if not path.startswith("mflow."):
        raise EvaluationError(f"checkpoint names the model class {path!r}, which is not an mflow class")
    mod, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise EvaluationError(f"checkpoint names the model class {path!r}, which this mflow does not have ({e})") from None
    import lightning as L

    if not (inspect.isclass(cls) and issubclass(cls, L.LightningModule)):
        raise EvaluationError(f"checkpoint names {path!r}, which is not a LightningModule")
    return cls


def read_checkpoint(path) -> dict:
    """torch.load with clear errors for a missing, unreadable or truncated file."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise EvaluationError(f"checkpoint {path} is not a file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - zip / pickle errors of every kind mean the same thing here
        raise EvaluationError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}): the file is corrupt or "
            "truncated (a run killed while writing it?) or not a torch checkpoint"
        ) from None
    if not isinstance(ck, dict):
        raise EvaluationError(f"{path} holds a {type(ck).__name__}, not a Lightning checkpoint")
    return ck


def load_checkpoint(path, expected_surface: Hypersurface | None = None) -> LoadedCheckpoint:
    """Read and check an mflow checkpoint and restore its module (on the CPU, eval mode).

    Refused with EvaluationError: missing / corrupt file; no 'mflow' section (not mflow's); another
    checkpoint format; a kind or class this mflow does not know; a manifold that does not match the
    checkpoint's own settings, its data settings, or ``expected_surface`` (the points requested).
    """
    from .modules import CHECKPOINT_FORMAT

    path = Path(path)
    ck = read_checkpoint(path)
    meta = ck.get("mflow")
    if not isinstance(meta, dict):
        raise EvaluationError(
            f"{path} is not an mflow checkpoint (no 'mflow' section): was it written by another program "
            "or an mflow older than checkpoint format 1?"
        )
    fmt = meta.get("format")
    if fmt != CHECKPOINT_FORMAT:
        age = "newer" if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT else "older or unknown"
        raise EvaluationError(
            f"{path} has mflow checkpoint format {fmt!r} ({age}); this mflow reads format {CHECKPOINT_FORMAT}: "
            "use the mflow version that wrote it"
        )
    kind = meta.get("kind")
    hp = ck.get("hyper_parameters")
    if not isinstance(hp, dict):
        raise EvaluationError(f"{path} has no hyper_parameters: the model cannot be rebuilt")
    class_path = hp.get("_class_path") or KINDS.get(kind)
    if class_path is None:
        raise EvaluationError(f"{path} holds a model of kind {kind!r}, which this mflow does not know ({sorted(KINDS)})")
    if kind in KINDS and KINDS[kind] != class_path:
        raise EvaluationError(f"{path}: the 'mflow' section says kind {kind!r} but the model class is {class_path!r}")
    cls = _import_class(class_path)
    kwargs = {k: v for k, v in hp.items() if not k.startswith("_")}
    if class_path == KINDS["network"] and "seed" in kwargs:  # written before NetworkFlow's seed became init_seed
        kwargs["init_seed"] = kwargs.pop("seed")
    try:
        surface = surface_from_args(kwargs.get("manifold", "fermat_quintic"), kwargs.get("psi", 0.0),
                                    kwargs.get("ambient_n", 4), kwargs.get("surface_seed", 0))
    except ValueError as e:
        raise EvaluationError(f"{path}: the manifold in its settings cannot be built: {e}") from None
    saved = meta.get("surface") or {}
    if meta.get("fingerprint") != surface.fingerprint():
        raise EvaluationError(
            f"{path}: the checkpoint was written for manifold {saved.get('name')!r} ({meta.get('fingerprint')}) but its "
            f"model settings describe {surface.name!r} ({surface.fingerprint()}): wrong manifold, refusing it"
        )
    if expected_surface is not None and expected_surface.fingerprint() != surface.fingerprint():
        raise EvaluationError(
            f"{path} is a model of {surface.name!r} ({surface.fingerprint()}) but the requested points are on "
            f"{expected_surface.name!r} ({expected_surface.fingerprint()}): wrong manifold"
        )
    data_hp = ck.get("datamodule_hyper_parameters")
    data_hp = {k: v for k, v in data_hp.items() if not k.startswith("_")} if isinstance(data_hp, dict) else None
    if data_hp is not None:
        try:
            ds = surface_from_args(data_hp.get("manifold", "fermat_quintic"), data_hp.get("psi", 0.0),
                              data_hp.get("ambient_n", 4), data_hp.get("surface_seed", 0))
        except ValueError as e:
            raise EvaluationError(f"{path}: the data settings name a manifold that cannot be built: {e}") from None
        if ds.fingerprint() != surface.fingerprint():
            raise EvaluationError(
                f"{path}: the model is for {surface.name!r} but its data settings are for {ds.name!r}: wrong manifold"
            )
    try:
        with torch.random.fork_rng():
            module = cls(**kwargs)
        module.on_load_checkpoint(ck)
        module.load_state_dict(ck["state_dict"], strict=True)
    except EvaluationError:
        raise
    except Exception as e:  # noqa: BLE001 - a checkpoint of another mflow version fails in many ways
        raise EvaluationError(f"{path}: the model cannot be restored ({type(e).__name__}: {str(e)[:300]})") from None
    module.eval()
    return LoadedCheckpoint(path, kind, module, surface, hp, data_hp, ck.get("epoch"), ck.get("global_step"))


def prepare_train_data(ck: LoadedCheckpoint) -> None:
    """Check (cheaply, no sampling) that the train points can be restored; for networks build the datamodule."""
    if hasattr(ck.module, "train_z"):  # kernel flows carry their train points
        if ck.module.train_z.shape[0] == 0:
            raise EvaluationError(f"{ck.path}: the kernel flow holds no train points (it was never fitted)")
        return
    if ck.data_hparams is None:
        raise EvaluationError(
            f"{ck.path} has no data settings (datamodule_hyper_parameters): its train points cannot be re-created"
        )
    from .data.datamodule import CYDataModule

    allowed = set(inspect.signature(CYDataModule.__init__).parameters) - {"self"}
    kw = {k: v for k, v in ck.data_hparams.items() if k in allowed}
    if kw.get("path") is not None and not Path(kw["path"]).exists():
        raise EvaluationError(f"{ck.path}: its train data file {kw['path']} does not exist any more")
    try:
        dm = CYDataModule(**kw)
    except ValueError as e:
        raise EvaluationError(f"{ck.path}: its data settings are refused: {e}") from None
    cp = dm.cache_path
    if cp is not None and not cp.exists():
        dm.cache_dir = None  # sample in memory: evaluation writes nothing outside its output folder
    ck.datamodule = dm


def train_points(ck: LoadedCheckpoint) -> CYPoints:
    """The model's train points (from the checkpoint for kernel flows, re-created from the data settings otherwise)."""
    m = ck.module
    if hasattr(m, "train_z"):
        pts = CYPoints(m.train_z.cpu(), m.train_patch.cpu(), m.train_elim.cpu(), m.train_pullback.cpu(),
                       m.train_omega_sq.cpu(), m.train_g_fs.cpu(), m.train_weights.cpu())
    else:
        if ck.datamodule is None:
            prepare_train_data(ck)
        try:
            ck.datamodule.setup("fit")
        except Exception as e:  # noqa: BLE001
            raise EvaluationError(f"{ck.path}: the train points cannot be re-created ({type(e).__name__}: {e})") from None
        if ck.datamodule.surface.fingerprint() != ck.surface.fingerprint():
            raise EvaluationError(f"{ck.path}: the data are on {ck.datamodule.surface.name}, the model on {ck.surface.name}")
        pts = ck.datamodule.train
    res = ck.surface.residual(pts.z)
    if len(res) and float(res.max()) > TRAIN_RESIDUAL_TOL:
        raise EvaluationError(f"{ck.path}: the train points are not on {ck.surface.name} (relative |p| {float(res.max()):.2e})")
    return pts


def load_test_points(path, surface: Hypersurface | None = None) -> tuple[CYPoints, Hypersurface]:
    """Test points from an mflow point-set file (or a cymetric dataset.npz, given the surface)."""
    from .data.pointset import PointSetError, is_cymetric_file, load_cymetric, load_pointset

    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"test data {path} does not exist")
    try:
        if is_cymetric_file(path):
            if surface is None:
                raise EvaluationError(f"{path} is a cymetric file (no manifold recorded): it needs the checkpoint's manifold")
            return load_cymetric(path, surface), surface
        ps = load_pointset(path, surface)
        return ps.points, ps.surface
    except PointSetError as e:
        raise EvaluationError(f"test data {path}: {e}") from None


# ============================================================================ measures
def sigma_fs(points: CYPoints) -> float:
    return float(volume.sigma(points.weights, volume.real_det(points.g_fs), points.omega_sq))


def sigma_model(module, points: CYPoints) -> float:
    return float(module.sigma_on(points))


def ricci_measures(ck: LoadedCheckpoint, points: CYPoints, k: int) -> dict | None:
    """Ricci measure of the model and of the FS metric on the first k points (None without second derivatives)."""
    if k <= 0 or not ck.has_derivatives or len(points) == 0:
        return None
    p = points[:k]
    model = ck.module.model
    if next(model.parameters(), torch.zeros(())).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # the curvature code builds its tangent directions on the CPU
    out = {"n": len(p)}
    for s in (ck.surface, getattr(ck.module, "surface", ck.surface)):
        s.gradient(p.z[:1])  # fills the surface's cached derivative terms outside torch.func's transforms
    for name, fn in (("model", model), ("fs", curvature.fs_metric_fn(ck.surface))):
        with torch.enable_grad():
            ric = curvature.ricci_form(fn, p.z, p.patch, p.elim, p.pullback)
            g = fn(p.z, p.patch, p.elim)
        ric, g = ric.detach(), g.detach()
        scalar = curvature.ricci_scalar(g, ric)
        out[name] = float(curvature.ricci_measure(p.weights, volume.real_det(g), p.omega_sq, scalar, ck.surface.dim))
    return out


def _embed(z: torch.Tensor) -> np.ndarray:
    """u u^H as a real vector (Frobenius norm kept): [N, n+1] -> [N, (n+1)^2]."""
    u = z.to(CDTYPE) / torch.linalg.vector_norm(z.to(CDTYPE), dim=-1, keepdim=True)
    n1 = u.shape[-1]
    P = u[:, :, None] * u.conj()[:, None, :]
    iu = torch.triu_indices(n1, n1, 1)
    off = P[:, iu[0], iu[1]] * math.sqrt(2.0)
    return torch.cat([P.diagonal(dim1=1, dim2=2).real, off.real, off.imag], 1).numpy()


class TrainIndex:
    """Exact FS-nearest train point of query points (k-d tree on the embedding u u^H, module doc)."""

    def __init__(self, z: torch.Tensor):
        from scipy.spatial import cKDTree

        self.z = z.to(CDTYPE)
        self.tree = cKDTree(_embed(self.z))

    def query(self, q: torch.Tensor, upper: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(FS distance [N], index [N]) of each query's nearest train point.

        upper [N]: a known FS distance to some train point (e.g. the one a noised point came from), which
        bounds the search (much faster for points near the train set); the answer is still exact.
        """
        E = _embed(q)
        if upper is None:
            _, idx = self.tree.query(E, k=1)
        else:
            bound = (math.sqrt(2.0) * torch.sin(upper.clamp(max=math.pi / 2)) * (1 + 1e-9) + 1e-15).numpy()
            idx = np.empty(len(E), dtype=np.int64)
            # cKDTree takes one scalar bound: query in groups of similar bounds
            order = np.argsort(bound)
            for chunk in np.array_split(order, max(1, min(32, len(order) // 256))):
                if len(chunk) == 0:
                    continue
                _, i = self.tree.query(E[chunk], k=1, distance_upper_bound=float(bound[chunk].max()))
                idx[chunk] = i
            missing = idx >= len(self.z)
            if missing.any():  # nothing within the bound (cannot happen when the bound is attained): search fully
                _, idx[missing] = self.tree.query(E[missing], k=1)
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return fs_distance(q.to(CDTYPE), self.z[idx]), idx

    def self_query(self) -> torch.Tensor:
        """FS distance from each indexed point to its nearest OTHER indexed point: [N]."""
        _, idx = self.tree.query(self.tree.data, k=2)
        n = torch.arange(len(self.z))
        i0, i1 = torch.as_tensor(idx[:, 0]), torch.as_tensor(idx[:, 1])
        other = torch.where(i0 == n, i1, i0)
        return fs_distance(self.z, self.z[other])


def _stats(d: torch.Tensor) -> dict:
    d = d.double()
    if len(d) == 0:
        return {"n": 0, "min": None, "mean": None, "median": None, "max": None}
    return {"n": len(d), "min": float(d.min()), "mean": float(d.mean()), "median": float(d.median()), "max": float(d.max())}


def _measure(module, points: CYPoints) -> dict:
    s_fs, s = sigma_fs(points), sigma_model(module, points)
    return {"n": len(points), "sigma_fs": s_fs, "sigma": s, "gain": s_fs / s if s > 0 else float("inf")}


# ============================================================================ one checkpoint
def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda was asked for but CUDA is not available")
    return torch.device(device)


def _place(ck: LoadedCheckpoint, device: torch.device, probe: CYPoints) -> str:
    """Move a network to the device if its forward works there (kernel flows stay on the CPU)."""
    if device.type == "cpu" or hasattr(ck.module, "train_z"):
        return "cpu"
    try:
        ck.module.to(device)
        ck.module.predict_metric(probe[:2])
        return str(device)
    except Exception as e:  # noqa: BLE001 - e.g. geometry code that builds CPU tensors
        print(f"[mflow] evaluate: the model does not run on {device} ({type(e).__name__}: {str(e)[:120]}); using the CPU")
        ck.module.to("cpu")
        return "cpu"


def evaluate_checkpoint(
    ck: LoadedCheckpoint,
    test: CYPoints,
    *,
    seed: int,
    mode: str = "both",
    variances=DEFAULT_VARIANCES,
    distances=DEFAULT_DISTANCES,
    n_noise: int = 1000,
    n_distance: int = 2000,
    ricci_points: int = 500,
    keep_chart: bool = False,
    device: torch.device = torch.device("cpu"),
    log=print,
) -> dict:
    """All measures of one checkpoint (module doc); returns its eval.json section."""
    from . import noise

    t0 = time.perf_counter()
    timings = {}
    train = train_points(ck)
    timings["train_points"] = time.perf_counter() - t0
    used = _place(ck, device, train)
    index = TrainIndex(train.z)
    out = {
        "path": str(ck.path), "label": ck.label, "kind": ck.kind,
        "class": ck.hparams.get("_class_path") or KINDS.get(ck.kind),
        "manifold": {"name": ck.surface.name, "params": ck.surface.params, "fingerprint": ck.surface.fingerprint()},
        "model": {k: v for k, v in ck.hparams.items() if not k.startswith("_")},
        "data": ck.data_hparams, "epoch": ck.epoch, "global_step": ck.global_step, "device": used,
    }
    t = time.perf_counter()
    out["train"] = _measure(ck.module, train)
    out["train"]["ricci"] = ricci_measures(ck, train, ricci_points)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    out["test"] = _measure(ck.module, test)
    out["test"]["seed"] = seed
    sub = test[: min(n_distance, len(test))] if n_distance > 0 else test[:0]
    out["test"]["distance_to_train"] = _stats(index.query(sub.z)[0]) if len(sub) else _stats(torch.zeros(0))
    out["test"]["ricci"] = ricci_measures(ck, test, ricci_points)
    timings["test"] = time.perf_counter() - t

    # the same train points are noised at every level, so that the curve is smooth in the level
    gen = torch.Generator().manual_seed(seed + 1)
    rows = torch.randperm(len(train), generator=gen)[: min(n_noise, len(train))]
    base = train[rows]
    noised = {"n_points": len(base), "gaussian": [], "manifold": []}
    if mode in ("gaussian", "both"):
        t = time.perf_counter()
        for k, v in enumerate(variances):
            npts = noise.gaussian_noised(ck.surface, base, float(v), torch.Generator().manual_seed(seed + 100 + k), keep_chart)
            d, _ = index.query(npts.points.z, upper=npts.offset)
            entry = {"variance": float(v), **_measure(ck.module, npts.points), "distance_to_train": _stats(d),
                     "distance_to_origin": _stats(npts.offset),
                     "residual": {"mean": float(npts.residual.mean()), "max": float(npts.residual.max())},
                     "chart_changed": float(((npts.points.patch != base.patch) | (npts.points.elim != base.elim)).double().mean())}
            noised["gaussian"].append(entry)
        timings["gaussian"] = time.perf_counter() - t
    if mode in ("manifold", "both"):
        t = time.perf_counter()
        for k, dist in enumerate(distances):
            npts = noise.manifold_noised(ck.surface, base, float(dist), torch.Generator().manual_seed(seed + 200 + k))
            if len(npts.points) == 0:
                noised["manifold"].append({"distance": float(dist), "n": 0, "dropped": npts.dropped})
                continue
            d, _ = index.query(npts.points.z, upper=npts.offset)
            entry = {"distance": float(dist), **_measure(ck.module, npts.points), "dropped": npts.dropped,
                     "distance_to_train": _stats(d), "distance_to_origin": _stats(npts.offset),
                     "residual": {"max": float(npts.residual.max())}}
            noised["manifold"].append(entry)
        timings["manifold"] = time.perf_counter() - t
    out["noised"] = noised
    timings["total"] = time.perf_counter() - t0
    out["seconds"] = timings
    return out


def gain_curve(result: dict, mode: str = "gaussian") -> tuple[np.ndarray, np.ndarray]:
    """(mean shortest distance to the train set, gain) of one checkpoint's noised levels, by distance."""
    pts = [(e["distance_to_train"]["mean"], e["gain"]) for e in result["noised"].get(mode, []) if e.get("n")]
    pts = sorted(p for p in pts if p[0] is not None and p[0] > 0 and np.isfinite(p[1]) and p[1] > 0)
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


# ============================================================================ distance scaling (Fig. 3 right)
def fit_power_law(n, y) -> tuple[float, float]:
    """Least-squares fit y = a n^b in log-log: -> (a, b)."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if len(n) < 2 or np.any(n <= 0) or np.any(y <= 0):
        raise ValueError("a power-law fit needs at least 2 points with n > 0 and y > 0")
    b, loga = np.polyfit(np.log(n), np.log(y), 1)
    return float(np.exp(loga)), float(b)


def distance_scaling(
    surface: Hypersurface, ns=DEFAULT_SCALING_N, seed: int = 0, budget_s: float = 60.0, min_sizes: int = 3, log=print
) -> dict:
    """min / mean / max nearest-neighbour FS distance among N Shiffman-Zelditch points, for N in ns while
    the next size is predicted to fit in budget_s (the first min_sizes always run), and the fit
    mean = a N^b (eq. 3.6; paper 0.968 N^-0.184; theory exponent -1/(real dimension of X))."""
    from .geometry.sampling import sample_points

    rows, t_start = [], time.perf_counter()
    ns = sorted(int(n) for n in ns)
    for i, n in enumerate(ns):
        if i >= min_sizes and rows:
            prev = rows[-1]
            expo = 1.3
            if len(rows) >= 2 and rows[-2]["seconds"] > 0.05:
                expo = max(1.0, math.log(prev["seconds"] / rows[-2]["seconds"]) / math.log(prev["n"] / rows[-2]["n"]))
            predicted = prev["seconds"] * (n / prev["n"]) ** expo
            if time.perf_counter() - t_start + predicted > budget_s:
                break
        t = time.perf_counter()
        z = sample_points(surface, n, torch.Generator().manual_seed(seed + i))
        d = TrainIndex(z).self_query()
        row = {"n": n, **{k: v for k, v in _stats(d).items() if k != "n"}, "seconds": time.perf_counter() - t}
        rows.append(row)
        log(f"[mflow] distance scaling: N={n}: mean nearest-neighbour distance {row['mean']:.4f} ({row['seconds']:.1f} s)")
    out = {
        "manifold": surface.name, "seed": seed, "budget_seconds": budget_s, "rows": rows,
        "paper_fit": {"a": PAPER_FIT[0], "b": PAPER_FIT[1]},
        "theory_exponent": -1.0 / (2 * surface.dim),
    }
    if len(rows) >= 2:
        a, b = fit_power_law([r["n"] for r in rows], [r["mean"] for r in rows])
        out["fit"] = {"a": a, "b": b}
        for key in ("min", "max"):
            ak, bk = fit_power_law([r["n"] for r in rows], [r[key] for r in rows])
            out[f"fit_{key}"] = {"a": ak, "b": bk}
    return out


def distance_for_gain(distances, gains, target_gain: float) -> tuple[float, bool]:
    """Mean shortest distance at which a gain-versus-distance curve reaches target_gain: -> (d, extrapolated).

    Interpolates log gain against log distance (piecewise linear). Going out from the smallest distance,
    the first crossing of the target (the curve falling through it) is returned. A target above every gain
    of the curve is extrapolated along its first segment towards d -> 0, one below every gain along its last
    segment (extrapolated=True); d = 0 when the curve does not rise towards small distances (the target
    cannot be reached: infinitely many points).
    """
    d, g = np.asarray(distances, dtype=float), np.asarray(gains, dtype=float)
    keep = np.isfinite(d) & np.isfinite(g) & (d > 0) & (g > 0)
    d, g = d[keep], g[keep]
    if len(d) < 2:
        raise ValueError("a gain curve needs at least 2 levels with positive distance and gain")
    if not target_gain > 0:
        raise ValueError(f"the target gain must be > 0, got {target_gain}")
    order = np.argsort(d)
    x, y, Y = np.log(d[order]), np.log(g[order]), math.log(target_gain)
    for i in range(len(x) - 1):
        if y[i] >= Y >= y[i + 1] and y[i] != y[i + 1]:
            return float(np.exp(x[i] + (Y - y[i]) * (x[i + 1] - x[i]) / (y[i + 1] - y[i]))), False
        if y[i] == Y:
            return float(np.exp(x[i])), False
    if Y > y.max() or Y > y[0]:  # towards small distances along the first segment
        s = (y[1] - y[0]) / (x[1] - x[0])
        if s >= 0:
            return 0.0, True
        return float(np.exp(x[0] + (Y - y[0]) / s)), True
    s = (y[-1] - y[-2]) / (x[-1] - x[-2])  # target below the whole curve: towards large distances
    if s >= 0:
        return float(np.exp(x[-1])), True
    return float(np.exp(x[-1] + (Y - y[-1]) / s)), True


def points_needed(distances, gains, target_gain: float, a: float, b: float) -> dict:
    """The paper's extrapolation: the number of sampled points N whose mean nearest-neighbour distance
    a N^b equals the distance at which the gain curve reaches target_gain (N = (d / a)^(1/b))."""
    if not (a > 0 and b < 0):
        raise ValueError(f"need a distance fit a N^b with a > 0 and b < 0, got a={a}, b={b}")
    d, extrapolated = distance_for_gain(distances, gains, target_gain)
    n = math.inf if d <= 0 else (d / a) ** (1.0 / b)
    return {"target_gain": float(target_gain), "distance": d, "n_points": n, "extrapolated": extrapolated,
            "fit": {"a": a, "b": b}}


# ============================================================================ plots
def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_gain_vs_distance(results: list[dict]):
    """Gain against mean shortest FS distance to the train set, every checkpoint (Fig. 3 left), log-log."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(results):
        c = colors[i % len(colors)]
        for mode, style, marker in (("gaussian", "-", "o"), ("manifold", "--", "s")):
            d, g = gain_curve(r, mode)
            if len(d):
                ax.plot(d, g, style, marker=marker, color=c, ms=4,
                        label=f"{r['label']}: {'Gaussian noise' if mode == 'gaussian' else 'on X'}")
        td = r["test"].get("distance_to_train", {}).get("mean")
        if td and r["test"]["gain"] > 0:
            ax.plot([td], [r["test"]["gain"]], "*", color=c, ms=12, label=f"{r['label']}: fresh test points")
        if r["train"]["gain"] > 0 and np.isfinite(r["train"]["gain"]):
            ax.axhline(r["train"]["gain"], color=c, ls=":", lw=1)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean shortest FS distance to the train set")
    ax.set_ylabel(r"gain $\sigma_{FS} / \sigma$")
    ax.set_title("Gain vs distance to the train set (dotted: train points)", fontsize=10)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_distance_scaling(scaling: dict):
    """min / mean / max nearest-neighbour distance against N with the fits (Fig. 3 right), log-log."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    rows = scaling["rows"]
    n = np.array([r["n"] for r in rows], dtype=float)
    for key, m in (("max", "^"), ("mean", "o"), ("min", "v")):
        ax.plot(n, [r[key] for r in rows], m, label=key)
    grid = np.geomspace(n.min(), n.max() * 10, 50)
    if "fit" in scaling:
        a, b = scaling["fit"]["a"], scaling["fit"]["b"]
        ax.plot(grid, a * grid**b, "-", label=f"fit {a:.3f} N^{b:.3f}")
    pa, pb = PAPER_FIT
    ax.plot(grid, pa * grid**pb, ":", label=f"paper {pa} N^{pb}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of points N")
    ax.set_ylabel("nearest-neighbour FS distance")
    ax.set_title(f"Distance scaling on {scaling['manifold']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _figure().close(fig)
    return buf.getvalue()


# ============================================================================ the command
def default_out(paths: list[Path]) -> Path:
    """Next to the checkpoint: <its folder>/eval; several: <their common folder>/eval."""
    dirs = [p.resolve().parent for p in paths]
    if len(set(dirs)) == 1:
        return dirs[0] / "eval"
    import os

    return Path(os.path.commonpath([str(d) for d in dirs])) / "eval"


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    return str(x)


def print_table(results: list[dict], file=sys.stdout) -> None:
    for r in results:
        print(f"\n{r['label']}  [{r['manifold']['name']}, {r['kind']}]  {r['path']}", file=file)
        print(f"  {'points':<22}{'n':>8}{'mean dist':>11}{'sigma_FS':>10}{'sigma':>11}{'gain':>10}", file=file)

        def row(name, e, dist):
            ds = f"{dist:.3g}" if dist is not None else "-"
            print(f"  {name:<22}{e['n']:>8}{ds:>11}{e['sigma_fs']:>10.4g}{e['sigma']:>11.4g}{e['gain']:>10.4g}", file=file)

        row("train", r["train"], 0.0)
        row(f"test (seed {r['test']['seed']})", r["test"], r["test"]["distance_to_train"]["mean"])
        for e in r["noised"]["gaussian"]:
            row(f"gaussian v={e['variance']:.0e}", e, e["distance_to_train"]["mean"])
        for e in r["noised"]["manifold"]:
            if e.get("n"):
                row(f"on X d={e['distance']:.0e}", e, e["distance_to_train"]["mean"])
        for s in ("train", "test"):
            ric = r[s].get("ricci")
            if ric:
                print(f"  Ricci measure on {ric['n']} {s} points: model {ric['model']:.4g}, FS {ric['fs']:.4g}", file=file)


def _log_wandb(report: dict, pngs: dict[str, Path]) -> bool:
    try:
        import wandb
    except ImportError:
        return False
    if wandb.run is None:
        return False
    data = {}
    for i, r in enumerate(report["checkpoints"]):
        key = f"eval/{i}"
        for s in ("train", "test"):
            for m in ("sigma", "sigma_fs", "gain"):
                data[f"{key}/{s}/{m}"] = r[s][m]
        for mode in ("gaussian", "manifold"):
            for e in r["noised"][mode]:
                if e.get("n"):
                    lvl = e.get("variance", e.get("distance"))
                    data[f"{key}/{mode}/{lvl:g}/gain"] = e["gain"]
                    data[f"{key}/{mode}/{lvl:g}/distance"] = e["distance_to_train"]["mean"]
    for name, p in pngs.items():
        data[f"eval/{name}"] = wandb.Image(str(p))
    wandb.log(data)
    return True


def evaluate(
    ckpts,
    out=None,
    *,
    n_test: int = 10_000,
    seed: int = DEFAULT_SEED,
    mode: str = "both",
    variances=DEFAULT_VARIANCES,
    distances=DEFAULT_DISTANCES,
    n_noise: int = 1000,
    n_distance: int = 2000,
    ricci_points: int = 500,
    keep_chart: bool = False,
    test_data=None,
    scaling: bool = False,
    scaling_n=DEFAULT_SCALING_N,
    scaling_budget: float = 60.0,
    target_gains=(),
    fit=None,
    device: str = "auto",
    quiet: bool = False,
) -> tuple[dict, Path]:
    """Evaluate checkpoints and write <out>/eval.json and the plots; returns (report, out folder).

    Every input is checked before any work (EvaluationError, nothing written).
    """
    log = (lambda *a, **k: None) if quiet else print
    t_all = time.perf_counter()
    paths = [Path(p) for p in ([ckpts] if isinstance(ckpts, (str, Path)) else ckpts)]
    if not paths:
        raise EvaluationError("no checkpoint given")
    if mode not in ("gaussian", "manifold", "both"):
        raise EvaluationError(f"--mode must be gaussian, manifold or both, not {mode!r}")
    if n_test < 1 or n_noise < 1:
        raise EvaluationError("--n-test and --n-noise must be >= 1")
    if any(not (v >= 0 and math.isfinite(v)) for v in variances):
        raise EvaluationError(f"noise variances must be finite and >= 0, got {list(variances)}")
    if any(not (0 < d < math.pi / 2) for d in distances):
        raise EvaluationError(f"on-manifold distances must be in (0, pi/2), got {list(distances)}")
    if any(not g > 0 for g in target_gains):
        raise EvaluationError(f"target gains must be > 0, got {list(target_gains)}")
    dev = pick_device(device)

    # ---- check everything first: nothing is written when an input is refused
    test_given, test_surface = (None, None)
    if test_data is not None:
        from .data.pointset import is_cymetric_file

        if not Path(test_data).exists():
            raise EvaluationError(f"test data {test_data} does not exist")
        if not is_cymetric_file(test_data):  # mflow point sets name their manifold: check it against the models
            test_given, test_surface = load_test_points(test_data)
    loaded = [load_checkpoint(p, expected_surface=test_surface) for p in paths]
    if test_data is not None and test_given is None:  # a cymetric file: taken to be on the checkpoints' manifold
        if len({ck.surface.fingerprint() for ck in loaded}) > 1:
            raise EvaluationError(f"{test_data} is a cymetric file (no manifold recorded) and the checkpoints are on different manifolds")
        test_given, _ = load_test_points(test_data, loaded[0].surface)
    for ck in loaded:
        prepare_train_data(ck)
        dseed = (ck.data_hparams or {}).get("seed")
        if test_given is None and dseed is not None and int(dseed) == int(seed):
            raise EvaluationError(
                f"--seed {seed} is the data seed of {ck.path}: the test points would be the data it was trained on; "
                "choose another seed"
            )
    out = Path(out) if out is not None else default_out(paths)

    # ---- work
    from .data.pointset import sample_pointset

    tests: dict[str, CYPoints] = {}
    results = []
    for ck in loaded:
        fp = ck.surface.fingerprint()
        if test_given is not None:
            test = test_given
        elif fp not in tests:
            t = time.perf_counter()
            tests[fp] = sample_pointset(ck.surface, n_test, seed)
            log(f"[mflow] evaluate: {len(tests[fp])} test points on {ck.surface.name} (seed {seed}) in {time.perf_counter() - t:.1f} s")
            test = tests[fp]
        else:
            test = tests[fp]
        log(f"[mflow] evaluate: {ck.path}")
        results.append(evaluate_checkpoint(
            ck, test, seed=seed, mode=mode, variances=variances, distances=distances, n_noise=n_noise,
            n_distance=n_distance, ricci_points=ricci_points, keep_chart=keep_chart, device=dev, log=log,
        ))
    report = {
        "format": EVAL_FORMAT, "tool": "mflow evaluate", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": {
            "n_test": n_test if test_given is None else len(test_given), "test_data": str(test_data) if test_data else None,
            "seed": seed, "mode": mode, "variances": list(map(float, variances)), "distances": list(map(float, distances)),
            "n_noise": n_noise, "n_distance": n_distance, "ricci_points": ricci_points, "keep_chart": keep_chart,
            "device": str(dev), "threads": torch.get_num_threads(),
        },
        "noise": {
            "gaussian": "N(0, variance) on Re and Im of each homogeneous coordinate of the train point (patch scaling "
                        "z_patch = 1); chart re-chosen at the noised point" + (" (kept: --keep-chart)" if keep_chart else "")
                        + "; dp, |Omega|^2 = 1/|dp/dz_elim|^2, J, g_FS and weights at the noised point (mflow.noise)",
            "manifold": "random unit tangent step of FS length s from the train point, Newton projection onto X "
                        "(relative |p| <= 1e-10), s rescaled until the FS distance to the train point is within 2% "
                        "(accepted within 10%) of the requested one",
            "distance": "FS geodesic distance (eq. 3.2) to the nearest train point, exact",
        },
        "checkpoints": results,
    }
    # ---- distance scaling and points needed
    pngs: dict[str, bytes] = {"gain_vs_distance": _png_bytes(plot_gain_vs_distance(results))}
    need_fit = bool(target_gains) and fit is None
    if scaling or need_fit:
        surface = loaded[0].surface
        sc = distance_scaling(surface, scaling_n, seed=seed + 1000, budget_s=scaling_budget, log=log)
        report["distance_scaling"] = sc
        pngs["distance_scaling"] = _png_bytes(plot_distance_scaling(sc))
    if target_gains:
        if fit is not None:
            a, b, src = float(fit[0]), float(fit[1]), "given (--fit)"
        elif "fit" in report.get("distance_scaling", {}):
            a, b, src = report["distance_scaling"]["fit"]["a"], report["distance_scaling"]["fit"]["b"], "distance scaling"
        else:
            raise EvaluationError("the distance scaling gave fewer than 2 sizes: raise --scaling-budget or pass --fit A B")
        needed = []
        for r in results:
            for curve in ("gaussian", "manifold"):
                d, g = gain_curve(r, curve)
                if len(d) < 2:
                    continue
                for G in target_gains:
                    try:
                        e = points_needed(d, g, G, a, b)
                    except ValueError as err:
                        raise EvaluationError(str(err)) from None
                    needed.append({"checkpoint": r["path"], "label": r["label"], "curve": curve, "fit_source": src, **e})
        report["points_needed"] = needed
    report["seconds_total"] = time.perf_counter() - t_all

    # ---- write (PNGs first, eval.json last: its presence means the evaluation is complete)
    written = {}
    for name, data in pngs.items():
        p = out / f"{name}.png"
        atomic_write(p, lambda tmp, data=data: Path(tmp).write_bytes(data))
        written[name] = p
    report["files"] = {k: str(v) for k, v in written.items()}
    report["wandb"] = False
    try:
        report["wandb"] = _log_wandb(report, written)
    except Exception as e:  # noqa: BLE001 - logging must not lose the results
        log(f"[mflow] evaluate: W&B logging failed ({type(e).__name__}: {e})")
    write_json(out / "eval.json", _json_safe(report))
    if not quiet:
        print_table(results)
        for e in report.get("points_needed", []):
            n = e["n_points"]
            ns = "infinite" if not math.isfinite(n) else f"{n:.3g}"
            print(f"  points needed for test gain {e['target_gain']:g} ({e['label']}, {e['curve']} curve): "
                  f"mean distance {e['distance']:.3g} -> N = {ns}{' (extrapolated)' if e['extrapolated'] else ''}"
                  f"  [fit {e['fit']['a']:.3g} N^{e['fit']['b']:.3g}, {e['fit_source']}]")
        print(f"\n[mflow] evaluate: results in {out}: eval.json, {', '.join(p.name for p in written.values())}")
    return report, out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate mflow checkpoints: sigma, gain and Ricci measure on train, fresh test and noised points "
                    "(paper sec. 3.2, Fig. 3).",
    )
    p.add_argument("--ckpt", nargs="+", required=True, metavar="PATH", help="mflow checkpoint(s) (network or kernel flow)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--n-test", type=int, default=10_000, help="fresh test points (default 10000)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the test points and of the noise (not the data seed)")
    p.add_argument("--noise-levels", type=float, nargs="+", default=list(DEFAULT_VARIANCES), metavar="V",
                   help="Gaussian noise variances (mode gaussian)")
    p.add_argument("--distances", type=float, nargs="+", default=list(DEFAULT_DISTANCES), metavar="D",
                   help="requested FS distances of the on-manifold points (mode manifold)")
    p.add_argument("--mode", choices=("gaussian", "manifold", "both"), default="both", help="noised points to make")
    p.add_argument("--n-noise", type=int, default=1000, help="train points noised per level (default 1000)")
    p.add_argument("--n-distance", type=int, default=2000, help="test points whose distance to the train set is measured")
    p.add_argument("--ricci-points", type=int, default=500, help="points for the Ricci measure (0: skip)")
    p.add_argument("--keep-chart", action="store_true", help="Gaussian-noised points keep their train point's chart")
    p.add_argument("--test-data", default=None, help="test points from this point-set file instead of sampling")
    p.add_argument("--scaling", action="store_true", help="also measure the distance scaling (Fig. 3 right)")
    p.add_argument("--scaling-n", type=int, nargs="+", default=list(DEFAULT_SCALING_N), metavar="N")
    p.add_argument("--scaling-budget", type=float, default=60.0, help="seconds for the distance scaling")
    p.add_argument("--target-gain", type=float, nargs="+", default=[], metavar="G",
                   help="print the number of points needed for this test gain (extrapolation, paper sec. 3.2)")
    p.add_argument("--fit", type=float, nargs=2, default=None, metavar=("A", "B"),
                   help="distance fit mean = A N^B for --target-gain (default: measure it; the paper's is 0.968 -0.184)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if available")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        evaluate(
            args.ckpt, args.out, n_test=args.n_test, seed=args.seed, mode=args.mode, variances=args.noise_levels,
            distances=args.distances, n_noise=args.n_noise, n_distance=args.n_distance, ricci_points=args.ricci_points,
            keep_chart=args.keep_chart, test_data=args.test_data, scaling=args.scaling, scaling_n=args.scaling_n,
            scaling_budget=args.scaling_budget, target_gains=args.target_gain, fit=args.fit, device=args.device,
            quiet=args.quiet,
        )
    except EvaluationError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    return 0
