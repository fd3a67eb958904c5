"""Width and parametrisation: as a metric network widens, does its advantage over its own frozen kernel vanish?

Theory: in NTK parametrisation a wide network trains lazily, as its frozen NTK (eq. 2.11-2.12); under the
maximal-update parametrisation (muP, model.parametrization: mup) its features keep moving at every width. Here the
same network (conf/studies/width.yaml: head, loss, points, budget) is trained at each width, in each
parametrisation and for each initialisation seed, on the same points, in four arms:

  network       the network, trained by train.py (mflow.cli.main) with the config's optimizer;
  linearized    its linearisation at initialisation (eq. 2.10), trained the same way (its metric-NTK is frozen);
  frozen_ntk    the frozen flow (eq. 2.12) with the network's empirical metric-NTK at initialisation, from g_FS on
                the first `kernels.train_points` of the train split (mflow.evaluation.after_kernel, as in
                studies/after_kernel.py: the step picked from a grid by a short flow's train gain);
  after_kernel  the same flow with the metric-NTK of the trained network.

Measured at every (parametrisation, seed, width): each arm's test gain sigma_FS / sigma on the run's test split;
the drift of the network's metric-NTK (trace kernel on `kernels.probe_points` validation points) from
initialisation to the end of training (relative change and CKA); the kernel's alignment with the target on the
test points, at initialisation and at the end (studies/after_kernel.py's cosine).

  python studies/width.py [--config conf/studies/width.yaml] [--out_dir runs/width-study]
                          [--widths 64 256] [--parametrizations mup] [--seeds 0] [--arms network]

Writes <out>/width_study.json, width_study.md (the tables and fitted exponents) and width_study.png. Resumable: a
finished run (its summary.json) is not retrained, a killed one resumes from its last.ckpt, and a finished
measurement (<run group>/kernels.json) is not redone; a run that fails (e.g. NaN loss) is recorded with its error
(<run>/error.json; delete it to retry) and the study goes on. Each run keeps the train.py arguments it was made with
(study_args.json): an --out_dir whose runs were made with other settings is refused rather than mixed in. Several
processes may share one --out_dir when they run disjoint --parametrizations / --seeds; a last run without them
assembles everything (--report: from what has finished so far, training nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow.choices import PARAMETRIZATIONS  # noqa: E402
from mflow.cli.options import Parser  # noqa: E402
from mflow.cli.resume import study_run_arguments  # noqa: E402
from mflow.cli.train import main as train  # noqa: E402
from mflow.evaluation import fit_power_law, load_checkpoint  # noqa: E402
from mflow.evaluation.after_kernel import after_kernel_flow, alignment, initial_network  # noqa: E402
from mflow.evaluation.checkpoints import recorded_splits  # noqa: E402
from mflow.geometry.forms import NotPositiveDefiniteError  # noqa: E402
from mflow.io import pyplot, write_json, write_study  # noqa: E402
from mflow.ntk import NTKTooLarge, cka, metric_ntk, relative_change  # noqa: E402

REQUIRED = ("widths", "parametrizations", "seeds", "args", "arms", "kernels")
KERNEL_ARMS = ("frozen_ntk", "after_kernel")
LOOP_KEYS = {"model.width": "--widths", "model.parametrization": "--parametrizations", "model.init_seed": "--seeds"}


def load_config(path: Path) -> dict:
    """The study config, checked: widths and seeds (lists of integers), parametrizations, args and arms
    (train.py --key: value maps), kernels (its keys train_points, probe_points, flow)."""
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict) or any(k not in cfg for k in REQUIRED):
        raise ValueError(f"{path}: a width-study config needs the keys {REQUIRED}")
    for key, least in (("widths", 1), ("seeds", 0)):
        v = cfg[key]
        if not v or not all(isinstance(w, int) and not isinstance(w, bool) and w >= least for w in v):
            raise ValueError(f"{path}: {key} must be a non-empty list of integers >= {least}, got {v!r}")
    bad = [p for p in cfg["parametrizations"] if p not in PARAMETRIZATIONS]
    if bad or not cfg["parametrizations"]:
        raise ValueError(f"{path}: parametrizations must be a non-empty list from {PARAMETRIZATIONS}, got {bad or []}")
    kc = cfg["kernels"]
    if not isinstance(kc, dict) or any(k not in kc for k in ("train_points", "probe_points", "flow")):
        raise ValueError(f"{path}: kernels needs train_points, probe_points and flow (see conf/studies/width.yaml)")
    if "network" not in cfg["arms"]:
        raise ValueError(f"{path}: arms needs 'network' (the kernels are the network's)")
    for arm, extra in cfg["arms"].items():
        if not isinstance(extra, dict):
            raise ValueError(f"{path}: arm {arm!r} must map train.py keys to values, got {extra!r}")
    return cfg


def run_arm(cfg: dict, param: str, seed: int, width: int, arm: str, run_dir: Path, report: bool = False) -> dict | None:
    """One train.py run; returns its summary. A finished run is read back, a killed one resumes from its
    last.ckpt, a failed one (error.json) is reported, not rerun; with `report`, an unfinished run is None."""
    summary_path, error_path, args_path = run_dir / "summary.json", run_dir / "error.json", run_dir / "study_args.json"
    opts = {**cfg["args"], **cfg["arms"][arm], "model.width": width, "model.parametrization": param,
            "model.init_seed": seed}
    args = [f"--{k}={v}" for k, v in opts.items()] + [
        f"--run_dir={run_dir}", f"--wandb={cfg.get('wandb', 'off')}", "--trainer.callbacks=[]"]
    record = {"args": args}
    if args_path.exists() and json.loads(args_path.read_text()) != record:
        raise SystemExit(f"{run_dir} was run with other settings (see {args_path}): choose another --out_dir")
    if error_path.exists():
        return json.loads(error_path.read_text())
    if not summary_path.exists():
        if report:
            return None
        write_json(args_path, record)
        try:
            train(study_run_arguments(run_dir, args))
        except (FloatingPointError, NotPositiveDefiniteError, torch.linalg.LinAlgError) as e:
            error = {"error": f"{type(e).__name__}: {e}"}
            write_json(error_path, error)  # delete it to try the run again
            return error
        if not summary_path.exists():
            raise SystemExit(f"{run_dir}: train.py ended without its summary.json; delete that folder to rerun the run")
    s = json.loads(summary_path.read_text())
    return {"gain": s["gain"], "sigma_final": s["sigma_final"], "seconds_per_epoch": s["seconds_per_epoch"]}


def probe_kernel(model, probe) -> torch.Tensor:
    """The trace metric-NTK [P, P] on the probe points, in the largest Jacobian block that fits metric_ntk's memory
    limit (a wide network's per-point Jacobian is large: at width 1024, 9 x 1M entries)."""
    for block in (64, 16, 4, 1):
        try:
            return metric_ntk(model, probe, kind="trace", block=block).detach()
        except NTKTooLarge:
            continue
    return metric_ntk(model, probe, kind="trace", method="vp").detach()


def measure_kernels(cfg: dict, run_dir: Path, path: Path) -> dict:
    """The frozen-NTK and after-kernel flows, the NTK drift and the alignments of a finished network run
    (written to `path`; read back if it exists)."""
    if path.exists():
        return json.loads(path.read_text())
    kc = cfg["kernels"]
    ck = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    splits = recorded_splits(ck)
    train, test, probe = splits["train"][: kc["train_points"]], splits["test"], splits["val"][: kc["probe_points"]]
    kappa = float(ck.module.kappa)
    out = {}
    for name, module in (("frozen_ntk", initial_network(run_dir)), ("after_kernel", ck.module)):
        model = module.model.eval()
        K = probe_kernel(model, probe)
        try:
            flow = after_kernel_flow(model, module.surface, train, test, kappa, kc["flow"])
        except FloatingPointError as e:
            flow = {"error": f"{type(e).__name__}: {e}"}
        out[name] = {"flow": flow, "alignment": alignment(model, train, test, kappa), "K": K}
    K0, KT = out["frozen_ntk"].pop("K"), out["after_kernel"].pop("K")
    out["drift"] = {"relative_change": relative_change(KT, K0), "cka": cka(KT, K0)}
    write_json(path, out)
    return out


def cell(cfg: dict, out: Path, param: str, seed: int, width: int, arms: list[str], report: bool = False) -> dict:
    """Every arm of one (parametrisation, seed, width): test gains, drift, alignments (with `report`, only what
    has finished: nothing is trained or measured)."""
    group = out / param / f"seed{seed}" / f"w{width}"
    row = {"parametrization": param, "seed": seed, "width": width, "test_gain": {}, "errors": {}}
    for arm in arms:
        r = run_arm(cfg, param, seed, width, arm, group / arm, report)
        if r is None:
            row["errors"][arm] = "not run yet"
        elif "error" in r:
            row["errors"][arm] = r["error"]
        else:
            row["test_gain"][arm] = r["gain"]["test"]
            row.setdefault("seconds_per_epoch", {})[arm] = r["seconds_per_epoch"]
    if "network" in row["test_gain"] and not (report and not (group / "kernels.json").exists()):
        k = measure_kernels(cfg, group / "network", group / "kernels.json")
        for name in KERNEL_ARMS:
            flow = k[name]["flow"]
            if "error" in flow:
                row["errors"][name] = flow["error"]
            else:
                row["test_gain"][name] = flow["test_gain"]
            row.setdefault("alignment", {})[name] = k[name]["alignment"]
        row["drift"] = k["drift"]
    return row


def geometric_mean(xs):
    """Of the positive entries (gains, ratios, drifts over seeds); None without any."""
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def mean(xs):
    """Of the entries that are not None (alignments: cosines, of either sign); None without any."""
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def analyse(rows: list[dict], widths: list[int], params: list[str], arms: list[str]) -> dict:
    """Per parametrisation: each arm's test gain against width (geometric mean over seeds, and its range), the
    network's gain over its frozen NTK and over its linearisation, the drift (relative change, 1 - CKA) with fitted
    exponents, the kernels' alignments (mean over seeds)."""
    def series(p, get, average=geometric_mean):
        return [average([get(r) for r in rows if r["parametrization"] == p and r["width"] == w]) for w in widths]

    def ratio(a, b):
        return lambda r: r["test_gain"][a] / r["test_gain"][b] if a in r["test_gain"] and b in r["test_gain"] else None

    def spread(p, a):
        """Per width: [least, largest] of the arm's test gain over seeds; None with fewer than two seeds."""
        out = []
        for w in widths:
            xs = [r["test_gain"][a] for r in rows if r["parametrization"] == p and r["width"] == w and a in r["test_gain"]]
            out.append([min(xs), max(xs)] if len(xs) > 1 else None)
        return out

    res = {"widths": widths, "seeds": sorted({r["seed"] for r in rows}), "parametrizations": {}}
    for p in params:
        drift = series(p, lambda r: (r.get("drift") or {}).get("relative_change"))
        one_minus_cka = series(p, lambda r: 1 - r["drift"]["cka"] if r.get("drift") else None)
        res["parametrizations"][p] = {
            "test_gain": {a: series(p, lambda r, a=a: r["test_gain"].get(a)) for a in [*arms, *KERNEL_ARMS]},
            "test_gain_range": {a: spread(p, a) for a in [*arms, *KERNEL_ARMS]},
            "network_over_frozen_ntk": series(p, ratio("network", "frozen_ntk")),
            "network_over_linearized": series(p, ratio("network", "linearized")),
            "after_kernel_over_frozen_ntk": series(p, ratio("after_kernel", "frozen_ntk")),
            "drift": drift, "drift_fit": power_fit(widths, drift),
            "one_minus_cka": one_minus_cka, "one_minus_cka_fit": power_fit(widths, one_minus_cka),
            "alignment": {a: series(p, lambda r, a=a: (r.get("alignment") or {}).get(a), mean) for a in KERNEL_ARMS},
        }
    return res


def power_fit(xs, ys) -> dict | None:
    """y = a x^p fitted in log-log over the entries with y > 0: {'exponent': p, 'prefactor': a}; None with < 2."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    a, p = fit_power_law(*zip(*pts))
    return {"exponent": p, "prefactor": a}


def table(a: dict) -> str:
    """Per parametrisation: width, test gain per arm, network / frozen NTK, drift, 1 - CKA, alignments."""
    def f(v):
        return "-" if v is None else f"{v:.3g}"

    def gain(v, lo_hi):
        return f(v) if lo_hi is None else f"{f(v)} ({f(lo_hi[0])}-{f(lo_hi[1])})"

    out = []
    for p, s in a["parametrizations"].items():
        arms = list(s["test_gain"])
        head = (["width"] + [f"test gain: {x}" for x in arms] + ["network / frozen NTK", "network / linearized",
                "NTK drift", "1 - CKA", "alignment at init", "alignment at end"])
        out += [f"### {p}", ""]
        if len(a["seeds"]) > 1:
            out += [f"Seeds {a['seeds']}: gains, ratios and drifts are geometric means over the seeds (test gains: their"
                    " range in brackets), alignments arithmetic means.", ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, w in enumerate(a["widths"]):
            cells = ([str(w)] + [gain(s["test_gain"][x][i], s["test_gain_range"][x][i]) for x in arms]
                     + [f(s[k][i]) for k in ("network_over_frozen_ntk", "network_over_linearized", "drift", "one_minus_cka")]
                     + [f(s["alignment"][k][i]) for k in KERNEL_ARMS])
            out.append("| " + " | ".join(cells) + " |")
        fits = [f"{name} ~ width^{s[key]['exponent']:.2f}" for name, key in
                (("NTK drift", "drift_fit"), ("1 - CKA", "one_minus_cka_fit")) if s[key]]
        out += ["", "; ".join(fits), ""]
    return "\n".join(out)


def figure(a: dict):
    """One panel per parametrisation (test gain against width, per arm; bars: the range over seeds), and one of the
    drift with fits."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    params = list(a["parametrizations"])
    fig, axes = plt.subplots(1, len(params) + 1, figsize=(4.2 * (len(params) + 1), 4))
    w = a["widths"]
    args = a.get("config", {}).get("args", {})
    optimizer = f": {args['model.optimizer']}, lr {args['model.lr']}" if "model.optimizer" in args else ""
    for ax, p in zip(axes, params):
        s = a["parametrizations"][p]
        for i, (arm, ys) in enumerate(s["test_gain"].items()):
            pts = [(x, y, r) for x, y, r in zip(w, ys, s["test_gain_range"][arm]) if y is not None]
            if pts:
                xs, ys, rs = zip(*pts)
                err = [[y - (r or (y, y))[0] for y, r in zip(ys, rs)], [(r or (y, y))[1] - y for y, r in zip(ys, rs)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", color=f"C{i}", capsize=3, label=arm)
        ax.set(yscale="log", xlabel="width", ylabel="test gain sigma_FS / sigma", title=p + optimizer)
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xscale("log", base=2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    lims = [ax.get_ylim() for ax in axes[:-1]]
    for ax in axes[:-1]:  # one scale for the parametrisations' panels
        ax.set_ylim(min(lo for lo, _ in lims), max(hi for _, hi in lims))
    ax = axes[-1]
    for i, p in enumerate(params):
        s = a["parametrizations"][p]
        for key, fit, ls in (("drift", "drift_fit", "-"), ("one_minus_cka", "one_minus_cka_fit", ":")):
            pts = [(x, y) for x, y in zip(w, s[key]) if y is not None and y > 0]
            if not pts:
                continue
            slope = f" (slope {s[fit]['exponent']:.2f})" if s[fit] else ""
            ax.plot(*zip(*pts), marker="o" if ls == "-" else "^", ls=ls, color=f"C{i}",
                    label=f"{p}: {'relative change' if key == 'drift' else '1 - CKA'}{slope}")
    ax.set(yscale="log", xlabel="width", ylabel="NTK drift, init -> end", title="metric-NTK drift")
    ax.set_xscale("log", base=2)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                renamed={"--out": "--out_dir"})
    ap.add_argument("--config", type=Path, default=ROOT / "conf" / "studies" / "width.yaml")
    ap.add_argument("--out_dir", type=Path, default=Path("runs") / "width-study")
    ap.add_argument("--widths", type=int, nargs="+", help="only these widths")
    ap.add_argument("--parametrizations", nargs="+", help="only these parametrisations")
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    ap.add_argument("--arms", nargs="+", help="only these train.py arms (the kernels need 'network')")
    ap.add_argument("--report", action="store_true",
                    help="write the tables and figure from what has finished; train and measure nothing")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override shared train.py arguments, or a top-level key of the config as YAML (kernels=...)")
    opts = ap.parse_args(argv)
    cfg = load_config(opts.config)
    for kv in opts.set:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {kv!r}")
        if key in LOOP_KEYS:
            raise SystemExit(f"--set {key}: the study sets it per run; choose them with {LOOP_KEYS[key]}")
        clash = [arm for arm, extra in cfg["arms"].items() if key in extra]
        if clash:
            raise SystemExit(f"--set {key}: the arms {clash} set it themselves; edit the config's arms instead")
        if key in cfg and key not in ("args", "arms"):
            cfg[key] = yaml.safe_load(value)
        else:
            cfg["args"][key] = value
    widths, params, seeds = opts.widths or cfg["widths"], opts.parametrizations or cfg["parametrizations"], opts.seeds or cfg["seeds"]
    arms = opts.arms or list(cfg["arms"])
    unknown = [x for x in arms if x not in cfg["arms"]] + [p for p in params if p not in PARAMETRIZATIONS]
    if unknown:
        raise SystemExit(f"unknown arms or parametrizations {unknown}; the config has arms {list(cfg['arms'])}, "
                         f"parametrizations are {list(PARAMETRIZATIONS)}")
    rows = []
    for p in params:
        for seed in seeds:
            for w in widths:
                r = cell(cfg, opts.out_dir, p, seed, w, arms, opts.report)
                rows.append(r)
                gains = ", ".join(f"{k} {v:.3g}" for k, v in r["test_gain"].items())
                print(f"[width study] {p} seed {seed} width {w}: test gain {gains}"
                      + (f"; failed: {sorted(r['errors'])}" if r["errors"] else ""), flush=True)
    a = analyse(rows, widths, params, arms)
    a["config"], a["rows"] = cfg, rows
    md = table(a)
    write_study(opts.out_dir, "width_study", a, md, figure(a))
    return a


if __name__ == "__main__":
    main()
