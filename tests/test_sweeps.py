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
from lightning.pytorch.callbacks import Callback

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


def _ends(spec: dict) -> list:
    """The extreme values a parameter can take: min and max of a range, first and last of a list."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return [spec["values"][0], spec["values"][-1]]
    return [spec["min"], spec["max"]]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_swept_value_is_accepted_by_the_swept_model_and_data(path):
    """The network sweep sweeps a NetworkFlow, the kernel sweep a KernelFlow; each parameter, at both ends of its
    range, is an argument the config's model / datamodule class takes and accepts (constructed, no training)."""
    import importlib

    from mflow.geometry.presets import surface_from_args

    cfg = load(path)
    config = yaml.safe_load((ROOT / next(c for c in cfg["command"] if c.startswith("--config=")).split("=", 1)[1])
                            .read_text())
    default = yaml.safe_load((ROOT / "conf" / "default.yaml").read_text())  # train.py reads it first

    def cls_and_args(section, fallback):
        s = config.get(section) or {}
        path_ = s.get("class_path", fallback)
        mod, _, name = path_.rpartition(".")
        args = dict(s.get("init_args") or {}) if "class_path" in s else {**(default.get(section) or {}), **s}
        return getattr(importlib.import_module(mod), name), args

    model_cls, model_args = cls_and_args("model", "mflow.flows.network.NetworkFlow")
    data_cls, data_args = cls_and_args("data", "mflow.data.datamodule.CYDataModule")
    assert model_cls.__name__ == {"network.yaml": "NetworkFlow", "kernel.yaml": "KernelFlow"}[path.name]
    swept = {k: _ends(v) for k, v in cfg["parameters"].items()}
    for end in (0, -1):
        values = {k: v[end] for k, v in swept.items()}
        m = {**model_args, **{k[6:]: v for k, v in values.items() if k.startswith("model.")}}
        d = {**data_args, **{k[5:]: v for k, v in values.items() if k.startswith("data.")}}
        dm = data_cls(**d)
        assert all(dm.hparams[k] == v for k, v in d.items())
        module = model_cls(dm.surface, **m)
        assert all(module.hparams[k] == v for k, v in m.items())
    assert not any(k.startswith("trainer.") for k in swept) or "trainer" in config


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
    args = [a for a in args if not a.startswith("--wandb=")] + ["--wandb=off"]  # no W&B account in tests
    torch.set_num_threads(1)
    seen = {}

    class Validation(Callback):  # what the run logs at validation, where the sweep reads its metric
        def on_validation_end(self, trainer, pl_module):
            seen.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = main(args, callbacks=[Validation()])
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
    assert summary["sigma_final"]["val"] > 0
    metric = cfg["metric"]["name"]  # the sweep's objective is what the run logs under that name
    assert seen[metric] == pytest.approx(summary["sigma_final"]["val"], rel=1e-9)
