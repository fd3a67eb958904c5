"""Point-set files: sampled points of X with their weights, saved atomically and verified on load.

A point-set file is an uncompressed ``.npz`` holding

- ``z`` [N, D] complex128 (each point in its charts' patch scaling, as in CYPoints),
  ``weights`` [N] and ``omega_sq`` [N] float64 (docs/conventions.md section 4);
- cymetric's keys ``X_train, y_train, X_val, y_val`` (X = [Re z, Im z] float64,
  y = columns (weight, |Omega|^2), the last ``val_fraction`` of the rows as validation,
  split as cymetric's ``prepare_dataset`` does), so cymetric users can read it as ``dataset.npz``;
- ``system`` [N] int64 (format version 2): the sampling system of each point (mflow.geometry.montecarlo); absent
  when unknown. Version 1 files (no ``system``) are still read: their systems are derived from the sampling
  layout when the metadata pins it (all_charts, no point dropped), else left unknown;
- ``metadata``: a JSON string (format version, manifold dict and fingerprint, n, seed, n_points, ...);
- ``checksum``: sha256 over every array above and the metadata string.

Charts, pullbacks and FS metrics are not stored: they are recomputed by ``cy_points`` on load and
checked against the stored weights and |Omega|^2.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mflow.geometry.cicy import CDTYPE, RDTYPE, CompleteIntersection
from mflow.geometry.points import CYPoints, cat_points, check_on_surface, cy_points, sample
from mflow.geometry.sampling import system_index
from mflow.io import atomic_write
from mflow.progress import progress as show_progress

from .population import check_population, rejection_chunk, sample_population

FORMAT = "mflow-pointset"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no ``system`` array (module doc)
CYMETRIC_KEYS = ("X_train", "y_train", "X_val", "y_val")
ARRAY_KEYS = ("z", "weights", "omega_sq") + CYMETRIC_KEYS  # the order the checksum hashes them in
OPTIONAL_KEYS = ("system",)  # hashed after ARRAY_KEYS when present
DEFAULT_CHUNK = 100_000
RESIDUAL_TOL = 1e-8


class PointSetError(ValueError):
    """A point-set (or cymetric dataset) file is unreadable, corrupt, of another version or another manifold.
    ``problem`` is the message without its ``remedy`` (a caller with a better remedy says that one instead)."""

    def __init__(self, problem: str, remedy: str | None = None):
        super().__init__(f"{problem}; {remedy}" if remedy else problem)
        self.problem = problem


@dataclass
class PointSet:
    """What ``load_pointset`` returns: the points, the manifold they lie on and the file's metadata."""

    points: CYPoints
    surface: CompleteIntersection
    metadata: dict


# --------------------------------------------------------------------------- manifolds and sampling
def chunk_seed(seed: int, chunk: int) -> int:
    """Seed of chunk ``chunk`` of a chunked sample (a SeedSequence of (seed, chunk))."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_pointset(
    surface: CompleteIntersection, n_points: int, seed: int, chunk_size: int = DEFAULT_CHUNK, progress: bool = False,
    population: str = "all_charts",
) -> CYPoints:
    """n_points sampled points (mflow.geometry.sampling) of a population (mflow.data.population) with their geometry.

    At most chunk_size points are held in intermediate buffers at a time: n_points <= chunk_size is
    exactly ``sample(surface, n_points, seed)``; larger sets join chunks sampled with ``chunk_seed(seed, k)``.
    one_chart keeps the chart's points of chunks (mflow.data.population.rejection_chunk points, seeds
    chunk_seed(seed, k)) until it has n_points.
    The result depends on (surface, n_points, seed, chunk_size, population) only. Points dropped for tied patches
    (probability ~1e-12 each) are not replaced, so len() may be a hair below n_points.
    """
    if check_population(population) == "one_chart":
        step = rejection_chunk(n_points, chunk_size)
        return sample_population(surface, n_points, seed, step, lambda k: sample(surface, step, chunk_seed(seed, k)))
    if n_points <= chunk_size:
        return sample(surface, n_points, seed)
    sizes = [min(chunk_size, n_points - i) for i in range(0, n_points, chunk_size)]
    it = enumerate(sizes)
    if progress:
        it = show_progress(it, len(sizes), f"sampling {n_points} points (chunks)")
    return cat_points([sample(surface, m, chunk_seed(seed, k)) for k, m in it])


# --------------------------------------------------------------------------- cymetric layout
def cymetric_split(n_rows: int, val_fraction: float = 0.1) -> int:
    """Number of training rows, t_i = int((1 - val_split) N), as in cymetric's prepare_dataset."""
    return int((1 - val_fraction) * n_rows)


def cymetric_arrays(points: CYPoints, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """cymetric's X_train, y_train, X_val, y_val for these points (X = [Re z, Im z], y = (w, |Omega|^2))."""
    X = points.features.numpy()
    y = np.stack([points.weights.numpy(), points.omega_sq.numpy()], axis=1).astype(np.float64)
    t = cymetric_split(len(X), val_fraction)
    return {"X_train": X[:t], "y_train": y[:t], "X_val": X[t:], "y_val": y[t:]}


# --------------------------------------------------------------------------- save
def _checksum(arrays: dict[str, np.ndarray], metadata: str) -> str:
    h = hashlib.sha256()
    for key in ARRAY_KEYS + tuple(k for k in OPTIONAL_KEYS if k in arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(metadata.encode())
    return h.hexdigest()


def atomic_savez(path: str | os.PathLike, **arrays) -> Path:
    """np.savez to path atomically (mflow.io.atomic_write)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def save_pointset(
    path: str | os.PathLike,
    points: CYPoints,
    surface: CompleteIntersection,
    seed: int | None = None,
    val_fraction: float = 0.1,
    extra: dict | None = None,
) -> Path:
    """Write points of ``surface`` to a point-set file at path (atomically); returns the path.

    seed is recorded in the metadata; val_fraction sets cymetric's X_val/y_val split; extra is merged
    into the metadata (JSON-serialisable values).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    arrays = {
        "z": points.z.to(CDTYPE).numpy(),
        "weights": points.weights.to(RDTYPE).numpy(),
        "omega_sq": points.omega_sq.to(RDTYPE).numpy(),
        **cymetric_arrays(points, val_fraction),
    }
    if points.system is not None:
        arrays["system"] = points.system.to(torch.int64).numpy()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": "mflow",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "manifold": surface.to_dict(),
        "fingerprint": surface.fingerprint(),
        "n_coords": surface.n_coords,
        "seed": seed,
        "n_points": len(points),
        "val_fraction": val_fraction,
        **(extra or {}),
    }
    meta_s = json.dumps(meta, sort_keys=True)
    return atomic_savez(path, **arrays, metadata=np.array(meta_s), checksum=np.array(_checksum(arrays, meta_s)))


# --------------------------------------------------------------------------- load
def _read_npz(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, with every failure turned into a PointSetError naming the file."""
    if not path.exists():
        raise PointSetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise PointSetError(f"{path}: not an .npz archive (a single .npy array)")
            out = {k: f[k] for k in f.files}
    except PointSetError:
        raise
    except Exception as e:  # BadZipFile, EOFError, zlib.error, ValueError (pickle / bad header), OSError, ...
        raise PointSetError(
            f"{path}: unreadable or corrupt .npz file ({type(e).__name__}: {e}); it may be truncated or not an "
            ".npz archive", "delete it and write it again"
        ) from e
    missing = [k for k in required if k not in out]
    if missing:
        raise PointSetError(f"{path}: missing keys {missing} (has {sorted(out)})")
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a point-set file, after checking its format version and checksum."""
    return _verified(Path(path))[1]


def _verified(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    arrays = _read_npz(path, ARRAY_KEYS + ("metadata", "checksum"))
    try:
        meta_s = str(arrays["metadata"][()])
        meta = json.loads(meta_s)
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except (ValueError, TypeError) as e:
        raise PointSetError(f"{path}: metadata is not valid JSON ({e})") from e
    if meta.get("format") != FORMAT or meta.get("created_by") != "mflow":
        raise PointSetError(f"{path}: not an mflow point-set file (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise PointSetError(
            f"{path}: point-set format version {version!r}, this mflow reads versions {READABLE_VERSIONS}; "
            "resample it with `python -m mflow.data sample`"
        )
    stored = str(arrays["checksum"][()])
    actual = _checksum(arrays, meta_s)
    if stored != actual:
        raise PointSetError(
            f"{path}: checksum mismatch (stored {stored[:16]}..., contents hash to {actual[:16]}...): the file is "
            "corrupt or was modified", "delete it and resample"
        )
    return arrays, meta


def _check_on_surface(z: torch.Tensor, surface: CompleteIntersection, tol: float, where: str) -> None:
    try:
        check_on_surface(z, surface, "points", tol)
    except ValueError as e:
        raise PointSetError(f"{where}: {e}") from None


def _check_proportional(ours: torch.Tensor, theirs: torch.Tensor, what: str, rtol: float, where: str) -> float:
    """Check theirs = c * ours for one constant c > 0 (to rtol per point); returns c."""
    if not torch.isfinite(theirs).all() or not (theirs > 0).all():
        raise PointSetError(f"{where}: {what} must be finite and positive")
    r = theirs / ours
    c = float(r.median())
    dev = float((r / c - 1).abs().max())
    if dev > rtol:
        raise PointSetError(
            f"{where}: the file's {what} are not proportional to the ones recomputed from its points "
            f"(ratio file/recomputed varies by {dev:.3g} relative > {rtol:g}); it uses a different convention"
        )
    return c


def load_pointset(
    path: str | os.PathLike, surface: CompleteIntersection | None = None, tol: float = RESIDUAL_TOL, rtol: float = 1e-8
) -> PointSet:
    """Read and verify a point-set file; the points become a CYPoints via cy_points.

    Raises PointSetError for unreadable / truncated / non-npz files, another format version, a checksum
    mismatch, a manifold other than ``surface`` (fingerprints differ, or p does not vanish at the points to
    relative ``tol``), and stored weights / |Omega|^2 that disagree with the recomputed ones beyond rtol.
    """
    path = Path(path)
    arrays, meta = _verified(path)
    try:
        stored = CompleteIntersection.from_dict(meta["manifold"])
    except Exception as e:
        raise PointSetError(f"{path}: metadata holds no valid manifold ({type(e).__name__}: {e})") from e
    if stored.fingerprint() != meta.get("fingerprint"):
        raise PointSetError(f"{path}: the manifold in the metadata does not match its recorded fingerprint")
    if surface is not None and surface.fingerprint() != stored.fingerprint():
        raise PointSetError(
            f"{path}: manifold mismatch: the file holds points of {stored.name} {stored.params or ''} (fingerprint "
            f"{stored.fingerprint()}), expected {surface.name} {surface.params or ''} (fingerprint {surface.fingerprint()})"
        )
    surface = stored if surface is None else surface
    z = torch.from_numpy(arrays["z"])
    if z.ndim != 2 or z.shape[1] != surface.n_coords or z.dtype != CDTYPE:
        raise PointSetError(f"{path}: z has shape {tuple(z.shape)} / {z.dtype}, expected [N, {surface.n_coords}] complex128")
    _check_on_surface(z, surface, tol, str(path))
    points = cy_points(surface, z, drop_ties=False)
    _check_same(torch.from_numpy(arrays["weights"]), points.weights, "weights", rtol, path)
    _check_same(torch.from_numpy(arrays["omega_sq"]), points.omega_sq, "|Omega|^2", rtol, path)
    if "system" in arrays:
        points.system = torch.from_numpy(arrays["system"]).to(torch.int64)
        if points.system.shape != (len(points),):
            raise PointSetError(f"{path}: system has shape {tuple(points.system.shape)}, expected [{len(points)}]")
    else:
        points.system = layout_systems(surface, meta)
    return PointSet(points, surface, meta)


def layout_systems(surface: CompleteIntersection, meta: dict) -> torch.Tensor | None:
    """The sampling systems [N] of a version-1 file's points (no ``system`` array), rebuilt from sample_pointset's
    layout (chunks of chunk_size, each laid out by mflow.geometry.sampling.system_index, labels renumbered apart as
    cat_points does) when that layout is certain: population all_charts, every requested point kept. Else None."""
    n, chunk = meta.get("n_points"), meta.get("chunk_size")
    if meta.get("population", "all_charts") != "all_charts" or n != meta.get("n_requested") or not chunk or not n:
        return None
    parts = [system_index(surface, min(chunk, n - i)) for i in range(0, n, chunk)]
    offsets = torch.tensor([0] + [int(p.max()) + 1 for p in parts[:-1]]).cumsum(0)
    return torch.cat([p + o for p, o in zip(parts, offsets)])


def _check_same(stored: torch.Tensor, ours: torch.Tensor, what: str, rtol: float, path: Path) -> None:
    if stored.shape != ours.shape or not torch.allclose(stored, ours, rtol=rtol, atol=0):
        raise PointSetError(
            f"{path}: stored {what} differ from the ones recomputed from its points; the file was written with "
            "another geometry convention", "delete it and resample"
        )


def is_cymetric_file(path: str | os.PathLike) -> bool:
    """True for an .npz with cymetric's keys and no mflow metadata (a cymetric dataset.npz)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(getattr(f, "files", ()))
    except Exception:
        return False
    return set(CYMETRIC_KEYS) <= keys and "metadata" not in keys


def load_cymetric(
    path: str | os.PathLike, surface: CompleteIntersection, tol: float = RESIDUAL_TOL, rtol: float = 1e-6
) -> CYPoints:
    """Points of a cymetric ``dataset.npz`` (X_train + X_val, in that order) as a CYPoints of ``surface``.

    Rebuilds z = X[:, :D] + i X[:, D:], checks p(z) ~ 0 to relative tol, recomputes charts with
    cy_points and keeps the file's weights and |Omega|^2 after checking each equals ours times one
    constant (to rtol); raises PointSetError naming the problem otherwise.
    """
    path = Path(path)
    a = _read_npz(path, CYMETRIC_KEYS)
    n1 = surface.n_coords
    X = np.concatenate([a["X_train"], a["X_val"]])
    y = np.concatenate([a["y_train"], a["y_val"]])
    if X.ndim != 2 or X.shape[1] != 2 * n1:
        raise PointSetError(
            f"{path}: X has shape {X.shape}; {surface.name} lives in {surface.ambient}, which needs [N, {2 * n1}] "
            "real features [Re z, Im z]"
        )
    if y.ndim != 2 or y.shape[0] != X.shape[0] or y.shape[1] < 2:
        raise PointSetError(f"{path}: y has shape {y.shape}, expected [{X.shape[0]}, 2] columns (weight, |Omega|^2)")
    X = torch.from_numpy(np.asarray(X, dtype=np.float64))
    z = torch.complex(X[:, :n1], X[:, n1:])
    _check_on_surface(z, surface, tol, str(path))
    points = cy_points(surface, z, drop_ties=False)
    w = torch.from_numpy(np.asarray(y[:, 0], dtype=np.float64))
    om = torch.from_numpy(np.asarray(y[:, 1], dtype=np.float64))
    _check_proportional(points.weights, w, "weights", rtol, str(path))
    _check_proportional(points.omega_sq, om, "|Omega|^2", rtol, str(path))
    points.weights, points.omega_sq = w, om
    return points
