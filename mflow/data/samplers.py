"""Batch samplers whose epochs are functions of (seed, epoch), shared out over DDP ranks and resumable mid-epoch.

A sampler yields lists of point indices, one list per batch. ``set_epoch(e)`` (Lightning calls it at every
epoch start) fixes the epoch; the batches are drawn lazily, when the first one is asked for, so a loader made
before ``set_epoch`` still serves the right epoch. :class:`ResumableLoader` is a DataLoader with Lightning's
``state_dict`` / ``load_state_dict`` protocol: a checkpoint records (epoch, batches done), and a run resumed
from it skips exactly the batches already trained on, so that it continues as if never interrupted.

Both samplers subclass DistributedSampler so that Lightning does not wrap them again under DDP.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a permutation of n seeded by (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1_000_003 * epoch))


class EpochBatchSampler(DistributedSampler):
    """Base class: subclasses give this rank's batches of the current epoch (:meth:`batches`)."""

    def __init__(self, shuffle: bool, seed: int, num_replicas: int, rank: int):
        # Deliberately skips DistributedSampler.__init__ (it needs a dataset and may query torch.distributed).
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.drop_last = False
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches of epoch ``epoch`` (once)."""
        self._resume = (int(epoch), int(batches_done))

    def batches(self) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self):
        skip = 0
        if self._resume is not None:
            epoch, done = self._resume
            skip = done if epoch == self.epoch else 0
            self._resume = None
        yield from self.batches()[skip:]


class ShardedBatchSampler(EpochBatchSampler):
    """Batches of ``batch_size`` indices of a dataset of size n, this rank's share.

    shuffle=True: the permutation of (seed, epoch), rank r takes every world_size-th index, padded so all
    ranks get ceil(n / world_size) indices (as torch's DistributedSampler).
    shuffle=False: contiguous shard [start_r, end_r), no padding (every index exactly once over the ranks).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(shuffle, seed, num_replicas, rank)
        self.n, self.batch_size, self.dataset = n, batch_size, None
        self.num_samples = math.ceil(n / num_replicas) if shuffle else n * (rank + 1) // num_replicas - n * rank // num_replicas
        self.total_size = self.num_samples * num_replicas if shuffle else n

    def indices(self) -> torch.Tensor:
        """This rank's indices, in order."""
        if not self.shuffle:
            bounds = [self.n * r // self.num_replicas for r in range(self.num_replicas + 1)]
            return torch.arange(bounds[self.rank], bounds[self.rank + 1])
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        total = math.ceil(self.n / self.num_replicas) * self.num_replicas
        if total > self.n:
            perm = torch.cat([perm, perm[: total - self.n]])
        return perm[self.rank :: self.num_replicas]

    def batches(self) -> list[torch.Tensor]:
        idx = self.indices()
        return [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]

    def __len__(self) -> int:
        """Number of batches on this rank."""
        return math.ceil(self.num_samples / self.batch_size)


class ClusterBatchSampler(EpochBatchSampler):
    """One cluster (its point indices, increasing) per batch; this rank's share of the clusters.

    shuffle: cluster order permuted by (seed, epoch). With world_size > 1 every rank yields
    ceil(n_clusters / world_size) batches, padded with EMPTY batches (never repeated clusters), so that every
    cluster is flowed exactly once per epoch, as on one process.
    """

    def __init__(self, labels: torch.Tensor, n_clusters: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        super().__init__(shuffle, seed, num_replicas, rank)
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=n_clusters).tolist()
        self.clusters = list(torch.split(order, counts))

    def cluster_order(self) -> list[int]:
        n = len(self.clusters)
        return epoch_permutation(n, self.seed, self.epoch).tolist() if self.shuffle else list(range(n))

    def batches(self) -> list[torch.Tensor]:
        mine = [self.clusters[c] for c in self.cluster_order()[self.rank :: self.num_replicas]]
        return mine + [torch.zeros(0, dtype=torch.int64)] * (len(self) - len(mine))

    def __len__(self) -> int:
        return math.ceil(len(self.clusters) / self.num_replicas)


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochBatchSampler` (``sampler=``, ``batch_size=None``) whose position in the
    epoch is saved in checkpoints and restored on resume (Lightning's stateful-loader protocol).

    ``batches_done()`` gives the number of batches the training loop has finished in the current epoch
    (Lightning's batch progress; the sampler's own count would include batches fetched ahead by workers).
    """

    def __init__(self, *args, batches_done: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochBatchSampler):
            raise TypeError("ResumableLoader needs an EpochBatchSampler as sampler")
        self._batches_done = batches_done

    def state_dict(self) -> dict:
        return {"epoch": int(self.sampler.epoch), "batches_done": int(self._batches_done())}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume(state["epoch"], state["batches_done"])
