"""conf/sweeps/*.yaml: valid W&B sweep configs whose agent command line runs train.py with the sampled values.

The schema is checked here (wandb's own validator needs the optional `sweeps` package; it is used too when
installed). The command line is built with wandb's agent code (wandb.sdk.launch.sweeps.utils), exactly as
`wandb agent` builds it, and run in-process through mflow.cli.main.
"""
import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from mflow.cli.train import main

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "conf" / "sweeps").glob("*.yaml"))

TOP_KEYS = {"program", "method", "metric", "parameters", "command", "early_terminate", "name", "description",
            "project", "entity", "run_cap", "controller", "job", "image_uri"}
METHODS = {"grid", "random", "bayes"}
RANGE_DISTS = {"uniform", "q_uniform", "log_uniform", "q_log_uniform", "log_uniform_values", "q_log_uniform_values",
               "inv_log_uniform", "inv_log_uniform_values", "int_uniform", "beta", "q_beta"}
NORMAL_DISTS = {"normal", "q_normal", "log_normal", "q_log_normal"}
DISTS = RANGE_DISTS | NORMAL_DISTS | {"constant", "categorical"}
PARAM_KEYS = {"value", "values", "distribution", "min", "max", "mu", "sigma", "q", "a", "b", "probabilities"}
SECTIONS = {"model", "data", "trainer"}


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def check_parameter(name: str, spec: dict, method: str) -> None:
    assert isinstance(spec, dict) and spec, f"{name}: a parameter is a non-empty mapping"
    assert set(spec) <= PARAM_KEYS, f"{name}: unknown keys {set(spec) - PARAM_KEYS}"
    assert name.split(".")[0] in SECTIONS and "." in name, f"{name}: train.py options are section.key"
    dist = spec.get("distribution")
    if "value" in spec:
        assert set(spec) <= {"value", "distribution"} and dist in (None, "constant"), name
        return
    if "values" in spec:
        vals = spec["values"]
        assert isinstance(vals, list) and vals, f"{name}: values must be a non-empty list"
        assert dist in (None, "categorical"), name
        if "probabilities" in spec:
            p = spec["probabilities"]
            assert len(p) == len(vals) and all(x >= 0 for x in p) and math.isclose(sum(p), 1.0), name
        return
    assert method != "grid", f"{name}: grid search needs value / values"
    if dist is None:  # W&B infers int_uniform / uniform from min and max
        assert "min" in spec and "max" in spec, f"{name}: needs value, values or a distribution"
        dist = "int_uniform" if all(isinstance(spec[k], int) for k in ("min", "max")) else "uniform"
    assert dist in DISTS, f"{name}: unknown distribution {dist}"
    if dist in RANGE_DISTS:
        lo, hi = spec["min"], spec["max"]
        assert isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi, f"{name}: need min < max"
        if dist.endswith("log_uniform_values"):
            assert lo > 0, f"{name}: log_uniform_values needs min > 0"
        if dist == "int_uniform":
            assert isinstance(lo, int) and isinstance(hi, int), f"{name}: int_uniform needs integers"
        if dist.startswith("q_"):
            assert spec.get("q", 1) > 0, name
    if dist in NORMAL_DISTS:
        assert spec.get("sigma", 1) > 0, name


def check_sweep(cfg: dict) -> None:
    assert isinstance(cfg, dict)
    assert set(cfg) <= TOP_KEYS, f"unknown top-level keys {set(cfg) - TOP_KEYS}"
    assert (ROOT / cfg["program"]).is_file(), cfg["program"]
    assert cfg["method"] in METHODS
    if cfg["method"] == "bayes" or "metric" in cfg:
        m = cfg["metric"]
        assert isinstance(m.get("name"), str) and m.get("goal") in ("minimize", "maximize")
    assert isinstance(cfg["parameters"], dict) and cfg["parameters"]
    for name, spec in cfg["parameters"].items():
        check_parameter(name, spec, cfg["method"])
    if "early_terminate" in cfg:
        et = cfg["early_terminate"]
        assert et["type"] == "hyperband" and ("min_iter" in et or "max_iter" in et)
        assert all(isinstance(et[k], int) and et[k] > 0 for k in ("min_iter", "max_iter", "s", "eta") if k in et)
    cmd = cfg["command"]
    assert isinstance(cmd, list) and all(isinstance(c, str) for c in cmd)
    assert cmd[:3] == ["${env}", "${interpreter}", "${program}"] and "${args}" in cmd
    for c in cmd:
        if c.startswith("--config="):
            assert (ROOT / c.split("=", 1)[1]).is_file(), c


def sample_value(spec: dict, rng: random.Random):
    """One value as a W&B agent could receive it."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    dist = spec.get("distribution") or (
        "int_uniform" if all(isinstance(spec[k], int) for k in ("min", "max")) else "uniform")
    lo, hi = spec.get("min"), spec.get("max")
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "log_uniform":
        return math.exp(rng.uniform(lo, hi))
    raise NotImplementedError(dist)


def agent_command(cfg: dict, values: dict) -> list[str]:
    """The command line `wandb agent` builds (wandb_agent.Agent._command_run, non-function branch)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=["python"], program=[cfg["program"]], env=["/usr/bin/env"])
    out = []
    for c in sweep_utils.create_sweep_command(list(cfg["command"])):
        c = str(c)
        out += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return out


def test_there_are_sweeps_for_networks_and_kernels():
    assert {p.name for p in SWEEPS} >= {"network.yaml", "kernel.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_is_a_valid_wandb_sweep(path):
    cfg = load(path)
    check_sweep(cfg)
    assert cfg["metric"] == {"name": "val/sigma", "goal": "minimize"}
    try:
        import sweeps  # wandb's validator (pip install wandb[sweeps]), when present
    except ImportError:
        return
    assert not sweeps.schema_violations_from_proposed_config(cfg)


def test_the_checker_refuses_broken_sweeps():
    good = load(ROOT / "conf" / "sweeps" / "network.yaml")
    bad_specs = [
        {"distribution": "log_uniform_values", "min": 0.0, "max": 1.0},
        {"distribution": "uniform", "min": 1.0, "max": 0.5},
        {"values": []},
        {"distribution": "nonsense", "min": 0, "max": 1},
        {"min": 0.1},
    ]
    for spec in bad_specs:
        cfg = {**good, "parameters": {"model.lr": spec}}
        with pytest.raises((AssertionError, KeyError)):
            check_sweep(cfg)
    with pytest.raises(AssertionError):
        check_sweep({**good, "method": "bayesian"})
    with pytest.raises(AssertionError):
        check_sweep({**good, "command": ["${env}", "${interpreter}", "${program}"]})


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
@pytest.mark.parametrize("trial", [0, 1])
def test_agent_command_runs_train_py_with_the_sampled_values(path, trial, tmp_path):
    cfg = load(path)
    values = {k: sample_value(spec, random.Random(f"{path.name}:{k}:{trial}")) for k, spec in cfg["parameters"].items()}
    cmd = agent_command(cfg, values)
    assert cmd[:3] == ["/usr/bin/env", "python", "train.py"]
    for k, v in values.items():
        assert f"--{k}={v}" in cmd  # the `--name=value` form of ${args}
    args = cmd[3:] + [
        "--trainer.fast_dev_run=1", "--data.n_points=600", f"--run_dir={tmp_path / 'run'}",
        f"--data.cache_dir={tmp_path / 'data'}", "--trainer.enable_progress_bar=false",
    ]
    args = [a for a in args if not a.startswith("--wandb=")] + ["--wandb=disabled"]  # no W&B account in tests
    torch.set_num_threads(1)
    trainer = main(args)
    assert trainer.state.finished
    module, dm = trainer.lightning_module, trainer.datamodule
    for k, v in values.items():
        section, name = k.split(".", 1)
        got = {"model": module.hparams, "data": dm.hparams}[section][name]
        assert got == v and type(got) is type(v), f"{k}: sampled {v!r}, train.py got {got!r}"
    config_arg = next((c for c in cmd if c.startswith("--config=")), None)
    if config_arg and "kernel" in config_arg:
        assert type(module).__name__ == "KernelFlow" and module.kernel_params["inverse"] is True  # sigma: inverse width
    else:
        assert not any(type(c).__name__ == "NTKDrift" for c in trainer.callbacks)  # sweeps do not pay for NTKDrift
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert cfg["metric"]["name"] == "val/sigma" and summary["sigma_final"]["val"] > 0  # the sweep metric is reported
