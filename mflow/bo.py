"""Bayesian optimisation of frozen-kernel hyperparameters (paper sec. 3.2), resumable.

    python -m mflow.bo --kernel gaussian --trials 30 --state runs/bo-gauss/state.json \
        --out conf/kernel_gaussian_bo.yaml
    python -m mflow.bo --resume --state runs/bo-gauss/state.json          # after a kill: continues

Each trial draws a FRESH point sample (seed = base_seed + trial: with one fixed data set the optimiser
tunes to the data, as the paper observes), flows ``steps`` frozen-kernel steps on the train split
(mflow.flows.kernel.FrozenKernelFlow, no Lightning) and scores log10 of the validation sigma gain
sigma(g_FS) / sigma(g). Parameters are searched on a log10 scale (bayesian-optimization 3.x, ask/tell:
``suggest()`` / ``register()``); the first ``init_points`` trials are random. A trial whose flow fails
(non-positive-definite metric, non-finite loss) scores ``FAILED_TARGET``.

After every trial the whole state (search settings, trials, optimiser state with its random state) is
written atomically (mflow.io.write_json), so a killed search resumes where it stopped and, with the same
settings, proposes the same points as an uninterrupted one. The best parameters so far are written as a
conf/ YAML that ``python train.py --config`` runs.

The defaults (points, step size and its decay, reduction, normalisation, steps) are those of the shipped
configs conf/kernel_<kernel>.yaml (mflow's ambient variant; a test checks that they agree), so a best gain
found here is what ``python train.py --config`` of the written YAML gives. The Gaussian kernel's sigma is
searched as an INVERSE width (``inverse: true``), as conf/kernel_gaussian.yaml reads Table 1's sigma = 30.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

from .choices import CHART_MODES, MANIFOLDS, METRIC_LOSSES, PD_POLICIES, REDUCTIONS
from .cli.options import Parser, add_num_threads, boolean, set_threads

STATE_VERSION = 1
FAILED_TARGET = -3.0  # log10 gain given to a trial whose flow broke down (a 1000x loss)

# searched parameters per kernel: name -> (low, high), searched as log10; "lr" is the step size
DEFAULT_BOUNDS = {
    "gaussian": {"sigma": (0.3, 300.0), "lr": (1e-3, 1.0)},
    "relu": {"sigma_w": (0.1, 20.0), "sigma_b": (1e-2, 100.0), "lr": (1e-3, 1.0)},
    "cosine": {"sigma_w": (0.1, 100.0), "lr": (1e-3, 1.0)},
    "delta": {"lr": (1e-3, 1.0)},
}
DEFAULT_FIXED = {"relu": {"depth": 1}, "cosine": {"d": 10}, "gaussian": {"inverse": True}}
# the flow settings of conf/kernel_<kernel>.yaml (steps = max_epochs x steps_per_batch); cosine has no shipped config
SHIPPED = {
    "gaussian": {"n_points": 5000, "lr": 0.1583, "lr_step_decay": 0.99, "reduction": "sum", "normalize": True, "steps": 2000},
    "relu": {"n_points": 5000, "lr": 0.1, "lr_step_decay": 0.99, "reduction": "sum", "normalize": True, "steps": 2000},
    "delta": {"n_points": 2000, "lr": 0.3162, "lr_step_decay": 0.99, "reduction": "sum", "normalize": False, "steps": 2000},
    "cosine": {"n_points": 5000, "lr": 0.1, "lr_step_decay": 0.99, "reduction": "sum", "normalize": True, "steps": 2000},
}
STEPS_PER_BATCH = 10  # as in the shipped configs: a trial's steps are max_epochs x this


def _parse_pairs(items: list[str], what: str, ranged: bool) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--{what} expects NAME={'LO:HI' if ranged else 'VALUE'}, got {item!r}")
        k, v = item.split("=", 1)
        try:
            if ranged:
                lo, hi = (float(x) for x in v.split(":"))
                if not (0 < lo < hi and math.isfinite(hi)):
                    raise ValueError
                out[k] = (lo, hi)
            else:
                out[k] = json.loads(v)
        except ValueError:
            raise SystemExit(f"--{what} {item!r}: need {'0 < LO < HI' if ranged else 'a number or JSON value'}") from None
    return out


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m mflow.bo",
        description="Bayesian optimisation of a frozen kernel's hyperparameters; objective: log10 of the "
        "validation sigma gain after a fixed number of flow steps, on a fresh point sample per trial. "
        "Resumable (--resume); writes the best parameters as a train.py config.",
    )
    p.add_argument("--state", required=True, help="JSON state file, rewritten atomically after every trial")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --state with its stored settings (only --trials, --out, --cache_dir, --num_threads apply)")
    p.add_argument("--out", default=None, help="YAML config for the best parameters (default: beside --state)")
    p.add_argument("--kernel", choices=sorted(DEFAULT_BOUNDS), default="gaussian")
    p.add_argument("--param", action="append", metavar="NAME=LO:HI",
                   help="search NAME (a kernel parameter or lr) log-uniformly in [LO, HI]; replaces the kernel's defaults")
    p.add_argument("--fix", action="append", metavar="NAME=VALUE", help="fixed kernel parameter, e.g. depth=1")
    p.add_argument("--lr", type=float, default=None, help="step size when lr is not searched (default: the shipped config's)")
    p.add_argument("--trials", type=int, default=20, help="total number of trials (including resumed ones)")
    p.add_argument("--init_points", type=int, default=5, help="random trials before the GP proposes points")
    p.add_argument("--steps", type=int, default=None, help="flow steps per trial, per cluster (default: the shipped config's, 2000)")
    p.add_argument("--n_points", type=int, default=None, help="points sampled per trial, before the split (default: the shipped config's)")
    p.add_argument("--val_fraction", type=float, default=0.25)
    p.add_argument("--test_fraction", type=float, default=0.25)
    p.add_argument("--n_clusters", type=int, default=1)
    p.add_argument("--cluster_batch_size", type=int, default=10_000)
    p.add_argument("--manifold", default="fermat_quintic", choices=MANIFOLDS)
    p.add_argument("--psi", type=float, default=None)
    p.add_argument("--ambient_n", type=int, default=4)
    p.add_argument("--surface_seed", type=int, default=0)
    p.add_argument("--loss", default="sigma", choices=METRIC_LOSSES)
    p.add_argument("--reduction", default=None, choices=REDUCTIONS)
    p.add_argument("--chart_mode", default="ambient", choices=CHART_MODES)
    p.add_argument("--pd_policy", default="backtrack", choices=PD_POLICIES)
    p.add_argument("--lr_step_decay", type=float, default=None)
    p.add_argument("--normalize", type=boolean, default=None, metavar="true|false",
                   help="rescaled kernel h(x) h(x') k (KernelFlow normalize; default: the shipped config's)")
    p.add_argument("--base_seed", type=int, default=0, help="trial t samples its points with seed base_seed + t")
    p.add_argument("--bo_seed", type=int, default=0, help="random state of the optimiser")
    p.add_argument("--cache_dir", default=None, help="cache the sampled point sets here (default: in memory only)")
    p.add_argument("--stop_after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    add_num_threads(p)
    p.add_argument("--quiet", action="store_true")
    return p


def settings_from_args(a: argparse.Namespace) -> dict:
    bounds = _parse_pairs(a.param, "param", True) or dict(DEFAULT_BOUNDS[a.kernel])
    fixed = {**DEFAULT_FIXED.get(a.kernel, {}), **_parse_pairs(a.fix, "fix", False)}
    clash = set(bounds) & set(fixed)
    if clash:
        raise SystemExit(f"parameters both searched and fixed: {sorted(clash)}")
    for k, v in SHIPPED[a.kernel].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    s = {
        "kernel": a.kernel, "bounds": {k: list(v) for k, v in bounds.items()}, "fixed": fixed, "manifold": a.manifold,
        "psi": a.psi, "ambient_n": a.ambient_n, "surface_seed": a.surface_seed, "n_points": a.n_points,
        "val_fraction": a.val_fraction, "test_fraction": a.test_fraction, "n_clusters": a.n_clusters,
        "cluster_batch_size": a.cluster_batch_size, "steps": a.steps, "loss": a.loss, "reduction": a.reduction,
        "chart_mode": a.chart_mode, "pd_policy": a.pd_policy, "lr_step_decay": a.lr_step_decay,
        "normalize": bool(a.normalize), "init_points": a.init_points, "base_seed": a.base_seed, "bo_seed": a.bo_seed,
        "lr": a.lr,
    }
    for k in ("trials", "steps", "n_points", "n_clusters"):
        if getattr(a, k) < 1:
            raise SystemExit(f"--{k} must be >= 1")
    if a.init_points < 1:
        raise SystemExit("--init_points must be >= 1")
    return s


# ----------------------------------------------------------------------------- one trial
def kernel_params_of(settings: dict, params: dict) -> tuple[dict, float]:
    """(kernel parameters, lr) of a point of the search space (params hold the plain values)."""
    kp = dict(settings["fixed"])
    lr = settings["lr"]
    for k, v in params.items():
        if k == "lr":
            lr = float(v)
        else:
            kp[k] = int(round(v)) if k in ("depth", "d") else float(v)
    return kp, lr


def evaluate(settings: dict, params: dict, seed: int, cache_dir: str | None = None) -> dict:
    """Flow on a fresh sample (seed) with these parameters: {"target", "val_gain", "train_gain", "error"}."""
    import torch

    from .data.clustered import ClusteredDataModule
    from .flows.kernel import FrozenKernelFlow
    from .kernels.registry import kernel

    dm = ClusteredDataModule(
        manifold=settings["manifold"], psi=settings["psi"], ambient_n=settings["ambient_n"],
        surface_seed=settings["surface_seed"], n_points=settings["n_points"], seed=seed,
        val_fraction=settings["val_fraction"], test_fraction=settings["test_fraction"], cache=cache_dir is not None,
        cache_dir=cache_dir,
        n_clusters=settings["n_clusters"], cluster_batch_size=settings["cluster_batch_size"],
    )
    dm.setup()
    kp, lr = kernel_params_of(settings, params)
    flow = FrozenKernelFlow(  # bad settings raise here: they are not a failed trial
        dm.surface, kernel(settings["kernel"], dm.surface, **kp), lr=lr, lr_step_decay=settings["lr_step_decay"],
        loss=settings["loss"], reduction=settings["reduction"], chart_mode=settings["chart_mode"],
        pd_policy=settings["pd_policy"], normalize=settings["normalize"],
    )
    out = {"val_gain": None, "train_gain": None, "error": None}
    try:
        flow.attach(dm.train, dm.kappa_fs, dm.cluster_labels)
        s_val0 = float(dm.val.sigma())
        s_tr0 = float(flow.train_sigma())
        for _ in range(settings["steps"]):
            flow.flow_step()
        out["train_gain"] = s_tr0 / float(flow.train_sigma())
        g_val = flow.predict_metric(dm.val)
        out["val_gain"] = s_val0 / float(dm.val.sigma(g_val))
        if not math.isfinite(out["val_gain"]) or out["val_gain"] <= 0:
            raise FloatingPointError(f"validation gain {out['val_gain']}")
        out["target"] = math.log10(out["val_gain"])
    except (FloatingPointError, ValueError, RuntimeError, torch.linalg.LinAlgError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["target"] = FAILED_TARGET
    return out


# ----------------------------------------------------------------------------- the search
def _optimizer(settings: dict, state: dict | None):
    from bayes_opt import BayesianOptimization

    pbounds = {f"log10_{k}": (math.log10(lo), math.log10(hi)) for k, (lo, hi) in settings["bounds"].items()}
    opt = BayesianOptimization(f=None, pbounds=pbounds, random_state=settings["bo_seed"], verbose=0,
                               allow_duplicate_points=True)
    if state is not None and state.get("optimizer"):
        fd, tmp = tempfile.mkstemp(suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state["optimizer"], f)
            opt.load_state(tmp)
        finally:
            os.unlink(tmp)
    return opt


def _optimizer_state(opt) -> dict:
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        opt.save_state(tmp)
        with open(tmp) as f:
            return json.load(f)
    finally:
        os.unlink(tmp)


def best_trial(state: dict) -> dict | None:
    ok = [t for t in state["trials"] if t["error"] is None]
    return max(ok, key=lambda t: t["target"]) if ok else None


def config_yaml(settings: dict, trial: dict) -> str:
    """A train.py config running the flow of this trial's parameters (fresh data: seed 0)."""
    import yaml

    kp, lr = kernel_params_of(settings, trial["params"])
    steps = settings["steps"]
    per_batch = STEPS_PER_BATCH if steps % STEPS_PER_BATCH == 0 else 1
    epochs = steps // per_batch
    cfg = {
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "callbacks": [],
                    "check_val_every_n_epoch": max(1, epochs // 10), "log_every_n_steps": 1},
        "model": {"class_path": "mflow.flows.KernelFlow", "init_args": {
            "kernel": settings["kernel"], "kernel_params": kp, "lr": lr, "lr_step_decay": settings["lr_step_decay"],
            "loss": settings["loss"], "reduction": settings["reduction"], "chart_mode": settings["chart_mode"],
            "pd_policy": settings["pd_policy"], "normalize": settings["normalize"], "steps_per_batch": per_batch}},
        "data": {"class_path": "mflow.data.clustered.ClusteredDataModule", "init_args": {
            "manifold": settings["manifold"], "psi": settings["psi"], "ambient_n": settings["ambient_n"],
            "surface_seed": settings["surface_seed"], "n_points": settings["n_points"],
            "val_fraction": settings["val_fraction"], "test_fraction": settings["test_fraction"],
            "n_clusters": settings["n_clusters"], "cluster_batch_size": settings["cluster_batch_size"],
            "batch_size": 4096}},
    }
    head = (f"# Best of {trial['of']} Bayesian-optimisation trials (python -m mflow.bo): trial {trial['trial']}, "
            f"validation sigma gain {trial['val_gain']:.4g} after {steps} flow steps (train gain {trial['train_gain']:.4g}).\n")
    return head + yaml.safe_dump(cfg, sort_keys=False)


def write_best_yaml(path: Path, settings: dict, state: dict) -> Path | None:
    from .io import atomic_write

    best = best_trial(state)
    if best is None:
        return None
    text = config_yaml(settings, {**best, "of": len(state["trials"])})

    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, w)


def run(argv=None) -> dict:
    """The search (argv as on the command line); returns the final state dict."""
    a = parser().parse_args(argv)
    from .io import write_json  # heavy imports after argument parsing: --help stays quick

    set_threads(a)  # --num_threads, else the machine's cores shared among the mflow runs on it (mflow.cli.threads)
    state_path = Path(a.state)
    if a.resume:
        if not state_path.exists():
            raise SystemExit(f"--resume: no state file {state_path}")
        state = json.loads(state_path.read_text())
        if state.get("version") != STATE_VERSION:
            raise SystemExit(f"{state_path}: state version {state.get('version')} is not {STATE_VERSION}")
        settings = state["settings"]  # the search settings are the stored ones
        out = Path(a.out or state.get("out") or state_path.with_name("best.yaml"))
    else:
        if state_path.exists():
            raise SystemExit(f"{state_path} exists: pass --resume to continue that search, or choose another --state")
        settings = settings_from_args(a)
        state = {"version": STATE_VERSION, "settings": settings, "trials": [], "optimizer": None}
        out = Path(a.out) if a.out else state_path.with_name("best.yaml")
    state["out"] = str(out)
    warnings.filterwarnings("ignore", module="sklearn")
    opt = _optimizer(settings, state)
    done = len(state["trials"])
    if done >= a.trials and not a.quiet:
        print(f"[mflow.bo] {done} trials already done (--trials {a.trials})")
    names = list(settings["bounds"])
    for t in range(done, a.trials):
        if t < settings["init_points"]:
            point = opt.random_sample(1)[0]
        else:
            point = opt.suggest()
        params = {k: 10 ** float(point[f"log10_{k}"]) for k in names}
        seed = settings["base_seed"] + t
        t0 = time.perf_counter()
        res = evaluate(settings, params, seed, a.cache_dir)
        opt.register(params={f"log10_{k}": float(point[f"log10_{k}"]) for k in names}, target=res["target"])
        trial = {"trial": t, "seed": seed, "params": params, **res, "seconds": time.perf_counter() - t0}
        state["trials"].append(trial)
        state["optimizer"] = _optimizer_state(opt)
        state["best"] = best_trial(state)
        write_json(state_path, state)
        write_best_yaml(out, settings, state)
        if not a.quiet:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in params.items())
            status = f"val gain {res['val_gain']:.4g}" if res["error"] is None else f"FAILED ({res['error'][:80]})"
            print(f"[mflow.bo] trial {t + 1}/{a.trials} (seed {seed}): {shown}: {status}", flush=True)
        if a.stop_after is not None and t + 1 >= a.stop_after:
            break
    if not a.quiet and state.get("best"):
        b = state["best"]
        print(f"[mflow.bo] best: trial {b['trial']}, {b['params']}, val gain {b['val_gain']:.4g}; config {out}")
    return state


def main(argv=None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
