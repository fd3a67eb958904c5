"""muP (model.parametrization: mup) against NTK parametrisation: the coordinate check of Yang et al. ("Tensor
Programs V", fig. 5) on the metric network of a real flow (studies/coordinate_check.py draws it).

After a few optimizer steps the typical change of each hidden layer's activations is fitted as width^a over widths
64..1024: under muP a ~ 0 (Adam and SGD), under NTK parametrisation with SGD a ~ -1/2 (lazy training).
"""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

from coordinate_check import ARMS, coordinate_changes, exponents, probe_batch  # noqa: E402
from mflow.flows.network import NetworkFlow  # noqa: E402
from mflow.models.mlp import MUP_BASE_WIDTH  # noqa: E402

WIDTHS = (64, 256, 1024)


@pytest.fixture(scope="module")
def batch(quintic):
    return probe_batch(quintic)


def fitted(surface, batch, parametrization, optimizer):
    lr = next(lr for p, o, lr in ARMS if (p, o) == (parametrization, optimizer))
    changes = [coordinate_changes(surface, batch, parametrization, optimizer, lr, w) for w in WIDTHS]
    assert all(c > 0 for row in changes for c in row)
    return exponents(WIDTHS, changes)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mup_activation_changes_do_not_depend_on_width(quintic, batch, optimizer):
    a = fitted(quintic, batch, "mup", optimizer)
    assert all(abs(s) < 0.15 for s in a), f"muP ({optimizer}): mean |dh| ~ width^a with a = {a}, expected ~0"


def test_ntk_activation_changes_shrink_with_width(quintic, batch):
    a = fitted(quintic, batch, "ntk", "sgd")
    assert all(-0.7 < s < -0.3 for s in a), f"NTK (sgd): mean |dh| ~ width^a with a = {a}, expected ~ -1/2"


def test_mup_is_standard_at_the_base_width_and_scales_the_readout(quintic, batch):
    """At the base width muP is the standard parametrisation (same function, same learning rate); at 4x the base
    width the read-out's multiplier is 1/4, hidden Adam learning rates are 1/4 and SGD's vector-like ones 4x."""
    std = NetworkFlow(quintic, width=MUP_BASE_WIDTH, parametrization="standard", init_seed=3)
    mup = NetworkFlow(quintic, width=MUP_BASE_WIDTH, parametrization="mup", init_seed=3)
    assert torch.equal(std.metric(batch), mup.metric(batch))
    assert [g["lr"] for g in mup.configure_optimizers()["optimizer"].param_groups] == [std.hparams.lr]
    wide = NetworkFlow(quintic, width=4 * MUP_BASE_WIDTH, parametrization="mup", lr=1e-3)
    readout = wide.model.net.net[-1]
    assert math.isclose(readout.w_scale, 0.25)
    assert 1.6 < float(readout.weight.detach().std() * math.sqrt(readout.weight.shape[1])) < 2.4  # variance m / fan_in, m = 4
    assert {g["lr"] for g in wide.configure_optimizers()["optimizer"].param_groups} == {1e-3, 0.25e-3}
    sgd = NetworkFlow(quintic, width=4 * MUP_BASE_WIDTH, parametrization="mup", lr=1e-3, optimizer="sgd")
    assert {g["lr"] for g in sgd.configure_optimizers()["optimizer"].param_groups} == {1e-3, 4e-3}


def test_mup_linearized_model_keeps_the_multipliers(quintic):
    flow = NetworkFlow(quintic, width=2 * MUP_BASE_WIDTH, parametrization="mup", lr=1e-3, linearize=True)
    groups = flow.configure_optimizers()["optimizer"].param_groups
    assert sorted(g["lr"] for g in groups) == [0.5e-3, 1e-3]
    n_hidden = sum(p.numel() for g in groups if g["lr"] == 0.5e-3 for p in g["params"])
    assert n_hidden == 2 * (2 * MUP_BASE_WIDTH) ** 2  # depth 3: two hidden width x width matrices
