"""Batched FS-distance clustering (paper sec. 3.1, eq. 3.3) and the Figure 2 writer."""
import numpy as np
import pytest
import torch

from mflow.geometry.points import sample
from mflow.data.clustering import MERGES, agreement, batched_clustering, cluster_batch, cluster_figure


@pytest.fixture(scope="module")
def z(quintic):
    return sample(quintic, 300, seed=5).z


def separated(n_centres=4, per=60, spread=1e-2, seed=0):
    """Points of P^4 near n_centres random points, each rescaled by a random complex factor: (z, truth)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_centres, 5, dtype=torch.complex128, generator=g)
    truth = torch.arange(n_centres).repeat_interleave(per)
    noise = spread * torch.randn(len(truth), 5, dtype=torch.complex128, generator=g)
    scale = torch.randn(len(truth), 1, dtype=torch.complex128, generator=g)
    return (centres[truth] + noise) * scale, truth


def test_labels_shape_and_range(z, quintic):
    for labels in (cluster_batch(z, 7), batched_clustering(z, 7, 64, seed=1)):
        assert labels.shape == (300,) and labels.dtype == torch.int64
        assert labels.min() >= 0 and labels.max() < 7
    assert set(batched_clustering(z, 7, 100, seed=1).tolist()) == set(range(7))  # 3 equal batches
    pts = sample(quintic, 50, seed=1)
    assert torch.equal(cluster_batch(pts, 4), cluster_batch(pts.z, 4))  # CYPoints accepted
    assert torch.equal(cluster_batch(z[:5], 5), torch.arange(5))
    assert torch.equal(cluster_batch(z[:5], 1), torch.zeros(5, dtype=torch.int64))


def test_one_batch_equals_full_clustering(z):
    full = cluster_batch(z, 8)
    for seed in (0, 3):
        assert agreement(batched_clustering(z, 8, 300, seed=seed), full) == pytest.approx(1.0)
        assert agreement(batched_clustering(z, 8, 1000, seed=seed), full) == pytest.approx(1.0)


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("linkage", ["complete", "average"])
def test_batched_recovers_separated_clusters(merge, linkage):
    pts, truth = separated()
    # 240 points, batches of 50: 4 full batches and a short one of 40
    labels = batched_clustering(pts, 4, 50, seed=2, merge=merge, linkage=linkage)
    assert agreement(labels, truth) > 0.9
    assert agreement(labels, cluster_batch(pts, 4)) > 0.9


def _fs_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """d_FS on P^n from its definition, arccos |<a, b>| / (|a| |b|) (eq. 3.2), with numpy."""
    overlap = np.abs(a.conj() @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return np.arccos(np.clip(overlap, 0.0, 1.0))


def _average_linkage(pts: np.ndarray, k: int) -> np.ndarray:
    """scipy's average-linkage tree on the brute-force distances, cut into k clusters."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    d = _fs_distance(pts, pts)
    np.fill_diagonal(d, 0.0)
    labels = fcluster(linkage(squareform((d + d.T) / 2, checks=False), "average"), k, "maxclust") - 1
    assert len(set(labels)) == k
    return labels


@pytest.mark.parametrize("merge", ["nearest", "hungarian"])  # greedy depends on the clusters' numbering
@pytest.mark.parametrize("linkage", ["complete", "average"])
def test_batched_clustering_equals_an_independent_computation(z, merge, linkage):
    """Each step of the module doc recomputed with numpy / scipy on 90 points: seeded batches of 30, scipy's
    average-linkage clusters per batch, the cross-batch cluster distance by brute force, the assignment."""
    from scipy.optimize import linear_sum_assignment

    pts, k, M, seed = z[:90].numpy(), 4, 30, 2
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(seed)).numpy()
    first, *later = (perm[i : i + M] for i in range(0, 90, M))
    l1 = _average_linkage(pts[first], k)
    expected = np.empty(90, dtype=np.int64)
    expected[first] = l1
    reduce = np.max if linkage == "complete" else np.mean
    for idx in later:
        lb = _average_linkage(pts[idx], k)
        d = _fs_distance(pts[first], pts[idx])
        cost = np.array([[reduce(d[np.ix_(l1 == a, lb == b)]) for b in range(k)] for a in range(k)])
        if merge == "nearest":
            to = cost.argmin(0)
        else:
            rows, cols = linear_sum_assignment(cost)
            to = np.empty(k, dtype=np.int64)
            to[cols] = rows
        expected[idx] = to[lb]
    got = batched_clustering(z[:90], k, M, seed=seed, merge=merge, linkage=linkage)
    assert agreement(got, expected) == pytest.approx(1.0)  # the same partition (labels may be renumbered)
    assert agreement(cluster_batch(z[:90], k), _average_linkage(pts, k)) == pytest.approx(1.0)


def test_agreement_is_adjusted_rand():
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert agreement(a, (a + 1) % 3) == pytest.approx(1.0)  # relabelling does not matter
    assert agreement(a, torch.tensor([0, 1, 0, 1, 0, 1])) < 0.1
    with pytest.raises(ValueError):
        agreement(a, a[:3])


def test_figure_writes_png(tmp_path):
    pts, truth = separated(n_centres=3, per=30)
    out = tmp_path / "sub" / "fig2.png"
    res = cluster_figure(pts, out, n_clusters=3, n_batches=3, seed=0)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["path"] == str(out) and res["ari"] == pytest.approx(1.0)
    assert [p.name for p in out.parent.iterdir()] == ["fig2.png"]  # no temp file left behind


def test_bad_inputs_raise(z):
    nan = z[:20].clone()
    nan[3, 1] = float("nan")
    bad = [
        lambda: cluster_batch(z, 0),
        lambda: cluster_batch(z[:5], 6),
        lambda: cluster_batch(torch.empty(0, 5, dtype=torch.complex128), 1),
        lambda: cluster_batch(nan, 2),
        lambda: cluster_batch(torch.zeros(4, 5, dtype=torch.complex128), 2),
        lambda: batched_clustering(z, 0, 10),
        lambda: batched_clustering(z, 11, 10),
        lambda: batched_clustering(z[:5], 6, 10),
        lambda: batched_clustering(z, 3, 0),
        lambda: batched_clustering(z, 3, 10, seed=-1),
        lambda: batched_clustering(z, 3, 10, merge="random"),
        lambda: batched_clustering(z, 3, 10, linkage="single"),
        lambda: batched_clustering(nan, 2, 10),
        lambda: batched_clustering(torch.empty(0, 5, dtype=torch.complex128), 1, 10),
        lambda: cluster_figure(z[:30], "/tmp/never.png", n_clusters=3, n_batches=0),
    ]
    for f in bad:
        with pytest.raises(ValueError):
            f()
