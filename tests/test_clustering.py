"""Batched FS-distance clustering (paper sec. 3.1, eq. 3.3) and the Figure 2 writer."""
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


def test_seed_reproducible(z):
    a = batched_clustering(z, 5, 60, seed=4)
    assert torch.equal(a, batched_clustering(z, 5, 60, seed=4))


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
