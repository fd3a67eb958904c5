"""Evaluation of trained metric flows (networks and frozen kernels) on train, test and noised points.

``evaluate(ckpts, out, ...)`` (the logic of ``python evaluate.py``) loads each mflow checkpoint
(mflow.evaluation.checkpoints), restores its manifold and data identity from it, and measures, for the model
and for the FS metric on the same points (gain = sigma_FS / sigma_model, docs/conventions.md section 5):

* its train points;
* fresh test points (Shiffman-Zelditch, a seed that is not the data seed), with their FS distance to the
  nearest train point (mflow.geometry.distance.NearestIndex, exact);
* noised points at increasing distance from the train set (mflow.evaluation.noise): the paper's Gaussian noise
  on the homogeneous coordinates and/or points moved along X to requested FS distances; per level the mean
  shortest FS distance to the train set, sigma, gain and the points where the metric is not positive definite
  (paper Fig. 3 left);
* the Ricci measure on train and test points where the model has second derivatives (networks);
* on request (euler=N), the Euler characteristic of the model's and g_FS's metric by Gauss-Bonnet-Chern on N fresh
  points of all charts (mflow.evaluation.euler; smooth networks only, on the CPU);

and, on request, the distance scaling of Fig. 3 right and the paper's extrapolation (mflow.evaluation.scaling).
Results: <out>/eval.json (atomic, written last), gain_vs_distance.png (and distance_scaling.png), logged to
W&B when a run is active; nothing is written when an input is refused (all checkpoints are checked first).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mflow.data.pointset import PointSetError, is_cymetric_file, load_cymetric, load_pointset, sample_pointset
from mflow.data.population import POPULATIONS
from mflow.geometry.distance import NearestIndex
from mflow.geometry.cicy import CompleteIntersection
from mflow.geometry.points import CYPoints
from mflow.io import check_writable, write_json, write_png

from . import noise
from .checkpoints import EvaluationError, LoadedCheckpoint, check_train_data, load_checkpoint, train_points
from .euler import check_euler_points, check_smooth, euler_line, euler_report
from .measures import measure, ricci_measures, stats
from .overlap import overlap_warning, train_overlap
from .plots import gain_curve, plot_distance_scaling, plot_gain_vs_distance
from .scaling import DEFAULT_SCALING_N, distance_scaling, points_needed

EVAL_FORMAT = 1
DEFAULT_VARIANCES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_DISTANCES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
DEFAULT_SEED = 7_654_321


def load_test_points(path, surface: CompleteIntersection | None = None) -> tuple[CYPoints, CompleteIntersection]:
    """Test points from an mflow point-set file (or a cymetric dataset.npz, given the surface)."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"test data {path} does not exist")
    try:
        if is_cymetric_file(path):
            if surface is None:
                raise EvaluationError(f"{path} is a cymetric file (no manifold recorded): it needs the checkpoint's manifold")
            return load_cymetric(path, surface), surface
        ps = load_pointset(path, surface)
        return ps.points, ps.surface
    except PointSetError as e:
        raise EvaluationError(f"test data {path}: {e}") from None


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda was asked for but CUDA is not available")
    return torch.device(device)


def _place(ck: LoadedCheckpoint, device: torch.device, probe: CYPoints) -> str:
    """Move a network to the device if its forward works there (kernel flows stay on the CPU)."""
    if device.type == "cpu" or ck.kind == "kernel_flow":
        return "cpu"
    try:
        ck.module.to(device)
        ck.module.predict_metric(probe[:2])
        return str(device)
    except Exception as e:  # noqa: BLE001 - e.g. geometry code that builds CPU tensors
        print(f"[mflow] evaluate: the model does not run on {device} ({type(e).__name__}: {str(e)[:120]}); using the CPU")
        ck.module.to("cpu")
        return "cpu"


def evaluate_checkpoint(
    ck: LoadedCheckpoint,
    test: CYPoints,
    *,
    seed: int,
    mode: str = "both",
    variances=DEFAULT_VARIANCES,
    distances=DEFAULT_DISTANCES,
    n_noise: int = 1000,
    n_distance: int = 2000,
    ricci_points: int = 500,
    keep_chart: bool = False,
    device: torch.device = torch.device("cpu"),
    log=print,
    overlap: bool = False,
    euler_points: CYPoints | None = None,
) -> dict:
    """All measures of one checkpoint (module doc); returns its eval.json section. keep_chart: noised points are
    written in their train point's chart (the paper's one-chart points keep their chart). overlap: report how many
    test points are train points (test points from a user's file). euler_points: also the section ``euler``, the
    Euler characteristic on these points (mflow.evaluation.euler.euler_report; check_smooth first)."""
    t0 = time.perf_counter()
    timings = {}
    train = train_points(ck)
    timings["train_points"] = time.perf_counter() - t0
    used = _place(ck, device, train)
    index = NearestIndex(train.z, ck.surface)
    out = {
        "path": str(ck.path), "label": ck.label, "kind": ck.kind,
        "class": ck.class_path,
        "manifold": {"name": ck.surface.name, "params": ck.surface.params, "fingerprint": ck.surface.fingerprint()},
        "model": {k: v for k, v in ck.hparams.items() if not k.startswith("_")},
        "data": ck.data, "epoch": ck.epoch, "global_step": ck.global_step, "device": used,
    }
    t = time.perf_counter()
    out["train"] = measure(ck.module, train)
    out["train"]["ricci"] = ricci_measures(ck, train, ricci_points)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    out["test"] = measure(ck.module, test)
    out["test"]["seed"] = seed
    sub = test[: min(n_distance, len(test))] if n_distance > 0 else test[:0]
    out["test"]["distance_to_train"] = stats(index.query(sub.z)[0]) if len(sub) else stats(torch.zeros(0))
    if overlap:
        out["test"]["train_overlap"] = train_overlap(test.z, train.z, ck.surface)
    out["test"]["ricci"] = ricci_measures(ck, test, ricci_points)
    timings["test"] = time.perf_counter() - t

    # the same train points are noised at every level, so that the curve is smooth in the level
    gen = torch.Generator().manual_seed(seed + 1)
    rows = torch.randperm(len(train), generator=gen)[: min(n_noise, len(train))]
    base = train[rows]
    noised = {"n_points": len(base), "gaussian": [], "manifold": []}
    if mode in ("gaussian", "both"):
        t = time.perf_counter()
        for k, v in enumerate(variances):
            npts = noise.gaussian_noised(ck.surface, base, float(v), torch.Generator().manual_seed(seed + 100 + k), keep_chart)
            d, _ = index.query(npts.points.z, upper=npts.offset)
            entry = {"variance": float(v), **measure(ck.module, npts.points), "distance_to_train": stats(d),
                     "distance_to_origin": stats(npts.offset),
                     "residual": {"mean": float(npts.residual.mean()), "max": float(npts.residual.max())},
                     "chart_changed": float(((npts.points.patch != base.patch) | (npts.points.elim != base.elim)).double().mean())}
            noised["gaussian"].append(entry)
        timings["gaussian"] = time.perf_counter() - t
    if mode in ("manifold", "both"):
        t = time.perf_counter()
        for k, dist in enumerate(distances):
            npts = noise.manifold_noised(ck.surface, base, float(dist), torch.Generator().manual_seed(seed + 200 + k),
                                         keep_chart=keep_chart)
            if len(npts.points) == 0:
                noised["manifold"].append({"distance": float(dist), "n": 0, "dropped": npts.dropped})
                continue
            d, _ = index.query(npts.points.z, upper=npts.offset)
            entry = {"distance": float(dist), **measure(ck.module, npts.points), "dropped": npts.dropped,
                     "distance_to_train": stats(d), "distance_to_origin": stats(npts.offset),
                     "residual": {"max": float(npts.residual.max())}}
            noised["manifold"].append(entry)
        timings["manifold"] = time.perf_counter() - t
    out["noised"] = noised
    if euler_points is not None:
        t = time.perf_counter()
        out["euler"] = euler_report(ck, euler_points, seed)
        timings["euler"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    out["seconds"] = timings
    return out


def default_out(paths: list[Path]) -> Path:
    """Next to the checkpoint: <its folder>/eval; several: <their common folder>/eval."""
    dirs = [p.resolve().parent for p in paths]
    if len(set(dirs)) == 1:
        return dirs[0] / "eval"
    return Path(os.path.commonpath([str(d) for d in dirs])) / "eval"


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    return str(x)


def print_table(results: list[dict], file=sys.stdout) -> None:
    for r in results:
        print(f"\n{r['label']}  [{r['manifold']['name']}, {r['kind']}]  {r['path']}", file=file)
        print(f"  {'points':<22}{'n':>8}{'mean dist':>11}{'sigma_FS':>10}{'sigma':>11}{'gain':>10}", file=file)

        def row(name, e, dist):
            ds = f"{dist:.3g}" if dist is not None else "-"
            print(f"  {name:<22}{e['n']:>8}{ds:>11}{e['sigma_fs']:>10.4g}{e['sigma']:>11.4g}{e['gain']:>10.4g}", file=file)

        row("train", r["train"], 0.0)
        row(f"test ({r['test'].get('source') or 'seed ' + str(r['test']['seed'])})", r["test"],
            r["test"]["distance_to_train"]["mean"])
        for e in r["noised"]["gaussian"]:
            row(f"gaussian v={e['variance']:.0e}", e, e["distance_to_train"]["mean"])
        for e in r["noised"]["manifold"]:
            if e.get("n"):
                row(f"on X d={e['distance']:.0e}", e, e["distance_to_train"]["mean"])
        for s in ("train", "test"):
            ric = r[s].get("ricci")
            if ric:
                print(f"  Ricci measure on {ric['n']} {s} points: model {ric['model']:.4g}, FS {ric['fs']:.4g}", file=file)
        if "euler" in r:
            print(euler_line(r["label"], r["euler"]), file=file)


def _log_wandb(report: dict, pngs: dict[str, Path]) -> bool:
    try:
        import wandb
    except ImportError:
        return False
    if wandb.run is None:
        return False
    data = {}
    for i, r in enumerate(report["checkpoints"]):
        key = f"eval/{i}"
        for s in ("train", "test"):
            for m in ("sigma", "sigma_fs", "gain"):
                data[f"{key}/{s}/{m}"] = r[s][m]
        for mode in ("gaussian", "manifold"):
            for e in r["noised"][mode]:
                if e.get("n"):
                    lvl = e.get("variance", e.get("distance"))
                    data[f"{key}/{mode}/{lvl:g}/gain"] = e["gain"]
                    data[f"{key}/{mode}/{lvl:g}/distance"] = e["distance_to_train"]["mean"]
        if r.get("euler") and r["euler"]["model"]["chi"] is not None:
            data[f"{key}/euler/chi"] = r["euler"]["model"]["chi"]
    for name, p in pngs.items():
        data[f"eval/{name}"] = wandb.Image(str(p))
    wandb.log(data)
    return True


def evaluate(
    ckpts,
    out=None,
    *,
    n_test: int = 10_000,
    seed: int = DEFAULT_SEED,
    mode: str = "both",
    variances=DEFAULT_VARIANCES,
    distances=DEFAULT_DISTANCES,
    n_noise: int = 1000,
    n_distance: int = 2000,
    ricci_points: int = 500,
    keep_chart: bool = False,
    test_data=None,
    scaling: bool = False,
    scaling_n=DEFAULT_SCALING_N,
    scaling_budget: float = 60.0,
    target_gains=(),
    fit=None,
    device: str = "auto",
    quiet: bool = False,
    population: str | None = None,
    euler: int | None = None,
) -> tuple[dict, Path]:
    """Evaluate checkpoints and write <out>/eval.json and the plots; returns (report, out folder).

    population: of the fresh test points and the distance scaling (mflow.data.population); default the population
    each checkpoint was trained on. one_chart test points, and the noised points of one_chart train points, keep
    that chart. A model trained on one chart and evaluated on all-chart points gets a warning (in eval.json too).
    euler: also each checkpoint's Euler characteristic on this many fresh points of all charts (seed ``seed``; one
    point set per manifold), in its section ``euler`` (mflow.evaluation.euler; refused for a network that is not
    C^2, e.g. ReLU). Computed on the CPU whatever ``device``.
    Every input is checked before any work (EvaluationError, nothing written).
    """
    log = (lambda *a, **k: None) if quiet else print
    t_all = time.perf_counter()
    paths = [Path(p) for p in ([ckpts] if isinstance(ckpts, (str, Path)) else ckpts)]
    if not paths:
        raise EvaluationError("no checkpoint given")
    if mode not in ("gaussian", "manifold", "both"):
        raise EvaluationError(f"--mode must be gaussian, manifold or both, not {mode!r}")
    if n_test < 1 or n_noise < 1:
        raise EvaluationError("--n_test and --n_noise must be >= 1")
    if any(not (v >= 0 and math.isfinite(v)) for v in variances):
        raise EvaluationError(f"noise variances must be finite and >= 0, got {list(variances)}")
    if any(not (d > 0 and math.isfinite(d)) for d in distances):  # and below the diameter: mflow.evaluation.noise
        raise EvaluationError(f"on-manifold distances must be > 0 (and below the manifold's diameter), got {list(distances)}")
    if any(not g > 0 for g in target_gains):
        raise EvaluationError(f"target gains must be > 0, got {list(target_gains)}")
    if population is not None and population not in POPULATIONS:
        raise EvaluationError(f"--population must be one of {POPULATIONS}, not {population!r}")
    check_euler_points(euler)
    dev = pick_device(device)

    # ---- check everything first: nothing is written when an input is refused
    test_given, test_surface = (None, None)
    if test_data is not None:
        if not Path(test_data).exists():
            raise EvaluationError(f"test data {test_data} does not exist")
        if not is_cymetric_file(test_data):  # mflow point sets name their manifold: check it against the models
            test_given, test_surface = load_test_points(test_data)
    loaded = [load_checkpoint(p, expected_surface=test_surface) for p in paths]
    if test_data is not None and test_given is None:  # a cymetric file: taken to be on the checkpoints' manifold
        if len({ck.surface.fingerprint() for ck in loaded}) > 1:
            raise EvaluationError(f"{test_data} is a cymetric file (no manifold recorded) and the checkpoints are on different manifolds")
        test_given, _ = load_test_points(test_data, loaded[0].surface)
    for ck in loaded:
        check_train_data(ck)
        if euler is not None:
            check_smooth(ck)
        dseed = (ck.data or {}).get("seed")
        if test_given is None and dseed is not None and int(dseed) == int(seed):
            raise EvaluationError(
                f"--seed {seed} is the data seed of {ck.path}: the test points would be the data it was trained on; "
                "choose another seed"
            )
    out = Path(out) if out is not None else default_out(paths)
    check_writable(out, "--out_dir folder")

    # ---- work
    tests: dict[tuple, CYPoints] = {}
    euler_sets: dict[str, CYPoints] = {}
    results, warnings_ = [], []
    for ck in loaded:
        trained_on = (ck.data or {}).get("population", "all_charts")
        pop = population or trained_on
        if trained_on == "one_chart" and pop == "all_charts":
            msg = f"{ck.path} was trained on one chart's points and is evaluated on points of all charts"
            warnings_.append(msg)
            log(f"[mflow] evaluate: warning: {msg}")
        key = (ck.surface.fingerprint(), pop)
        if test_given is not None:
            test = test_given
        elif key not in tests:
            t = time.perf_counter()
            tests[key] = sample_pointset(ck.surface, n_test, seed, population=pop)
            log(f"[mflow] evaluate: {len(tests[key])} {pop} test points on {ck.surface.name} (seed {seed}) in "
                f"{time.perf_counter() - t:.1f} s")
            test = tests[key]
        else:
            test = tests[key]
        log(f"[mflow] evaluate: {ck.path}")
        if euler is not None and ck.surface.fingerprint() not in euler_sets:
            euler_sets[ck.surface.fingerprint()] = sample_pointset(ck.surface, euler, seed)
        result = evaluate_checkpoint(
            ck, test, seed=seed, mode=mode, variances=variances, distances=distances, n_noise=n_noise,
            n_distance=n_distance, ricci_points=ricci_points, keep_chart=keep_chart or pop == "one_chart", device=dev,
            log=log, overlap=test_given is not None,
            euler_points=None if euler is None else euler_sets[ck.surface.fingerprint()],
        )
        result["population"] = {"trained_on": trained_on, "test": pop if test_given is None else "given"}
        if test_given is not None:  # points of a file: how many are the checkpoint's train points
            result["test"].update(seed=None, source=Path(test_data).name)
            msg = overlap_warning(ck.path, test_data, result["test"]["train_overlap"])
            if msg:
                warnings_.append(msg)
                log(f"[mflow] evaluate: warning: {msg}")
        results.append(result)
    report = {
        "format": EVAL_FORMAT, "tool": "mflow evaluate", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": {
            "n_test": n_test if test_given is None else len(test_given), "test_data": str(test_data) if test_data else None,
            "seed": seed, "mode": mode, "variances": list(map(float, variances)), "distances": list(map(float, distances)),
            "n_noise": n_noise, "n_distance": n_distance, "ricci_points": ricci_points, "keep_chart": keep_chart,
            "population": population, "device": str(dev), "threads": torch.get_num_threads(), "euler_points": euler,
        },
        "warnings": warnings_,
        "noise": {
            "gaussian": "N(0, variance) on Re and Im of each homogeneous coordinate of the train point (patch scaling "
                        "z_patch = 1); chart re-chosen at the noised point, or kept (--keep_chart, one_chart points)"
                        + "; dp, |Omega|^2 = 1/|dp/dz_elim|^2, J, g_FS and weights at the noised point (mflow.evaluation.noise)",
            "manifold": "random unit tangent step of FS length s from the train point, Newton projection onto X "
                        "(relative |p| <= 1e-10), s rescaled until the FS distance to the train point is within 2% "
                        "(accepted within 10%) of the requested one",
            "distance": "FS geodesic distance (eq. 3.2) to the nearest train point, exact",
        },
        "checkpoints": results,
    }
    # ---- distance scaling and points needed
    figures = {"gain_vs_distance": plot_gain_vs_distance(results)}
    need_fit = bool(target_gains) and fit is None
    if scaling or need_fit:
        surface = loaded[0].surface
        sc = distance_scaling(surface, scaling_n, seed=seed + 1000, budget_s=scaling_budget, log=log,
                              population=population or (loaded[0].data or {}).get("population", "all_charts"))
        report["distance_scaling"] = sc
        figures["distance_scaling"] = plot_distance_scaling(sc)
    if target_gains:
        if fit is not None:
            a, b, src = float(fit[0]), float(fit[1]), "given (--fit)"
        elif "fit" in report.get("distance_scaling", {}):
            a, b, src = report["distance_scaling"]["fit"]["a"], report["distance_scaling"]["fit"]["b"], "distance scaling"
        else:
            raise EvaluationError("the distance scaling gave fewer than 2 sizes: raise --scaling_budget or pass --fit A B")
        needed = []
        for r in results:
            for curve in ("gaussian", "manifold"):
                d, g = gain_curve(r, curve)
                if len(d) < 2:
                    continue
                for G in target_gains:
                    try:
                        e = points_needed(d, g, G, a, b)
                    except ValueError as err:
                        raise EvaluationError(str(err)) from None
                    needed.append({"checkpoint": r["path"], "label": r["label"], "curve": curve, "fit_source": src, **e})
        report["points_needed"] = needed
    report["seconds_total"] = time.perf_counter() - t_all

    # ---- write (PNGs first, eval.json last: its presence means the evaluation is complete)
    written = {name: write_png(out / f"{name}.png", fig) for name, fig in figures.items()}
    report["files"] = {k: str(v) for k, v in written.items()}
    report["wandb"] = False
    try:
        report["wandb"] = _log_wandb(report, written)
    except Exception as e:  # noqa: BLE001 - logging must not lose the results
        log(f"[mflow] evaluate: W&B logging failed ({type(e).__name__}: {e})")
    write_json(out / "eval.json", _json_safe(report))
    if not quiet:
        print_table(results)
        for e in report.get("points_needed", []):
            n = e["n_points"]
            ns = "infinite" if not math.isfinite(n) else f"{n:.3g}"
            print(f"  points needed for test gain {e['target_gain']:g} ({e['label']}, {e['curve']} curve): "
                  f"mean distance {e['distance']:.3g} -> N = {ns}{' (extrapolated)' if e['extrapolated'] else ''}"
                  f"  [fit {e['fit']['a']:.3g} N^{e['fit']['b']:.3g}, {e['fit_source']}]")
        print(f"\n[mflow] evaluate: results in {out}: eval.json, {', '.join(p.name for p in written.values())}")
    return report, out
