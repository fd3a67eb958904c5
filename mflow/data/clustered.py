"""CYDataModule whose training batches are clusters of nearby points (paper sec. 3.1), for kernel flows.

setup() clusters the train split with mflow.data.clustering.batched_clustering (FS distance, eq. 3.2-3.3)
and keeps the labels in ``cluster_labels``; the train loader yields one whole cluster per batch (in a
seeded order per epoch). Validation and test batches are the usual ``batch_size`` slices.

DDP: ClusterBatchSampler (mflow.data.samplers) shares the clusters out (rank r takes every world_size-th
cluster of the epoch's order) and pads the shorter ranks with EMPTY batches, never with repeated clusters,
so that every cluster is flowed exactly once per epoch, as on one process.
"""
from __future__ import annotations

import torch

from mflow.choices import Linkage, Manifold, Merge, Population
from mflow.geometry.points import check_points

from .clustering import batched_clustering, check_labels, check_settings
from .datamodule import CYDataModule
from .samplers import ClusterBatchSampler, ResumableLoader


class ClusteredDataModule(CYDataModule):
    """Points on a CY hypersurface; the train split is clustered and served one cluster per batch.

    Args (besides CYDataModule's; ``batch_size`` applies to val / test only):
        n_clusters: number of clusters C (the paper aims at ~5000 points per cluster: C = N / 5000);
            1 puts all train points in one batch (a full-batch flow).
        cluster_batch_size: mini batch size M of the batched clustering (paper: 10000); memory O(M^2).
        merge: greedy (the paper's) | nearest | hungarian: how later mini batches' clusters are merged.
        linkage: complete (eq. 3.3) | average: the cluster distance used for merging.
        cluster_seed: shuffle seed of the clustering (default: seed).
    """

    def __init__(
        self,
        manifold: Manifold = "fermat_quintic",
        psi: float | None = None,
        ambient_n: int = 4,
        surface_seed: int = 0,
        kahler: list[float] | None = None,
        n_points: int = 100_000,
        population: Population = "all_charts",
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 4096,
        path: str | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        num_workers: int = 0,
        n_clusters: int = 1,
        cluster_batch_size: int = 10_000,
        merge: Merge = "greedy",
        linkage: Linkage = "complete",
        cluster_seed: int | None = None,
    ):
        super().__init__(
            manifold=manifold, psi=psi, ambient_n=ambient_n, surface_seed=surface_seed, kahler=kahler, n_points=n_points,
            population=population, seed=seed,
            val_fraction=val_fraction, test_fraction=test_fraction, batch_size=batch_size, path=path,
            cache=cache, cache_dir=cache_dir, num_workers=num_workers,
        )
        check_settings(n_clusters, cluster_batch_size, merge, linkage, "cluster_batch_size")  # before any sampling
        self.n_clusters, self.cluster_batch_size = n_clusters, cluster_batch_size
        self.merge, self.linkage = merge, linkage
        self.cluster_seed = seed if cluster_seed is None else cluster_seed
        self.cluster_labels: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.cluster_labels is not None:
            return
        self.cluster_labels = cluster_points(
            self.train, self.surface, self.n_clusters, self.cluster_batch_size, self.cluster_seed, self.merge, self.linkage
        )

    def train_dataloader(self) -> ResumableLoader:
        if self.train is None or self.cluster_labels is None:
            raise RuntimeError("call setup() before asking for dataloaders")
        world, rank = self._ranks()
        return self.loader(self.train, ClusterBatchSampler(self.cluster_labels, self.n_clusters, True, self.seed, world, rank))


def cluster_points(points, surface, n_clusters: int, cluster_batch_size: int, seed: int = 0,
                   merge: str = "greedy", linkage: str = "complete") -> torch.Tensor:
    """Checked batched FS clustering of a point set: -> labels [N] int64, every cluster non-empty."""
    check_points(points, surface, "train points")
    if n_clusters > len(points):
        raise ValueError(f"n_clusters = {n_clusters} exceeds the {len(points)} train points: use fewer clusters")
    labels = batched_clustering(points.z, n_clusters, min(cluster_batch_size, len(points)), seed, merge, linkage,
                                X=surface, progress=True)
    return check_labels(labels, len(points), n_clusters)


