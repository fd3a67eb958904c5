"""Lightning DataModule of points on a CY manifold (mflow.geometry.cicy): sampled (and cached) or loaded from a file.

Batches are dicts of tensors sliced a whole batch at a time (no per-item collate), with D homogeneous coordinates
and d = dim X: features [B, 2D] float64, z [B, D] complex128, weights [B], omega_sq [B], pullback [B, d, D],
g_fs [B, d, d], patch [B], elim [B] (chart codes), index [B] (row in its split); a moduli family adds kahler
[B, m] and kappa [B], a psi family psi [B] and kappa [B].

Distributed (DDP): the samplers shard the data themselves (they subclass DistributedSampler, so
Lightning does not wrap them again). Train: a seeded permutation per epoch, padded with a few
repeated points so that every rank runs the same number of steps (as torch's DistributedSampler).
Val / test: contiguous shards, no padding, so every point is seen exactly once over all ranks; ranks
may then differ by one batch, so reduce validation metrics at epoch end (weighted sums), not per step.
"""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset

from mflow.geometry.cicy import CompleteIntersection, NotCalabiYauError
from mflow.geometry.presets import PRESETS, psi_family, surface_from_args
from mflow.geometry.points import CYPoints
from mflow.geometry.charts import factor_metrics, kahler_metric
from mflow.geometry.volume import kappa, kappa_of_moduli, moduli_polynomial, real_det

from mflow.choices import Manifold, Population, check_choice

from .population import check_population
from .psi_family import check_family, family_columns, join_members, member_sets
from .samplers import ResumableLoader, ShardedBatchSampler
from .pointset import (
    DEFAULT_CHUNK,
    PointSetError,
    is_cymetric_file,
    load_cymetric,
    load_pointset,
    sample_pointset,
    save_pointset,
)

MIN_POINTS = 10
SPLITS = ("train", "val", "test")


class PointsDataset(Dataset):
    """A split as a map-style dataset whose items are whole batches: ``ds[indices] -> dict of [B, ...]``
    (CYPoints.as_batch, plus the network features and the rows ``index`` in the split)."""

    def __init__(self, points: CYPoints, extra: dict[str, torch.Tensor] | None = None):
        self.points = points
        self.features = points.features
        self.extra = extra or {}  # per-point tensors of a moduli family: kahler [N, m], kappa [N]

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, indices) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return {**self.points[idx].as_batch(), "features": self.features[idx], "index": idx,
                **{k: v[idx] for k, v in self.extra.items()}}


class CYDataModule(L.LightningDataModule):
    """Points on a CY manifold, split into train / val / test.

    Args:
        manifold: preset name (mflow.geometry.presets.PRESETS): fermat_quintic, fermat_quartic, fermat_cubic, dwork,
            random, bicubic, p1p3, tetraquadric, two_cubics.
        psi: deformation of dwork (sum z_i^5 - 5 psi prod z_i; default 0) and two_cubics (default 0.5).
        ambient_n: ambient P^n of manifold="random" (degree n+1 with all monomials).
        surface_seed: coefficient seed of the generic presets (random, bicubic, p1p3, tetraquadric).
        kahler: the Kaehler moduli t, one per factor of the ambient space (None: all 1).
        kahler_range: a moduli family: [[lo_1, hi_1], ...] per factor; every point of every split gets its own t,
            log-uniform in the box (seeded), its g_FS that of J = sum t_i J_i and its class's kappa(t); batches then
            carry ``kahler`` [B, m] and ``kappa`` [B] (for a network with model.moduli_input: true). None: one t.
        psi_range: a complex-structure family of dwork or two_cubics: [lo, hi], real, clear of the singular members
            (mflow.geometry.presets.SINGULAR_PSI). The points are PSI_MEMBERS members at psi evenly spaced over the
            range, n_points / PSI_MEMBERS sampled on each (cached per member); every point carries its member's psi
            and kappa (eq. B.10 on that member's train points); batches then carry ``psi`` [B] and ``kappa`` [B] (for
            a network with model.moduli_input: true, which reads psi off the points). ``psi`` (default: mid-range)
            is the reference member, the manifold evaluate.py measures. None: one psi. Not with kahler_range or path.
        n_points: number of points to sample (ignored when path is given).
        population: all_charts (default) | one_chart (the points of the most common chart only, the paper's
            rejection sampling; mflow.data.population). A file's points keep the population they were sampled with.
        seed: sampling seed, and seed of the train/val/test split and of train shuffling.
        val_fraction: fraction of the points held out for validation.
        test_fraction: fraction of the points held out for testing.
        batch_size: points per batch.
        path: load this file instead of sampling: an mflow point-set file or a cymetric dataset.npz
            (recognised by its keys; all its rows are pooled, then split here by seed).
        cache: keep sampled sets as point-set files (named from the manifold fingerprint, n_points and seed)
            and reuse them while valid; False samples in memory every time.
        cache_dir: where cached sets go; None: $MFLOW_CACHE_DIR if set, else ~/.cache/mflow/points.
        num_workers: DataLoader worker processes (0: load in the main process; batches are slices, so 0 is usually best).
    """

    def __init__(
        self,
        manifold: Manifold = "fermat_quintic",
        psi: float | None = None,
        ambient_n: int = 4,
        surface_seed: int = 0,
        kahler: list[float] | None = None,
        kahler_range: list[list[float]] | None = None,
        psi_range: list[float] | None = None,
        n_points: int = 100_000,
        population: Population = "all_charts",
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 128,
        path: str | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_choice("manifold", manifold, Manifold)
        psi_range, psi = check_family(psi_range, manifold, psi, kahler_range, path)  # psi: mid-range by default
        try:
            self.surface: CompleteIntersection = surface_from_args(manifold, psi, ambient_n, surface_seed, kahler)
        except NotCalabiYauError as e:
            raise ValueError(f"manifold={manifold!r} with psi={psi}, ambient_n={ambient_n}, kahler={kahler}: {e}") from e
        self.psi_range = psi_range
        if psi_range is not None:
            self.surface = psi_family(self.surface, psi_range)
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= f < 1:
                raise ValueError(f"{name}={f} is out of range: choose a fraction in [0, 1)")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training points: make it < 1"
            )
        if path is None and (n_points < MIN_POINTS or _split_sizes(n_points, val_fraction, test_fraction)[0] < 1):
            raise ValueError(
                f"n_points={n_points} is too small: use n_points >= {MIN_POINTS} with a training split left over "
                "(realistic runs use 1e4 - 1e6)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be a positive integer")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers}: must be >= 0")
        self.kahler_range = _check_range(kahler_range, len(self.surface.dims))
        self.population = check_population(population)
        self.manifold, self.n_points, self.seed = manifold, n_points, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.path, self.cache = path, cache
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
        self.train = self.val = self.test = None
        self.family: dict[str, dict[str, torch.Tensor]] = {}
        self.member: torch.Tensor | None = None  # a psi family's: each point's member (index into psi_family.member_psi)
        self.kappa_fs: float | None = None
        self.split_indices: dict[str, torch.Tensor] = {}
        self.points_file: Path | None = None  # the file the points were read from (None: sampled in memory)
        self.points_digest: str | None = None  # its content's identity (points_digest)

    # ------------------------------------------------------------------ files
    @property
    def sampled_sets(self) -> list[tuple[CompleteIntersection, int, int]]:
        """(manifold, n_points, seed) of each set sampled: the one set, or a psi family's members (PSI_MEMBERS at
        member_psi, n_points shared out, seeds seed * PSI_MEMBERS + k)."""
        if self.psi_range is None:
            return [(self.surface, self.n_points, self.seed)]
        return member_sets(self.surface, self.psi_range, self.n_points, self.seed)

    @property
    def cache_path(self) -> Path | None:
        """Where the one sampled set is cached (None without cache_dir or when loading path); a psi family has one
        file per member: RuntimeError, ask cache_paths."""
        if self.psi_range is not None:
            raise RuntimeError("a psi family's points are cached one file per member: use cache_paths")
        return self.cache_paths[0]

    @property
    def cache_paths(self) -> list[Path | None]:
        """Where each of sampled_sets is cached (None without cache_dir or when loading path)."""
        if self.path is not None or not self.cache:
            return [None] * len(self.sampled_sets)
        return [Path(self.cache_dir) / cache_file_name(X, n, self.population, seed) for X, n, seed in self.sampled_sets]

    def _sample(self, X: CompleteIntersection, n: int, seed: int) -> CYPoints:
        return sample_pointset(X, n, seed, progress=n > 200_000, population=self.population)

    def prepare_data(self) -> None:
        """Sample and cache the point sets not cached yet (Lightning runs this on one process per node)."""
        if self.path is not None:
            if not Path(self.path).exists():
                raise FileNotFoundError(f"path={self.path!r} does not exist")
            return
        for (X, n, seed), cp in zip(self.sampled_sets, self.cache_paths):
            if cp is not None and not cp.exists():
                save_pointset(cp, self._sample(X, n, seed), X, seed=seed,
                              extra={"n_requested": n, "chunk_size": DEFAULT_CHUNK, "population": self.population})
                print(f"[mflow] sampled {n} points, cached in {cp} (--data.cache=false samples in memory instead)")

    def _load_points(self) -> CYPoints:
        """The points: a file's, the one sampled set, or a psi family's members one after another (their sampling
        systems numbered apart; self.member [N]: each point's member)."""
        if self.path is not None:
            return read_points(self.path, self.surface, self.population)
        parts = [self._load_set(X, n, seed, cp) for (X, n, seed), cp in zip(self.sampled_sets, self.cache_paths)]
        points, self.member = join_members(parts)
        return points

    def _load_set(self, X: CompleteIntersection, n: int, seed: int, cp: Path | None) -> CYPoints:
        if cp is None:
            return self._sample(X, n, seed)
        if not cp.exists():
            self.prepare_data()
        try:
            ps = load_pointset(cp, X)
        except PointSetError as e:
            raise PointSetError(f"invalid cached point set: {e.problem}", f"delete {cp} and rerun to resample it") from e
        meta = ps.metadata
        wanted = (seed, n, DEFAULT_CHUNK, self.population)
        if (meta.get("seed"), meta.get("n_requested"), meta.get("chunk_size"), meta.get("population", "all_charts")) != wanted:
            raise PointSetError(
                f"cached point set {cp} was sampled with n_points={meta.get('n_requested')}, seed={meta.get('seed')}, "
                f"chunk_size={meta.get('chunk_size')}, population={meta.get('population', 'all_charts')}, not "
                f"n_points={n}, seed={seed}, chunk_size={DEFAULT_CHUNK}, population={self.population}. "
                "Delete it and rerun to resample it."
            )
        return ps.points

    # ------------------------------------------------------------------ splits
    def setup(self, stage: str | None = None) -> None:
        """Load (or sample) the points and split them train / val / test by a seeded permutation."""
        if self.train is not None:
            return
        points = self._load_points()
        self.points_file = Path(self.path) if self.path is not None else self.cache_path if self.psi_range is None else None
        self.points_digest = points_digest(self.points_file) if self.points_file is not None else None
        n_train, n_val, n_test = _split_sizes(len(points), self.val_fraction, self.test_fraction)
        if n_train < 1:
            raise ValueError(
                f"{len(points)} points are too few for val_fraction={self.val_fraction}, "
                f"test_fraction={self.test_fraction}: use more points"
            )
        self.split_indices = split_indices(len(points), self.seed, self.val_fraction, self.test_fraction, points.system)
        self.split_by_system = points.system is not None
        self.train = points[self.split_indices["train"]]
        self.val = points[self.split_indices["val"]]
        self.test = points[self.split_indices["test"]]
        self.kappa_fs = float(kappa(self.train.weights, real_det(self.train.g_fs), self.train.omega_sq))
        self.family = {}
        if self.kahler_range is not None:
            self._draw_moduli()
        if self.psi_range is not None:  # per point its member's psi and kappa (eq. B.10 on its member's train points)
            self.family = family_columns(self.train, self.member, self.split_indices, self.psi_range, self.n_points)

    def _draw_moduli(self) -> None:
        """A moduli family: per point t (log-uniform in kahler_range), g_FS at t and the class's kappa(t)."""
        lo, hi = (torch.tensor(c, dtype=torch.float64).log() for c in zip(*self.kahler_range))
        poly = None
        for k, s in enumerate(SPLITS):
            p = getattr(self, s)
            gen = torch.Generator().manual_seed(self.seed * 1000 + 7 + k)
            t = (lo + (hi - lo) * torch.rand(len(p), len(lo), generator=gen, dtype=torch.float64)).exp()
            gs = factor_metrics(self.surface, p.z, p.pullback)  # [m, N, d, d]
            if poly is None:  # the train split's (first) estimate of kappa(t) serves every split
                poly = moduli_polynomial(gs, p.weights, p.omega_sq)
            p.g_fs = kahler_metric(gs, t)
            self.family[s] = {"kahler": t, "kappa": kappa_of_moduli(poly, t)}

    def points_record(self) -> dict:
        """What a checkpoint records of these points (FlowModule writes it in checkpoint["mflow"]["data"]) so that
        evaluation finds the train points without a datamodule (mflow.evaluation.checkpoints.train_points): the
        file they were read from and its digest, the settings that regenerate a sampled set, the split rule."""
        if self.train is None:
            raise RuntimeError("call setup() before asking for the points' record")
        n = len(self.train) + len(self.val) + len(self.test)
        return {**points_record_of(self.hparams, self.surface, self.cache_dir), "digest": self.points_digest,
                "psi_range": self.psi_range,
                "file": None if self.points_file is None else str(Path(self.points_file).resolve()),
                "split": {"n": n, "seed": self.seed, "val_fraction": self.val_fraction,
                          "test_fraction": self.test_fraction, "by_system": self.split_by_system}}

    def batch_of(self, split: str) -> dict[str, torch.Tensor]:
        """A whole split as one batch dict (what the loaders give, all rows)."""
        p = getattr(self, split)
        return PointsDataset(p, self.family.get(split))[torch.arange(len(p))]

    # ------------------------------------------------------------------ loaders
    def _ranks(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def _batches_done(self) -> int:
        """Batches the training loop has finished in the current epoch (what a checkpoint must skip on resume)."""
        t = getattr(self, "trainer", None)
        return int(t.fit_loop.epoch_loop.batch_progress.current.processed) if t is not None else 0

    def loader(self, points: CYPoints, sampler) -> ResumableLoader:
        """The DataLoader of a split: whole batches sliced by ``sampler`` (an EpochBatchSampler)."""
        if points is None:
            raise RuntimeError("call setup() before asking for dataloaders")
        extra = next((self.family.get(s) for s in SPLITS if getattr(self, s) is points), None)
        return ResumableLoader(PointsDataset(points, extra), sampler=sampler, batch_size=None, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0, batches_done=self._batches_done)

    def _sharded(self, points: CYPoints, shuffle: bool) -> ResumableLoader:
        world, rank = self._ranks()
        n = 0 if points is None else len(points)
        return self.loader(points, ShardedBatchSampler(n, self.batch_size, shuffle, self.seed, world, rank))

    def train_dataloader(self) -> ResumableLoader:
        return self._sharded(self.train, shuffle=True)

    def val_dataloader(self) -> ResumableLoader:
        return self._sharded(self.val, shuffle=False)

    def test_dataloader(self) -> ResumableLoader:
        return self._sharded(self.test, shuffle=False)


def _check_range(kahler_range, m: int):
    """kahler_range as [[lo, hi]] * m with 0 < lo <= hi, or None."""
    if kahler_range is None:
        return None
    try:
        box = [(float(lo), float(hi)) for lo, hi in kahler_range]
    except (TypeError, ValueError):
        raise ValueError(f"kahler_range={kahler_range!r}: give one [lo, hi] pair per factor, e.g. [[1, 1], [0.5, 2]]") from None
    if len(box) != m or not all(0 < lo <= hi for lo, hi in box):
        raise ValueError(f"kahler_range={kahler_range!r}: need {m} pairs [lo, hi] with 0 < lo <= hi (one per factor)")
    return box


def default_cache_dir() -> Path:
    """Where sampled point sets are cached by default: $MFLOW_CACHE_DIR, else ~/.cache/mflow/points."""
    env = os.environ.get("MFLOW_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mflow" / "points"


def read_points(path, surface: CompleteIntersection, population: str = "all_charts") -> CYPoints:
    """The points of a file (an mflow point set or a cymetric dataset.npz) on ``surface``, refused (PointSetError)
    when they are of another manifold or population."""
    if is_cymetric_file(path):
        if population != "all_charts":
            raise PointSetError(f"{path} is a cymetric file: its points are used as they are (population all_charts)")
        return load_cymetric(path, surface)
    try:
        ps = load_pointset(path, surface)
    except PointSetError as e:
        raise PointSetError(f"{e} (check manifold / psi / ambient_n / surface_seed / kahler match the file)") from e
    stored = ps.metadata.get("population", "all_charts")
    if stored != population:
        raise PointSetError(f"{path} holds {stored} points, but population={population}: set "
                            f"data.population={stored} (a file's points keep the population they were sampled with)")
    return ps.points


def cache_file_name(surface: CompleteIntersection, n_points: int, population: str, seed: int) -> str:
    """The name of a sampled set's cache file (in the cache directory)."""
    tag = "" if population == "all_charts" else f"-{population}"
    return f"{surface.name}-{surface.fingerprint()}-n{n_points}{tag}-seed{seed}.npz"


def split_indices(n: int, seed: int, val_fraction: float, test_fraction: float,
                  system: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The train / val / test rows of n points (the one rule of every split; checkpoints record its arguments,
    mflow.evaluation.checkpoints.train_points applies it).

    With the points' sampling systems (labels [n], mflow.geometry.montecarlo) whole systems go to each split: the
    systems in an order seeded by ``seed``, their points in file order, cut at the system boundaries nearest the
    split sizes (each size within one system of the requested one, none empty that is asked for). Without
    (system None: unknown, e.g. a cymetric file): a permutation of the points seeded by ``seed``, cut at the sizes.
    """
    n_train, n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    gen = torch.Generator().manual_seed(seed)
    if system is None:
        perm = torch.randperm(n, generator=gen)
        c1, c2 = n_train, n_train + n_val
    else:
        _, inv = torch.unique(system, return_inverse=True)
        rank = torch.argsort(torch.randperm(int(inv.max()) + 1, generator=gen))  # each system's place in the order
        perm = torch.argsort(rank[inv], stable=True)  # systems in that order, points in file order
        bounds = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(rank[inv]).cumsum(0)])
        need_val, need_test = int(n_val > 0), int(n_test > 0)
        if len(bounds) - 1 < 1 + need_val + need_test:
            raise _too_few_systems(bounds)
        hi = n - need_test
        if need_val:  # the val / test cut first, leaving a system below it for train
            c2 = _nearest(bounds, n_train + n_val, int(bounds[2]), hi)
            c1 = _nearest(bounds, n_train, 1, c2 - 1)
        else:
            c1 = c2 = _nearest(bounds, n_train, 1, hi)
    return {"train": perm[:c1], "val": perm[c1:c2], "test": perm[c2:]}


def _nearest(bounds: torch.Tensor, target: int, lo: int, hi: int) -> int:
    """The system boundary in [lo, hi] nearest target (the lower one on a tie); ValueError when there is none."""
    cand = bounds[(bounds >= lo) & (bounds <= hi)]
    if not len(cand):
        raise _too_few_systems(bounds)
    return int(cand[(cand - target).abs().argmin()])


def _too_few_systems(bounds: torch.Tensor) -> ValueError:
    return ValueError(f"{int(bounds[-1])} points in {len(bounds) - 1} sampling systems are too few to fill the train / "
                      "val / test splits with whole systems: use more points")


def points_digest(path) -> str:
    """The identity of a point file's content: an mflow point set's own checksum, else sha256 of the file's bytes."""
    import hashlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            if "checksum" in f.files:
                return "pointset:" + str(f["checksum"][()])
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def points_record_of(settings, surface: CompleteIntersection, cache_dir=None) -> dict:
    """The points' record (CYDataModule.points_record) as far as the data settings alone give it (no digest, no
    count): checkpoints of older mflow versions get theirs from their datamodule_hyper_parameters this way."""
    get = settings.get
    path, cache = get("path"), get("cache", True)
    n_points, seed, population = get("n_points", 100_000), get("seed", 0), get("population", "all_charts")
    if path is None and cache:
        folder = Path(cache_dir) if cache_dir is not None else (
            Path(get("cache_dir")) if get("cache_dir") is not None else default_cache_dir())
        path = folder / cache_file_name(surface, n_points, population, seed)
    return {"file": None if path is None else str(Path(path).resolve()), "digest": None,
            "sampled": get("path") is None, "n_points": n_points, "seed": seed, "population": population,
            "chunk_size": DEFAULT_CHUNK, "fingerprint": surface.fingerprint(),
            "split": {"n": None, "seed": seed, "val_fraction": get("val_fraction", 0.1),
                      "test_fraction": get("test_fraction", 0.1)}}


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes: val and test rounded, at least 1 when their fraction is > 0."""
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    return n - n_val - n_test, n_val, n_test
