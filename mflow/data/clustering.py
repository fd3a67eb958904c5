"""Batched agglomerative clustering on the FS distance (paper sec. 3.1, eq. 3.3, Figure 2).

The frozen-kernel flow is run per cluster (the kernel between clusters is neglected), so the points
are split into clusters of nearby points without ever forming the N x N distance matrix:
  1. shuffle (seeded) and cut the points into mini batches of M = ``batch_size`` points;
  2. cluster each batch into ``n_clusters`` by average-linkage agglomerative clustering on the
     FS distance matrix of the batch (eq. 3.2; sklearn, metric='precomputed');
  3. the first batch's clusters c_alpha^1 are the final clusters; every later batch's cluster
     c_beta^I is merged into one of them using the complete-linkage distance
     D(alpha, beta) = max_{x in c_alpha^1, y in c_beta^I} d_FS(x, y) (eq. 3.3).
Step 3 has three variants (``merge``):
  * "greedy" (default, the paper's description in sec. 3.1 step 4): for alpha = 0, 1, ... in
    order, merge the not yet used beta with the smallest D(alpha, beta); one-to-one, so every
    final cluster gets one cluster per batch, and the result depends on the cluster order;
  * "nearest": every beta goes to argmin_alpha D(alpha, beta), independently (many-to-one);
  * "hungarian": the one-to-one matching minimising sum D (scipy linear_sum_assignment).
``linkage="average"`` replaces the max in D by the mean over the pairs (not in the paper; on uniform
quintic points it agrees somewhat better with full clustering, see bench/bench_clustering.py).
Memory: O(M^2) per batch plus the labels.
Products: every function takes X (the manifold, mflow.geometry.cicy.CompleteIntersection; None = one P^n) and
then uses its distance sqrt(sum_i t_i d_i^2) on P^{n_1} x ... x P^{n_m} (mflow.geometry.distance) for d_FS.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from mflow.choices import check_choice
from mflow.checks import integer
from mflow.geometry.distance import fs_distance_matrix
from mflow.geometry.points import as_z
from mflow.io import pyplot, write_png
from mflow.progress import progress as show_progress

MERGES = ("greedy", "nearest", "hungarian")
LINKAGES = ("complete", "average")


def cluster_batch(z, n_clusters: int, X=None) -> torch.Tensor:
    """Average-linkage agglomerative clustering on FS distances: z [N, D] (or CYPoints) -> labels [N] int64.

    Labels are in [0, n_clusters); 1 <= n_clusters <= N. X: the manifold (products: its product distance).
    """
    z = as_z(z)
    integer("n_clusters", n_clusters)
    if n_clusters > len(z):
        raise ValueError(f"n_clusters = {n_clusters} exceeds the number of points {len(z)}")
    if n_clusters == 1:
        return torch.zeros(len(z), dtype=torch.int64)
    if n_clusters == len(z):
        return torch.arange(len(z))
    from sklearn.cluster import AgglomerativeClustering

    d = fs_distance_matrix(z, X=X).numpy()
    labels = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="average").fit_predict(d)
    return torch.as_tensor(labels, dtype=torch.int64)


def _linkage(d: torch.Tensor, la: torch.Tensor, ka: int, lb: torch.Tensor, kb: int, linkage: str = "complete") -> torch.Tensor:
    """max ('complete', eq. 3.3) or mean ('average') over x in cluster alpha, y in beta of d[x, y]: [Na, Nb] -> [ka, kb]."""
    if linkage == "average":
        a = torch.nn.functional.one_hot(la, ka).to(d.dtype)
        b = torch.nn.functional.one_hot(lb, kb).to(d.dtype)
        return (a.T @ d @ b) / (a.sum(0)[:, None] * b.sum(0)[None, :])
    neg = torch.tensor(-math.inf, dtype=d.dtype)
    rows = neg.expand(ka, d.shape[1]).clone().scatter_reduce(0, la[:, None].expand_as(d), d, "amax")
    return neg.expand(ka, kb).clone().scatter_reduce(1, lb[None, :].expand(ka, -1), rows, "amax")


def _assign(cost: torch.Tensor, merge: str) -> torch.Tensor:
    """First-batch cluster for each later-batch cluster: cost [ka, kb] -> [kb] int64."""
    ka, kb = cost.shape
    if merge == "nearest":
        return cost.argmin(0)
    if merge == "hungarian":
        from scipy.optimize import linear_sum_assignment

        alpha, beta = linear_sum_assignment(cost.numpy())
        out = torch.empty(kb, dtype=torch.int64)
        out[torch.as_tensor(beta)] = torch.as_tensor(alpha, dtype=torch.int64)
        return out
    out = torch.empty(kb, dtype=torch.int64)
    free = torch.ones(kb, dtype=torch.bool)
    for alpha in range(min(ka, kb)):  # loop over clusters, not points
        beta = int(torch.where(free, cost[alpha], math.inf).argmin())
        out[beta], free[beta] = alpha, False
    return out


def check_settings(n_clusters: int, batch_size: int, merge: str, linkage: str, batch_name: str = "batch_size") -> None:
    """Refuse batched-clustering settings that cannot work, naming the argument to change (the batch size's
    name is the caller's: ``batch_name``)."""
    integer("n_clusters", n_clusters)
    integer(batch_name, batch_size)
    check_choice("merge", merge, MERGES)
    check_choice("linkage", linkage, LINKAGES)
    if n_clusters > batch_size:
        raise ValueError(f"n_clusters = {n_clusters} exceeds {batch_name} = {batch_size}")


def batched_clustering(
    z, n_clusters: int, batch_size: int, seed: int = 0, merge: str = "greedy", linkage: str = "complete", X=None,
    progress: bool = False,
) -> torch.Tensor:
    """Batched FS clustering (sec. 3.1, eq. 3.3): z [N, D] (or CYPoints) -> labels [N] int64 in [0, n_clusters).

    Batches are consecutive runs of ``batch_size`` points of a seeded shuffle (the last may be
    shorter; it is clustered into min(n_clusters, its size) clusters). ``merge`` and ``linkage``
    (the cross-batch cluster distance, 'complete' = eq. 3.3): see the module doc.
    With batch_size >= N this is ``cluster_batch`` on all points. X: the manifold (products: its product distance).
    progress: show the mini batches' progress (mflow.progress).
    """
    z = as_z(z)
    check_settings(n_clusters, batch_size, merge, linkage)
    integer("seed", seed, lo=0)
    if n_clusters > len(z):
        raise ValueError(f"n_clusters = {n_clusters} exceeds the number of points {len(z)}")
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
    batches = torch.split(perm, batch_size)
    labels = torch.empty(len(z), dtype=torch.int64)
    first = batches[0]
    l1 = cluster_batch(z[first], n_clusters, X)
    labels[first] = l1
    rest = show_progress(batches[1:], len(batches) - 1, f"clustering {len(z)} points (mini batches)") if progress else batches[1:]
    for idx in rest:
        k = min(n_clusters, len(idx))
        lb = cluster_batch(z[idx], k, X)
        cost = _linkage(fs_distance_matrix(z[first], z[idx], X=X), l1, n_clusters, lb, k, linkage)
        labels[idx] = _assign(cost, merge)[lb]
    return labels


def agreement(labels_a, labels_b) -> float:
    """Adjusted Rand index of two labelings [N] (1 = identical partitions, ~0 = chance)."""
    from sklearn.metrics import adjusted_rand_score

    a, b = torch.as_tensor(labels_a).reshape(-1), torch.as_tensor(labels_b).reshape(-1)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"labelings must be non-empty and of equal length, got {len(a)} and {len(b)}")
    return float(adjusted_rand_score(a.numpy(), b.numpy()))


def cluster_figure(
    z, path, n_clusters: int = 10, n_batches: int = 5, seed: int = 0, merge: str = "greedy", linkage: str = "complete",
    X=None,
) -> dict:
    """Paper Figure 2 as a PNG: FS distance matrix of z [N, D] unordered / ordered by batched
    clustering (n_batches batches) / ordered by full clustering. Written atomically (temp + os.replace).
    X: the manifold (products: its product distance, colour scale up to its largest value).

    Returns {"path", "ari", "labels_batched", "labels_full"} (ari: batched vs full).
    """
    z = as_z(z)
    integer("n_batches", n_batches)
    path = Path(path)
    batched = batched_clustering(z, n_clusters, math.ceil(len(z) / n_batches), seed, merge, linkage, X)
    full = cluster_batch(z, n_clusters, X)
    d = fs_distance_matrix(z, X=X)
    vmax = math.pi / 2 * math.sqrt(sum(X.kahler)) if X is not None else math.pi / 2  # the diameter
    panels = [
        ("no clustering", torch.arange(len(z))),
        (f"batched clustering ({n_batches} batches)", torch.argsort(batched, stable=True)),
        ("full clustering", torch.argsort(full, stable=True)),
    ]
    fig = pyplot().figure(figsize=(15, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (title, order) in zip(axes, panels):
        im = ax.imshow(d[order][:, order].numpy(), cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("point")
    axes[0].set_ylabel("point")
    fig.colorbar(im, ax=list(axes), label=r"$d_{FS}$", shrink=0.9)
    ari = agreement(batched, full)
    fig.suptitle(f"FS distance, {len(z)} points, {n_clusters} clusters (ARI batched vs full = {ari:.3f})")
    write_png(path, fig)
    return {"path": str(path), "ari": ari, "labels_batched": batched, "labels_full": full}


def check_labels(labels: torch.Tensor, n_points: int, n_clusters: int | None = None) -> torch.Tensor:
    """Cluster labels [N] int64 in [0, n_clusters): refuse wrong shapes and empty clusters."""
    labels = torch.as_tensor(labels)
    if labels.shape != (n_points,) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"cluster labels must be {n_points} integers, got {tuple(labels.shape)} {labels.dtype}")
    labels = labels.to(torch.int64)
    if n_points and labels.min() < 0:
        raise ValueError("cluster labels must be >= 0")
    k = int(labels.max()) + 1 if n_points else 0
    k = k if n_clusters is None else n_clusters
    counts = torch.bincount(labels, minlength=k)
    if len(counts) > k:
        raise ValueError(f"cluster labels go up to {len(counts) - 1}, but there are {k} clusters")
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"cluster(s) {empty[:10]} of {k} are empty: every cluster needs at least one point "
            "(use fewer clusters or more points)"
        )
    return labels
