"""Width study: the paper's feature-learning argument, measured.

The same architecture is trained at growing widths, each run a train.py run (mflow.cli.main) on the same
points, in the config's arms (conf/studies/width.yaml has five):

  network      the network with the config's optimizer (Adam): its features, and so its NTK, can move;
  linearized   its linearization at initialisation (eq. 2.10) with the same optimizer: the metric-NTK is
               frozen (eq. 2.11), but Adam's preconditioning is not a kernel flow;
  frozen_ntk   the linearization trained by plain SGD: every step is exactly the discrete frozen
               metric-NTK flow of eq. 2.12 with the width-w empirical NTK at initialisation
               (tests/test_ntk.py::test_sgd_step_of_the_linearized_model_is_the_frozen_ntk_flow);
  network_sgd  the network trained by that same SGD: the comparison at equal optimizer;
  lazy_sgd     the network with a 10x smaller SGD step: the lazy regime, where the NTK drift after a fixed
               budget falls with width (NTK parametrisation; docs/results/feature_learning.md for the exponents).

NTKDrift runs on the arms that train the network itself: the drift after the whole budget, and after the config's
``early_drift_step`` steps (the small-drift regime); its first measurement also gives the distance of the empirical
network kernel at initialisation to the analytic infinite-width ReLU NTK.

  python studies/width.py [--config conf/studies/width.yaml] [--out_dir runs/width-study] [--widths 64 256]

Writes <out>/width_study.json (every run's gains and drift, and the fitted exponents), width_study.md
(the table) and width_study.png. A run that finished (its summary.json exists) is not rerun, so a killed
study resumes where it stopped (a killed run from its last.ckpt); a run that fails (e.g. its metric leaves the
positive-definite cone) is recorded with its error (<run>/error.json; delete it to retry) and the study goes on.
Each run directory keeps the train.py arguments it was made with (study_args.json): an --out_dir whose runs were
made with other settings is refused rather than mixed in.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow.cli.options import Parser  # noqa: E402
from mflow.cli.train import main as train  # noqa: E402
from mflow.evaluation import fit_power_law  # noqa: E402
from mflow.io import atomic_write, pyplot, write_json, write_png  # noqa: E402
from mflow.callbacks import NTKDrift  # noqa: E402

REQUIRED = ("widths", "args", "arms")


def load_config(path: Path) -> dict:
    """The study config, checked: widths (positive integers), args and arms (train.py --key: value maps)."""
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict) or any(k not in cfg for k in REQUIRED):
        raise ValueError(f"{path}: a width-study config needs the keys {REQUIRED}")
    widths = cfg["widths"]
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"{path}: widths must be a non-empty list of positive integers, got {widths!r}")
    for arm, extra in cfg["arms"].items():
        if not isinstance(extra, dict):
            raise ValueError(f"{path}: arm {arm!r} must map train.py keys to values, got {extra!r}")
    return cfg


def drifts(cfg: dict, arm: str) -> bool:
    """NTKDrift runs on the arms that train the network itself (a linearized model's NTK cannot move)."""
    return str(cfg["arms"][arm].get("model.linearize", False)).lower() != "true"


def run_arm(cfg: dict, width: int, arm: str, run_dir: Path) -> dict:
    """One train.py run; returns its summary (plus the NTK drift on the drift arms). A finished run is read back,
    a killed one resumes from its last.ckpt, a failed one (error.json) is reported, not rerun."""
    summary_path, error_path, args_path = run_dir / "summary.json", run_dir / "error.json", run_dir / "study_args.json"
    opts = {**cfg["args"], **cfg["arms"][arm], "model.width": width}
    args = [f"--{k}={v}" for k, v in opts.items()] + [
        f"--run_dir={run_dir}", f"--wandb={cfg.get('wandb', 'off')}",
        "--trainer.callbacks=[]",  # not the default config's NTKDrift: the study sets its own, on the drift arms
    ]
    record = {"args": args, "drift": cfg.get("drift", {}) if drifts(cfg, arm) else None}
    if args_path.exists() and json.loads(args_path.read_text()) != record:
        raise SystemExit(f"{run_dir} was run with other settings (see {args_path}): choose another --out_dir")
    if error_path.exists():
        return json.loads(error_path.read_text())
    if not summary_path.exists():
        write_json(args_path, record)
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            args.append(f"--ckpt_path={last}")
        callbacks = [NTKDrift(**cfg.get("drift", {}))] if drifts(cfg, arm) else []
        try:
            train(args, callbacks=callbacks)
        except (FloatingPointError, torch.linalg.LinAlgError) as e:  # non-PD metric, NaN loss: record, go on
            error = {"width": width, "arm": arm, "error": f"{type(e).__name__}: {e}"}
            write_json(error_path, error)  # delete it to try the run again
            return error
    s = json.loads(summary_path.read_text())
    out = {"width": width, "arm": arm, "gain": s["gain"], "sigma_final": s["sigma_final"],
           "seconds_per_epoch": s["seconds_per_epoch"], "ntk": s.get("ntk_drift")}
    drift_path = run_dir / "ntk_drift.json"
    if drift_path.exists():
        series = json.loads(drift_path.read_text())["series"]
        out["analytic_distance_init"] = series[0].get("analytic_distance")
        early = cfg.get("early_drift_step")
        out["drift_early"] = next((e["relative_change"] for e in series if e["step"] == early), None)
    return out


def power_fit(xs, ys) -> dict | None:
    """y = a x^p fitted in log-log over the entries with y > 0: {'exponent': p, 'prefactor': a}; None with < 2."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    a, p = fit_power_law(*zip(*pts))
    return {"exponent": p, "prefactor": a}


def analyse(results: list[dict], widths: list[int], arms: list[str], drift_arms: list[str]) -> dict:
    """Per-arm test gains against width, and the exponents of drift and analytic distance against width."""
    ok = {(r["width"], r["arm"]): r for r in results if "error" not in r}

    def series(arm, get):
        return [get(ok[(w, arm)]) if (w, arm) in ok else None for w in widths]

    drift = {a: series(a, lambda r: (r.get("ntk") or {}).get("relative_change")) for a in drift_arms}
    early = {a: series(a, lambda r: r.get("drift_early")) for a in drift_arms}
    init = series(drift_arms[0], lambda r: r.get("analytic_distance_init")) if drift_arms else []
    return {
        "widths": widths,
        "test_gain": {a: series(a, lambda r: r["gain"]["test"]) for a in arms},
        "train_gain": {a: series(a, lambda r: r["gain"]["train"]) for a in arms},
        "drift": drift,
        "drift_fit": {a: power_fit(widths, v) for a, v in drift.items()},
        "drift_early": early,
        "drift_early_fit": {a: power_fit(widths, v) for a, v in early.items()},
        "analytic_distance_init": init,
        "analytic_distance_fit": power_fit(widths, init) if init else None,
    }


def table(a: dict, arms: list[str]) -> str:
    """The study as a markdown table: test gain per arm, NTK drift of the network arms, distance to the analytic NTK."""
    def f(v):
        return "failed" if v is None else f"{v:.3g}"

    early = [x for x in a["drift_early"] if any(v is not None for v in a["drift_early"][x])]
    head = (["width"] + [f"test gain: {x}" for x in arms] + [f"drift: {x}" for x in a["drift"]]
            + [f"early drift: {x}" for x in early] + ["init kernel vs analytic"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, w in enumerate(a["widths"]):
        cells = ([str(w)] + [f(a["test_gain"][x][i]) for x in arms] + [f(a["drift"][x][i]) for x in a["drift"]]
                 + [f(a["drift_early"][x][i]) for x in early])
        cells.append(f(a["analytic_distance_init"][i]) if a["analytic_distance_init"] else "-")
        rows.append("| " + " | ".join(cells) + " |")
    fits = [f"drift of {x} ~ width^{fit['exponent']:.3f}" for x, fit in a["drift_fit"].items() if fit]
    fits += [f"early drift of {x} ~ width^{fit['exponent']:.3f}" for x, fit in a["drift_early_fit"].items() if fit]
    if a["analytic_distance_fit"]:
        fits.append(f"init kernel vs analytic ~ width^{a['analytic_distance_fit']['exponent']:.3f}")
    return "\n".join(rows) + "\n\n" + "; ".join(fits) + "\n"


def figure(a: dict, arms: list[str]):
    """Left: test-sigma gain against width per arm. Right: NTK drift and init-vs-analytic distance, log-log, with fits."""
    plt = pyplot()

    w = a["widths"]
    color = {arm: f"C{i}" for i, arm in enumerate(arms)}  # one colour per arm in both panels
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm in arms:
        pts = [(x, y) for x, y in zip(w, a["test_gain"][arm]) if y is not None]
        if pts:
            left.plot(*zip(*pts), marker="o", color=color[arm], label=arm)
    left.set_xscale("log", base=2)
    left.set_xlabel("width")
    left.set_ylabel("test sigma gain")
    left.set_title("network vs linearization vs frozen NTK")
    left.legend()
    curves = [(f"drift: {x}", a["drift"][x], a["drift_fit"][x], color[x], "o") for x in a["drift"]]
    curves += [(f"early drift: {x}", a["drift_early"][x], a["drift_early_fit"][x], color[x], "^") for x in a["drift_early"]]
    curves.append(("init kernel vs analytic", a["analytic_distance_init"], a["analytic_distance_fit"], "k", "s"))
    for label, ys, fit, c, marker in curves:
        pts = [(x, y) for x, y in zip(w, ys) if y is not None and y > 0]
        if not pts:
            continue
        right.plot(*zip(*pts), marker=marker, ls="-" if marker != "^" else ":", color=c,
                   label=label + (f" (slope {fit['exponent']:.2f})" if fit else ""))
        if fit:
            right.plot(w, [fit["prefactor"] * x ** fit["exponent"] for x in w], ls="--", lw=0.8, color=c)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("width")
    right.set_ylabel("relative Frobenius distance")
    right.set_title("NTK drift (full budget; early: triangles); kernel at init")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                renamed={"--out": "--out_dir"})
    ap.add_argument("--config", type=Path, default=ROOT / "conf" / "studies" / "width.yaml")
    ap.add_argument("--out_dir", type=Path, default=Path("runs") / "width-study")
    ap.add_argument("--widths", type=int, nargs="+", help="override the config's widths")
    ap.add_argument("--arms", nargs="+", help="run only these arms")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override shared train.py arguments (an arm's own settings win)")
    opts = ap.parse_args(argv)
    cfg = load_config(opts.config)
    widths = opts.widths or cfg["widths"]
    arms = opts.arms or list(cfg["arms"])
    unknown = [x for x in arms if x not in cfg["arms"]]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; the config has {list(cfg['arms'])}")
    for kv in opts.set:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {kv!r}")
        cfg["args"][key] = value
    results = []
    for w in widths:
        for arm in arms:
            r = run_arm(cfg, w, arm, opts.out_dir / f"w{w}" / arm)
            results.append(r)
            print(f"[width study] width {w} {arm}: " + (r["error"] if "error" in r else f"test gain {r['gain']['test']:.3g}"))
    a = analyse(results, widths, arms, [x for x in arms if drifts(cfg, x)])
    a["runs"] = results
    write_json(opts.out_dir / "width_study.json", a)
    md = table(a, arms)
    atomic_write(opts.out_dir / "width_study.md", lambda tmp: Path(tmp).write_text(md))
    write_png(opts.out_dir / "width_study.png", figure(a, arms), dpi=110)
    print(md)
    return a


if __name__ == "__main__":
    main()
