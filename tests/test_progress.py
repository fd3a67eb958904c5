"""Long phases outside the training loop (sampling, clustering) are never silent: a line now and then in a log."""
import torch

from mflow.data.clustering import batched_clustering
from mflow.geometry.points import sample
from mflow.progress import progress


def test_progress_prints_a_line_now_and_then_without_a_terminal(capsys):
    assert list(progress(range(4), 4, "work", every_s=0.0)) == [0, 1, 2, 3]
    assert capsys.readouterr().out.splitlines() == [f"[mflow] work: {k}/4 done" for k in (1, 2, 3)]
    assert list(progress(range(4), 4, "work", every_s=3600)) == [0, 1, 2, 3]
    assert capsys.readouterr().out == ""  # a short phase prints nothing


def test_clustering_reports_its_mini_batches_and_keeps_its_labels(quintic, capsys, monkeypatch):
    import mflow.progress as p

    monkeypatch.setattr(p.time, "monotonic", iter(range(0, 10_000, 100)).__next__)  # 100 s between calls
    z = sample(quintic, 120, seed=2).z
    quiet = batched_clustering(z, 3, 40, seed=1)
    shown = batched_clustering(z, 3, 40, seed=1, progress=True)
    assert torch.equal(quiet, shown)
    assert "[mflow] clustering 120 points (mini batches): 1/2 done" in capsys.readouterr().out
