"""Checkpoints for evaluation: THE loader of mflow checkpoints (load_checkpoint: read and checked by
mflow.flows.checkpoint, the module restored by LightningModule.load_from_checkpoint, one-line errors) and the train
points of a checkpoint (train_points: kernel flows from the flow's state; networks from the point file the checkpoint
records, or regenerated from its recorded seed, split by the recorded rule: never through a datamodule; a psi family's
regenerated on its members, mflow.data.psi_family)."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mflow.data.datamodule import points_digest, read_points, split_indices
from mflow.data.pointset import DEFAULT_CHUNK, PointSetError, sample_pointset
from mflow.data.psi_family import FamilyPoints, family_columns, join_members, member_sets
from mflow.flows.checkpoint import CheckpointError, read_checkpoint
from mflow.geometry.cicy import CompleteIntersection
from mflow.geometry.presets import psi_member
from mflow.geometry.points import CYPoints, check_points

MODEL_KINDS = {"network": "mflow.flows.network.NetworkFlow", "kernel_flow": "mflow.flows.kernel_module.KernelFlow"}


class EvaluationError(ValueError):
    """An input evaluate.py refuses (missing / corrupt / foreign checkpoint, wrong manifold, bad option)."""


# ============================================================================ loading
@dataclass
class LoadedCheckpoint:
    """An mflow checkpoint, checked and restored: the module (eval mode, CPU) and the identity of its train points
    (``data``: the checkpoint's ``mflow.data`` record, mflow.data.datamodule.CYDataModule.points_record)."""

    path: Path
    kind: str
    module: torch.nn.Module
    surface: CompleteIntersection
    hparams: dict
    data: dict | None = field(default=None, repr=False)
    epoch: int | None = None
    global_step: int | None = None

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
    """Read and check an mflow checkpoint and restore its module (on the CPU, eval mode): the one loader of
    evaluate.py, finish.py and the studies (the module through its class's load_from_checkpoint, on the manifold
    the checkpoint records).

    Refused with EvaluationError (one line): whatever mflow.flows.checkpoint.read_checkpoint refuses (missing,
    corrupt, foreign, another format, a non-finite weight); a kind or class this mflow does not know; a module that
    cannot be restored; a manifold other than ``expected_surface``.
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
    hp = dict(hp)
    class_path = hp.get("_class_path") or MODEL_KINDS.get(kind)
    if class_path is None:
        raise EvaluationError(f"{path} holds a model of kind {kind!r}, which this mflow does not know ({sorted(MODEL_KINDS)})")
    cls = _import_class(class_path)
    if kind in MODEL_KINDS and cls is not _import_class(MODEL_KINDS[kind]):
        raise EvaluationError(f"{path}: the 'mflow' section says kind {kind!r} but the model class is {class_path!r}")
    try:
        with torch.random.fork_rng():
            module = cls.load_from_checkpoint(ck, map_location="cpu")
    except CheckpointError as e:
        raise EvaluationError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a checkpoint of another mflow version fails in many ways
        raise EvaluationError(f"{path}: the model cannot be restored ({type(e).__name__}: {str(e)[:300]})") from None
    surface = module.surface
    if expected_surface is not None and expected_surface.fingerprint() != surface.fingerprint():
        raise EvaluationError(
            f"{path} is a model of {surface.name!r} ({surface.fingerprint()}) but the requested points are on "
            f"{expected_surface.name!r} ({expected_surface.fingerprint()}): wrong manifold"
        )
    module.eval()
    return LoadedCheckpoint(path, kind, module, surface, hp, meta.get("data"), ck.get("epoch"), ck.get("global_step"))


def _recorded_file(ck: LoadedCheckpoint) -> Path | None:
    """The point file a network's checkpoint records, if it is there and unchanged; None when the points were
    sampled and their file is gone (then they are regenerated). EvaluationError when they cannot be found."""
    rec = ck.data
    if not isinstance(rec, dict) or "split" not in rec:
        raise EvaluationError(f"{ck.path} records no train data (no mflow.data, no datamodule_hyper_parameters): its "
                              "train points cannot be found")
    f = rec.get("file")
    if rec.get("psi_range") is not None:  # a psi family's members are regenerated (their caches are not recorded)
        f = None
    if f is not None and Path(f).is_file():
        if rec.get("digest") is None or points_digest(f) == rec["digest"]:
            return Path(f)
        if not rec.get("sampled"):
            raise EvaluationError(f"{ck.path}: its train data file {f} has changed since the model was trained "
                                  "(another content): restore that file to evaluate against its train points")
    elif not rec.get("sampled"):
        raise EvaluationError(f"{ck.path}: its train data file {f} does not exist any more")
    if rec.get("chunk_size", DEFAULT_CHUNK) != DEFAULT_CHUNK:
        raise EvaluationError(f"{ck.path}: its train points were sampled in chunks of {rec['chunk_size']}, this mflow "
                              f"samples in chunks of {DEFAULT_CHUNK}: they cannot be regenerated")
    return None


def check_train_data(ck: LoadedCheckpoint) -> None:
    """Check cheaply (no loading, no sampling) that the train points of a checkpoint can be found."""
    if ck.kind == "kernel_flow":  # kernel flows carry their train points
        if ck.module.flow.n_train == 0:
            raise EvaluationError(f"{ck.path}: the kernel flow holds no train points (it was never fitted)")
        return
    _recorded_file(ck)
    psi_range = ck.data.get("psi_range")
    if psi_range is not None:  # its test, noised and FS Ricci points would be the reference member's only
        raise EvaluationError(f"{ck.path} is a network of a psi family (data.psi_range {psi_range}), which evaluate.py "
                              "does not measure (its test and noised points are of one member): measure its splits "
                              "with ck.module.measure(recorded_splits(ck)[split]) (each point against its own member)")


def recorded_splits(ck: LoadedCheckpoint) -> dict[str, CYPoints]:
    """A network's train / val / test points: from the point file its checkpoint records (path and digest checked),
    or regenerated from the recorded seed when that file is gone (a sampled set), cut by the recorded split rule
    (mflow.data.datamodule.split_indices). A psi family's (data.psi_range) are regenerated on its members as the
    datamodule samples them (mflow.data.psi_family), as FamilyPoints carrying each point's psi and kappa. Never
    through a datamodule."""
    rec, f = ck.data, _recorded_file(ck)
    population = rec.get("population", "all_charts")
    psi_range, member = rec.get("psi_range"), None
    try:
        if psi_range is not None:
            points, member = join_members([sample_pointset(X, n, seed, population=population)
                                           for X, n, seed in member_sets(ck.surface, psi_range, rec["n_points"],
                                                                         rec["seed"])])
        else:
            points = (read_points(f, ck.surface, population) if f is not None else
                      sample_pointset(ck.surface, rec["n_points"], rec["seed"], population=population))
    except (PointSetError, ValueError) as e:
        raise EvaluationError(f"{ck.path}: its train points cannot be read ({e})") from None
    sp = rec["split"]
    if sp.get("n") is not None and sp["n"] != len(points):
        raise EvaluationError(f"{ck.path} was trained on {sp['n']} points, but {f or 'the regenerated set'} holds "
                              f"{len(points)}")
    system = points.system if sp.get("by_system") else None  # older records: the split of points, not systems
    rows = split_indices(len(points), sp["seed"], sp["val_fraction"], sp["test_fraction"], system)
    splits = {k: points[i] for k, i in rows.items()}
    if member is None:
        return splits
    try:
        cols = family_columns(splits["train"], member, rows, psi_range, rec["n_points"])
    except ValueError as e:
        raise EvaluationError(f"{ck.path}: {e}") from None
    return {k: FamilyPoints.of(p, cols[k]) for k, p in splits.items()}


def train_points(ck: LoadedCheckpoint) -> CYPoints:
    """The model's train points: a kernel flow's from its state, a network's from its checkpoint's record
    (recorded_splits). Never through a datamodule."""
    if ck.kind == "kernel_flow":
        check_train_data(ck)
        f = ck.module.flow
        pts = CYPoints(f.train_z, f.train_patch, f.train_elim, f.train_pullback, f.train_omega_sq, f.train_g_fs,
                       f.train_weights).to("cpu")
    else:
        pts = recorded_splits(ck)["train"]
    try:
        if isinstance(pts, FamilyPoints):  # each member's points on that member
            for psi in pts.psi.unique().tolist():
                check_points(pts[pts.psi == psi], psi_member(ck.surface, psi), f"train points of member psi = {psi:g}")
        else:
            check_points(pts, ck.surface, "train points")
    except ValueError as e:
        raise EvaluationError(f"{ck.path}: {e}") from None
    return pts
