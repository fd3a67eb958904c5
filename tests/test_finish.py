"""The L-BFGS finish (mflow.flows.finish, finish.py): the chunked full-batch loss is the whole-set loss, the
finish lowers it, and the finished checkpoint is what evaluate.py reads."""
import json

import pytest
import torch

from mflow import losses
from mflow.cli.finish import finish_checkpoint, main as finish_main
from mflow.cli.resume import resume_arguments
from mflow.cli.train import main as train_main
from mflow.evaluation.checkpoints import load_checkpoint, recorded_splits
from mflow.flows import NetworkFlow
from mflow.flows.finish import full_batch_loss
from mflow.geometry.points import sample


def test_chunked_full_batch_loss_and_gradient_equal_the_whole_set_ones(quintic):
    pts = sample(quintic, 300, seed=4)
    torch.manual_seed(0)
    module = NetworkFlow(surface=quintic, head="multfs", depth=1, width=8, loss_weights={"sigma": 1.0, "ultra_local_square": 0.5})
    module.kappa.fill_(0.02)
    loss = full_batch_loss(module, pts, chunk=70)  # 5 unequal chunks
    chunked = [p.grad.clone() for p in module.model.parameters()]
    module.model.zero_grad()
    b = pts.as_batch()
    whole, _ = losses.total_loss(module.model, b, module.kappa, module.loss_weights)
    whole.backward()
    assert torch.allclose(loss, whole.detach(), rtol=1e-12)
    for g, p in zip(chunked, module.model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-10, atol=1e-15)


def test_finish_lowers_the_train_loss_and_writes_a_checkpoint_evaluate_reads(tmp_path):
    run = tmp_path / "run"
    train_main([f"--run_dir={run}", f"--data.cache_dir={tmp_path / 'data'}", "--data.n_points=600", "--data.batch_size=64",
                "--wandb=off", "--trainer.max_epochs=1", "--model.width=16", "--model.depth=2"])
    ckpt = run / "checkpoints" / "last.ckpt"
    lines = []
    report = finish_checkpoint(ckpt, iterations=5, chunk=128, log=lines.append)
    out = tmp_path / "run" / "checkpoints" / "last-finished.ckpt"
    assert report["loss"][-1] < report["loss"][0] and report["sigma_after"]["train"] < report["sigma_before"]["train"]
    assert json.loads(out.with_suffix(".json").read_text())["sigma_after"] == report["sigma_after"]
    ck = load_checkpoint(out)
    assert ck.module.measure(recorded_splits(ck)["test"])["sigma"] == pytest.approx(report["sigma_after"]["test"], rel=1e-12)
    assert "val sigma" in lines[-1]
    with pytest.raises(ValueError, match="--iterations"):
        finish_main(["--ckpt_path", str(ckpt), "--iterations", "0"])
    with pytest.raises(ValueError, match="written by finish.py"):  # no optimizer state: resuming it would restart Adam
        resume_arguments([f"--ckpt_path={out}"])
    assert resume_arguments([f"--ckpt_path={ckpt}"])[1].run == run  # the run's own checkpoint still resumes
