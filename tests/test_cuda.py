"""On CUDA, the same figures as on the CPU to round-off: training, the metric-NTK, the frozen-kernel flow.

Marked `cuda` and skipped without a CUDA device (bench/device_check.sh runs them on a lent GPU).
"""
import json

import pytest
import torch

from mflow.cli.train import main
from mflow.flows.kernel import FrozenKernelFlow
from mflow.geometry import volume
from mflow.geometry.points import sample
from mflow.kernels.registry import kernel as make_kernel
from mflow.models.metric import MetricModel
from mflow.ntk import metric_ntk

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("head", ["multfs", "phifs", "bihomogeneous"])
def test_training_on_cuda_gives_the_cpu_figures(tmp_path, head):
    """Two epochs of the same run (same points, seeds, batches) on CPU and on CUDA: the same sigmas to 1e-8."""
    summaries = {}
    for accel in ("cpu", "gpu"):
        run = tmp_path / accel
        main([f"--run_dir={run}", f"--data.cache_dir={tmp_path / 'data'}", "--data.n_points=1000", "--data.batch_size=100",
              "--wandb=off", "--trainer.max_epochs=2", f"--trainer.accelerator={accel}", "--trainer.devices=1",
              f"--model.head={head}", "--model.activation=gelu", "--model.width=32", "--model.depth=2"])
        summaries[accel] = json.loads((run / "summary.json").read_text())["sigma_final"]
    for split in ("train", "val", "test"):
        assert summaries["gpu"][split] == pytest.approx(summaries["cpu"][split], rel=1e-8)


@pytest.mark.parametrize("head", ["multfs", "phifs"])
def test_metric_ntk_on_cuda_equals_the_cpu(quintic, head):
    pts = sample(quintic, 24, seed=2)
    torch.manual_seed(0)
    m = MetricModel(quintic, head, depth=2, width=16, features="invariant" if head == "phifs" else "chart", out_scale=0.3)
    K = metric_ntk(m, pts, kind="full")
    on_gpu = tuple(t.cuda() for t in (pts.z, pts.patch, pts.elim))
    Kc = metric_ntk(m.cuda(), on_gpu, kind="full").cpu()
    assert torch.allclose(Kc, K, rtol=1e-10, atol=1e-14 * float(K.abs().max()))


@pytest.mark.parametrize("chart_mode", ["ambient", "reject"])
def test_frozen_kernel_flow_on_cuda_equals_the_cpu(quintic, chart_mode):
    """Ten flow steps of the Gaussian kernel flow: the same train sigma and predicted test metric."""
    pts = sample(quintic, 400, seed=9)
    train, test = pts[:300], pts[300:]
    kappa = float(volume.kappa(train.weights, volume.real_det(train.g_fs), train.omega_sq))
    out = {}
    for device in ("cpu", "cuda"):
        lr = {"ambient": 3.0, "reject": 0.003}[chart_mode]  # steps that lower sigma within 10 steps here
        f = FrozenKernelFlow(quintic, make_kernel("gaussian", quintic, sigma=0.3), lr=lr, chart_mode=chart_mode,
                             device=device).attach(train, kappa)
        sigma0 = float(f.train_sigma())
        for _ in range(10):
            f.flow_step()
        out[device] = (float(f.train_sigma()), f.predict_metric(test).cpu())
    assert out["cpu"][0] < 0.9 * sigma0  # the flow moved
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=1e-10)
    assert torch.allclose(out["cuda"][1], out["cpu"][1], rtol=1e-10, atol=1e-14)
