"""Checkpoints for evaluation: read and checked (mflow.flows.checkpoint), the module restored, its train points
re-created (networks: from the data settings saved in the checkpoint; kernel flows: from the flow's state)."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mflow.flows.checkpoint import CheckpointError, read_checkpoint
from mflow.geometry.cicy import CompleteIntersection
from mflow.geometry.presets import surface_from_args
from mflow.geometry.points import CYPoints, check_points

KINDS = {"network": "mflow.flows.network.NetworkFlow", "kernel_flow": "mflow.flows.kernel_module.KernelFlow"}


class EvaluationError(ValueError):
    """An input evaluate.py refuses (missing / corrupt / foreign checkpoint, wrong manifold, bad option)."""


# ============================================================================ loading
@dataclass
class LoadedCheckpoint:
    """An mflow checkpoint, checked and restored: the module (eval mode, CPU) and the identity of its data."""

    path: Path
    kind: str
    module: torch.nn.Module
    surface: CompleteIntersection
    hparams: dict
    data_hparams: dict | None
    epoch: int | None = None
    global_step: int | None = None
    datamodule: object = field(default=None, repr=False)

    @property
    def class_path(self) -> str:
        """The module's class, by the path where mflow defines it."""
        return f"{type(self.module).__module__}.{type(self.module).__name__}"

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


def load_checkpoint(path, expected_surface: CompleteIntersection | None = None) -> LoadedCheckpoint:
    """Read and check an mflow checkpoint and restore its module (on the CPU, eval mode).

    Refused with EvaluationError: whatever mflow.flows.checkpoint.read_checkpoint refuses (missing, corrupt,
    foreign, another format, a non-finite weight); a kind or class this mflow does not know; a manifold that
    does not match the checkpoint's own settings, its data settings, or ``expected_surface``.
    """
    path = Path(path)
    try:
        ck = read_checkpoint(path)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None
    meta = ck["mflow"]
    kind = meta.get("kind")
    hp = ck.get("hyper_parameters")
    if not isinstance(hp, dict):
        raise EvaluationError(f"{path} has no hyper_parameters: the model cannot be rebuilt")
    class_path = hp.get("_class_path") or KINDS.get(kind)
    if class_path is None:
        raise EvaluationError(f"{path} holds a model of kind {kind!r}, which this mflow does not know ({sorted(KINDS)})")
    cls = _import_class(class_path)
    if kind in KINDS and cls is not _import_class(KINDS[kind]):
        raise EvaluationError(f"{path}: the 'mflow' section says kind {kind!r} but the model class is {class_path!r}")
    kwargs = {k: v for k, v in hp.items() if not k.startswith("_")}
    try:
        surface = surface_from_args(kwargs.get("manifold", "fermat_quintic"), kwargs.get("psi"),
                                    kwargs.get("ambient_n", 4), kwargs.get("surface_seed", 0), kwargs.get("kahler"))
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
            ds = surface_from_args(data_hp.get("manifold", "fermat_quintic"), data_hp.get("psi"),
                              data_hp.get("ambient_n", 4), data_hp.get("surface_seed", 0), data_hp.get("kahler"))
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
    if ck.kind == "kernel_flow":  # kernel flows carry their train points
        if ck.module.flow.n_train == 0:
            raise EvaluationError(f"{ck.path}: the kernel flow holds no train points (it was never fitted)")
        return
    if ck.data_hparams is None:
        raise EvaluationError(
            f"{ck.path} has no data settings (datamodule_hyper_parameters): its train points cannot be re-created"
        )
    from mflow.data.datamodule import CYDataModule

    allowed = set(inspect.signature(CYDataModule.__init__).parameters) - {"self"}
    kw = {k: v for k, v in ck.data_hparams.items() if k in allowed}
    kw.pop("kahler_range", None)  # a moduli family's network is evaluated at one class: the manifold's own t
    if kw.get("path") is not None and not Path(kw["path"]).exists():
        raise EvaluationError(f"{ck.path}: its train data file {kw['path']} does not exist any more")
    try:
        dm = CYDataModule(**kw)
    except ValueError as e:
        raise EvaluationError(f"{ck.path}: its data settings are refused: {e}") from None
    cp = dm.cache_path
    if cp is not None and not cp.exists():
        dm.cache = False  # sample in memory: evaluation writes nothing outside its output folder
    ck.datamodule = dm


def train_points(ck: LoadedCheckpoint) -> CYPoints:
    """The model's train points (from the checkpoint for kernel flows, re-created from the data settings otherwise)."""
    if ck.kind == "kernel_flow":
        f = ck.module.flow
        pts = CYPoints(f.train_z, f.train_patch, f.train_elim, f.train_pullback, f.train_omega_sq, f.train_g_fs,
                       f.train_weights).to("cpu")
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
    try:
        check_points(pts, ck.surface, "train points")
    except ValueError as e:
        raise EvaluationError(f"{ck.path}: {e}") from None
    return pts
