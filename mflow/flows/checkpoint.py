"""mflow's checkpoint format: what a checkpoint carries, how it is sealed and checked, and old settings migrated.

Every checkpoint of a flow module is a Lightning checkpoint with an ``mflow`` section (the module's
``checkpoint_meta``: format, kind, manifold (``surface``, the one record of it) and its fingerprint, the train
points' record ``data`` (mflow.data.datamodule.CYDataModule.points_record), for kernel flows the kernel) and, since
format 2, ``mflow.checksum``: a sha256 over the whole content (every tensor's dtype, shape and bytes, every
key, number and string; :func:`content_digest`). All reads go through :func:`read_checkpoint` (train.py's
resume through :class:`AtomicCheckpointIO`, ``load_from_checkpoint`` through mflow.flows.base.FlowModule,
evaluate.py directly), which refuses, with one line naming the file and the cause:
  a missing, truncated or unreadable file; a file without an ``mflow`` section (another program's);
  a format this mflow does not read; a checksum that does not match the content (a changed byte anywhere; a checkpoint without one, written by
  a trainer with its own checkpoint I/O, is read with a warning);
  a non-finite weight or optimizer state;
and migrates settings written by older mflow versions (class paths of the old layout, NetworkFlow's
``seed`` -> ``init_seed``, the manifold settings once held by the model as well as the data, the train points'
record ``mflow.data`` derived from the data settings), so that old checkpoints load everywhere the same way.
Checkpoints are written atomically (mflow.io.atomic_write).
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mflow.cli.errors import first_sentence
from mflow.io import atomic_write

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1: written before checksums (accepted, not verified)
UNSET_BUFFERS = ("kappa", "initial_sigma")  # buffers that hold NaN until set: not weights, allowed to be NaN
CLASS_PATHS = {  # the module classes of the old layout -> today's
    "mflow.modules.NetworkFlow": "mflow.flows.network.NetworkFlow",
    "mflow.kernel_flow.KernelFlow": "mflow.flows.kernel_module.KernelFlow",
}
RENAMED_HPARAMS = {"mflow.flows.network.NetworkFlow": {"seed": "init_seed"}}
MANIFOLD_HPARAMS = ("manifold", "psi", "ambient_n", "surface_seed", "kahler")  # model settings before format 2's data-only manifold
FLOW_STATE = ("train_z", "train_patch", "train_elim", "train_pullback", "train_g_fs", "train_weights", "train_omega_sq",
              "metric", "coeff", "labels", "row_of", "train_h", "cluster_steps", "kappa", "pd_counts", "flow_steps",
              "ref_chart", "clustered")  # KernelFlow's state, held by its ``flow`` (FrozenKernelFlow) since format 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, foreign, of another format or another manifold."""


# ----------------------------------------------------------------------------- the checksum
def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif isinstance(obj, (set, frozenset)):
        h.update(f"S{sorted(map(repr, obj))}".encode())
    else:
        h.update(b"P" + pickle.dumps(obj, protocol=4))


def content_digest(checkpoint: dict) -> str:
    """sha256 of a checkpoint's content, without its own ``mflow.checksum``."""
    meta = checkpoint.get("mflow") or {}
    stored = meta.pop("checksum", None) if isinstance(meta, dict) else None
    try:
        h = hashlib.sha256()
        _feed(h, checkpoint)
        return h.hexdigest()
    finally:
        if stored is not None:
            meta["checksum"] = stored


def seal(checkpoint: dict) -> dict:
    """Add ``mflow.checksum`` (in place; the ``mflow`` section must be there)."""
    checkpoint["mflow"]["checksum"] = content_digest(checkpoint)
    return checkpoint


# ----------------------------------------------------------------------------- reading
def _nonfinite(checkpoint: dict) -> str | None:
    """Name of the first non-finite weight or optimizer state (None if all are finite)."""
    for name, t in (checkpoint.get("state_dict") or {}).items():
        if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()) and name.rsplit(".", 1)[-1] not in UNSET_BUFFERS:
            if not torch.isfinite(torch.view_as_real(t) if t.is_complex() else t).all():
                return name
    for i, opt in enumerate(checkpoint.get("optimizer_states") or []):
        for pid, state in (opt.get("state") or {}).items():
            for k, t in state.items():
                if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
                    return f"optimizer {i}, parameter {pid}, {k}"
    return None


def migrate(checkpoint: dict) -> dict:
    """Settings of older mflow versions in today's names (in place): module class paths, NetworkFlow's seed,
    the kernel flow's state keys."""
    hp = checkpoint.get("hyper_parameters")
    if isinstance(hp, dict):
        if hp.get("_class_path") in CLASS_PATHS:
            hp["_class_path"] = CLASS_PATHS[hp["_class_path"]]
        kind = (checkpoint.get("mflow") or {}).get("kind")
        cls = hp.get("_class_path") or {"network": "mflow.flows.network.NetworkFlow"}.get(kind)
        for old, new in RENAMED_HPARAMS.get(cls, {}).items():
            if old in hp and new not in hp:
                hp[new] = hp.pop(old)
        if hp.get("pd_policy") == "raise":  # the network's old name of the policy
            hp["pd_policy"] = "stop"
        _migrate_manifold(checkpoint, hp)
    sd = checkpoint.get("state_dict")
    if (checkpoint.get("mflow") or {}).get("kind") == "kernel_flow" and isinstance(sd, dict) and "metric" in sd:
        renamed = {"_ddp_anchor": "_step_anchor", **{k: f"flow.{k}" for k in FLOW_STATE}}
        checkpoint["state_dict"] = {renamed.get(k, k): v for k, v in sd.items()}
    return checkpoint


def _migrate_manifold(checkpoint: dict, hp: dict) -> None:
    """Before the manifold was configured once (the data's), the model's hyper_parameters held its settings too and
    evaluation re-created the train points through a datamodule: drop them from the model's (the manifold is the
    ``mflow.surface`` record) and derive the train points' record ``mflow.data`` from the data settings."""
    meta = checkpoint.get("mflow")
    if not isinstance(meta, dict):
        return
    old = {k: hp.pop(k) for k in MANIFOLD_HPARAMS if k in hp}
    if "surface" not in meta and "manifold" in old:
        from mflow.geometry.presets import surface_from_args

        s = surface_from_args(old["manifold"], old.get("psi"), old.get("ambient_n", 4), old.get("surface_seed", 0),
                              old.get("kahler"))
        meta["surface"], meta["fingerprint"] = s.to_dict(), s.fingerprint()
    data_hp = checkpoint.get("datamodule_hyper_parameters")
    if "data" not in meta and isinstance(data_hp, dict) and isinstance(meta.get("surface"), dict):
        from mflow.data.datamodule import points_record_of
        from mflow.geometry.cicy import CompleteIntersection

        meta["data"] = points_record_of(data_hp, CompleteIntersection.from_dict(meta["surface"]))


def verify(checkpoint, path) -> dict:
    """Refuse what is not a usable mflow checkpoint (module doc); returns the checkpoint."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    meta = checkpoint.get("mflow")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not an mflow checkpoint (no 'mflow' section): was it written by another program?")
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        age = "newer" if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT else "older or unknown"
        raise CheckpointError(f"{path} has mflow checkpoint format {fmt!r} ({age}); this mflow reads formats "
                              f"{list(READABLE_FORMATS)}: use the mflow version that wrote it")
    if "checksum" in meta:
        stored, actual = meta["checksum"], content_digest(checkpoint)
        if stored != actual:
            raise CheckpointError(f"{path} is corrupt: its content does not match its checksum (stored "
                                  f"{str(stored)[:12]}..., content {actual[:12]}...); use another checkpoint of the run")
    elif fmt < 2:
        warnings.warn(f"{path} was written before mflow checkpoints carried checksums: it is not verified", stacklevel=2)
    else:
        warnings.warn(f"{path} carries no checksum (written by a trainer with its own checkpoint I/O): it is not "
                      "verified", stacklevel=2)
    bad = _nonfinite(checkpoint)
    if bad is not None:
        raise CheckpointError(f"{path} holds a non-finite value in {bad}: the run had diverged when it was written; "
                              "use an earlier checkpoint")
    return checkpoint


def read_checkpoint(path) -> dict:
    """torch.load, verified (:func:`verify`) and migrated (:func:`migrate`); CheckpointError on any problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - zip / pickle errors of every kind mean the same thing here
        raise CheckpointError(
            f"checkpoint {path} cannot be read: the file is corrupt or truncated, or not a torch checkpoint "
            f"({type(e).__name__}: {first_sentence(str(e))})"
        ) from None
    return migrate(verify(ck, path))


def check_manifold(checkpoint: dict, surface) -> None:
    """Refuse a checkpoint written for another manifold than ``surface``."""
    meta = checkpoint.get("mflow") or {}
    if meta.get("fingerprint") != surface.fingerprint():
        raise CheckpointError(
            f"checkpoint is for manifold {(meta.get('surface') or {}).get('name')} ({meta.get('fingerprint')}), "
            f"not {surface.name} ({surface.fingerprint()})"
        )


# ----------------------------------------------------------------------------- Lightning glue
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with mflow's checksum: sealed and written atomically, verified on load.
    train.py uses it, and mflow's modules install it in any trainer that has Lightning's default I/O."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if isinstance(checkpoint.get("mflow"), dict):
            seal(checkpoint)
        atomic_write(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return read_checkpoint(path)


def install_checkpoint_io(trainer) -> None:
    """Make a trainer with Lightning's default checkpoint I/O write mflow's sealed, atomic checkpoints."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is not None and type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
