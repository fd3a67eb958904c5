"""The paper's kernel experiment (sec. 3.2, Table 1, Fig. 3), on the paper's own points and on mflow's.

For every train size N, kernel (Table 1's Gaussian, Delta and ReLU NTK), point population (one_chart: the
paper's; all_charts: mflow's default; mflow.data.population) and variant (paper: conf/paper/kernel_<k>.yaml,
the paper's component-wise update in one chart with the mean sigma-loss and a constant step; mflow:
conf/kernel_<k>.yaml, the ambient frame with the per-point gradient and a decaying step), one train.py run
(clusters of ~5000 points as in the paper, data.n_clusters = round(N / 5000)) and one evaluate.py of its last
checkpoint: train gain, test gain on 10k fresh points of the same population, and the gain against the mean
shortest FS distance to the train set for Gaussian-noised and on-manifold points (Fig. 3 left). At 1e5 points
only the config's `large` pairs run, and the `unclustered` entry repeats one flow with a single cluster (every
train point updated from every train point, matrix-free) against the clustered one at the same step count.

Also, per population: the nearest-neighbour law (Fig. 3 right, fit against eq. 3.6), and what a purely local
predictor could gain at each N: with the train set fitted exactly (eta = 1 there), a test point x that takes
its nearest train point x' 's correction has eta(x) / eta(x') left, so sigma_FS / mean_w |1 - eta_FS(x) / eta_FS(x')|
bounds the test gain of the Delta kernel (`local_bound`): how smooth eta is at the nearest-neighbour spacing.

    python studies/paper_kernels.py [--config conf/studies/paper_kernels.yaml] [--out_dir runs/paper-kernels]
                                    [--sizes 1000] [--kernels gaussian delta]

Writes <out>/paper_kernels.json, paper_kernels.md (tables) and paper_kernels.png. Runs that finished (summary.json
and eval/eval.json present) are not rerun; a killed run resumes from its last checkpoint; a run that fails is
recorded (<run>/error.json; delete it to retry) and the study goes on.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow.cli.options import Parser, boolean  # noqa: E402
from mflow.data.pointset import sample_pointset  # noqa: E402
from mflow.evaluation.plots import gain_curve  # noqa: E402
from mflow.evaluation.scaling import PAPER_FIT, distance_scaling  # noqa: E402
from mflow.geometry import volume  # noqa: E402
from mflow.geometry.distance import NearestIndex  # noqa: E402
from mflow.geometry.presets import manifold  # noqa: E402
from mflow.io import pyplot, write_json, write_study  # noqa: E402

PAPER = {"train_gain": "~1e6 (Gaussian, Delta), ~5 (ReLU)", "test_gain": "~5 at 1e3 and 1e5 points",
         "gain_at_distance_1": "~1"}


def load_config(path) -> dict:
    cfg = yaml.safe_load(Path(path).read_text())
    for k in ("sizes", "kernels", "populations", "variants", "points_per_cluster", "evaluate"):
        if k not in cfg:
            raise ValueError(f"{path}: a paper-kernel study config needs the key {k!r}")
    return cfg


def planned(cfg: dict) -> list[dict]:
    """Every run of the study: {variant, population, kernel, n, epochs (None: the config's)}."""
    runs, large = [], cfg.get("large") or {}
    for n in cfg["sizes"]:
        for kernel in cfg["kernels"]:
            for variant in cfg["variants"]:
                for pop in cfg["populations"]:
                    if large and n >= large["size"] and (kernel not in large["kernels"] or [variant, pop] not in large["pairs"]):
                        continue
                    runs.append({"variant": variant, "population": pop, "kernel": kernel, "n": n, "epochs": None})
    un = cfg.get("unclustered")
    if un:
        variant, pop = un["pair"]
        for clusters in ("one", "paper"):
            runs.append({"variant": variant, "population": pop, "kernel": un["kernel"], "n": un["size"],
                         "epochs": un["epochs"], "clusters": clusters})
    return runs


def name(r: dict) -> str:
    tag = f"-{r['epochs']}ep-{r['clusters']}" if r.get("epochs") else ""
    return f"{r['variant']}-{r['population']}-{r['kernel']}-n{r['n']}{tag}"


def train_args(cfg: dict, r: dict, run: Path) -> list[str]:
    n = r["n"]
    frac = 0.25 if n <= 1000 else 0.05  # Table 1's setup at 1e3 (val and test = train / 2); 5% each above
    n_points = int(round(n / (1 - 2 * frac)))
    clusters = 1 if r.get("clusters") == "one" else max(1, round(n / cfg["points_per_cluster"]))
    args = ["--config", str(ROOT / cfg["variants"][r["variant"]].format(kernel=r["kernel"])), f"--run_dir={run}",
            "--wandb=off", f"--data.population={r['population']}", f"--data.n_points={n_points}",
            f"--data.val_fraction={frac}", f"--data.test_fraction={frac}", f"--data.n_clusters={clusters}",
            "--data.cluster_batch_size=10000", f"--model.cache_mb={cfg.get('cache_mb', 512)}",
            "--trainer.enable_progress_bar=false", "--test=false"]
    if n > 1000:
        args.append("--trainer.check_val_every_n_epoch=100000")  # validation only at the end (evaluate.py)
    if r.get("epochs"):
        args.append(f"--trainer.max_epochs={r['epochs']}")
    return args


def run_one(cfg: dict, r: dict, out: Path) -> dict:
    """Train (or resume) and evaluate one run; returns its row of the table."""
    run = out / name(r)
    if (run / "error.json").exists():
        return {**r, "name": name(r), **json.loads((run / "error.json").read_text())}
    if not (run / "summary.json").exists():
        resume = (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
        args = ["--resume", str(run)] if resume else train_args(cfg, r, run)
        p = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            err = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
            write_json(run / "error.json", err)
            return {**r, "name": name(r), **err}
    if not (run / "eval" / "eval.json").exists():
        p = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                            "--out_dir", str(run / "eval"), "--quiet", *cfg["evaluate"]], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            err = {"error": "evaluate: " + (p.stderr.strip().splitlines() or ["?"])[-1]}
            write_json(run / "error.json", err)
            return {**r, "name": name(r), **err}
    s = json.loads((run / "summary.json").read_text())
    e = json.loads((run / "eval" / "eval.json").read_text())["checkpoints"][0]
    return {**r, "name": name(r), "train_points_used": e["train"]["n"], "train_gain": e["train"]["gain"],
            "test_gain": e["test"]["gain"], "test_not_pd": e["test"]["not_pd"],
            "test_distance": e["test"]["distance_to_train"]["mean"], "seconds_per_epoch": s["seconds_per_epoch"],
            "epochs": s["epochs"], "eval": str(run / "eval" / "eval.json")}


def local_bound(population: str, sizes, n_test: int = 5000) -> list[dict]:
    """sigma_FS / mean_w |1 - eta_FS(x) / eta_FS(x_nn)| on fresh test points x with x_nn their nearest train point:
    the test gain of copying the nearest train point's correction after fitting the train set exactly."""
    s = manifold("fermat_quintic")
    test = sample_pointset(s, n_test, 10_001, population=population)
    rows = []
    for n in sizes:
        train = sample_pointset(s, n, 10_000, population=population)
        kappa = volume.kappa(train.weights, volume.real_det(train.g_fs), train.omega_sq)

        def eta(p):
            return volume.eta(volume.real_det(p.g_fs), p.omega_sq, kappa)

        _, nn = NearestIndex(train.z, s).query(test.z)
        w = test.weights
        sigma_fs = float((w * (1 - eta(test)).abs()).sum() / w.sum())
        left = float((w * (1 - eta(test) / eta(train)[nn]).abs()).sum() / w.sum())
        rows.append({"n": n, "sigma_fs": sigma_fs, "sigma_local": left, "local_bound": sigma_fs / left})
    return rows


def tables(rows: list[dict], scaling: dict, bounds: dict) -> str:
    lines = ["| variant | population | kernel | train points (used) | train gain | test gain | test points not PD |"
             " mean distance test-train | s/epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['population']} | {r['kernel']} | {r['n']} | failed: {r['error'][:80]} | | | | |")
            continue
        tag = f" ({r['epochs']} epochs, {'1 cluster' if r.get('clusters') == 'one' else 'clusters of 5k'})" if r.get("clusters") else ""
        lines.append(f"| {r['variant']} | {r['population']} | {r['kernel']}{tag} | {r['n']} ({r['train_points_used']}) | "
                     f"{r['train_gain']:.3g} | {r['test_gain']:.3g} | {r['test_not_pd']} | {r['test_distance']:.3f} | "
                     f"{r['seconds_per_epoch']:.2f} |")
    lines += ["", "| population | nearest-neighbour law | eq. 3.6 |", "|---|---|---|"]
    for pop, sc in scaling.items():
        if "fit" in sc:
            lines.append(f"| {pop} | {sc['fit']['a']:.3f} N^{sc['fit']['b']:.3f} | {PAPER_FIT[0]} N^{PAPER_FIT[1]} |")
    lines += ["", "| population | N | sigma_FS (test) | local bound on the test gain |", "|---|---|---|---|"]
    for pop, bs in bounds.items():
        for b in bs:
            lines.append(f"| {pop} | {b['n']} | {b['sigma_fs']:.4f} | {b['local_bound']:.3g} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], scaling: dict, bounds: dict, small: int):
    """Fig. 3 left per (variant, population) at N = small; test gain against N; Fig. 3 right."""
    plt = pyplot()
    pairs = sorted({(r["variant"], r["population"]) for r in rows if "error" not in r})
    fig, axes = plt.subplots(1, len(pairs) + 2, figsize=(4.6 * (len(pairs) + 2), 4.2), squeeze=False)
    axes = axes[0]
    colors = {"gaussian": "C0", "delta": "C1", "relu": "C2"}
    for ax, (variant, pop) in zip(axes, pairs):
        for r in rows:
            if (r["variant"], r["population"], r["n"]) != (variant, pop, small) or "error" in r or r.get("clusters"):
                continue
            e = json.loads(Path(r["eval"]).read_text())["checkpoints"][0]
            for mode, style in (("gaussian", "-"), ("manifold", "--")):
                d, g = gain_curve(e, mode)
                if len(d):
                    ax.plot(d, g, style, marker="o", ms=3, color=colors[r["kernel"]],
                            label=f"{r['kernel']}: {'noise' if mode == 'gaussian' else 'on X'}")
            ax.plot([r["test_distance"]], [r["test_gain"]], "*", ms=11, color=colors[r["kernel"]])
        ax.axhline(5, color="grey", ls=":", lw=1)
        ax.axhline(1, color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="mean shortest FS distance to the train set", ylabel="sigma gain",
               title=f"{variant}, {pop}, N = {small} (stars: test points; dotted: paper's ~5)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    ax = axes[len(pairs)]
    for variant, pop in pairs:
        for kernel in sorted({r["kernel"] for r in rows}):
            pts = sorted((r["n"], r["test_gain"]) for r in rows if (r["variant"], r["population"], r["kernel"]) == (variant, pop, kernel)
                         and "error" not in r and not r.get("clusters"))
            if pts:
                ax.plot(*zip(*pts), marker="o", ls="-" if variant == "paper" else "--", color=colors[kernel],
                        label=f"{kernel}, {variant}, {pop}")
    for pop, bs in bounds.items():
        ax.plot([b["n"] for b in bs], [b["local_bound"] for b in bs], "k" + ("-" if pop == "one_chart" else "--"), lw=1,
                label=f"local bound, {pop}")
    ax.axhline(5, color="grey", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="train points N", ylabel="test gain", title="test gain against N")
    ax.legend(fontsize=6)
    ax = axes[-1]
    for pop, sc in scaling.items():
        n = np.array([r["n"] for r in sc["rows"]], dtype=float)
        ax.plot(n, [r["mean"] for r in sc["rows"]], "o", label=f"{pop}: mean")
        if "fit" in sc:
            ax.plot(n, sc["fit"]["a"] * n ** sc["fit"]["b"], "-", lw=1, label=f"{pop}: {sc['fit']['a']:.3f} N^{sc['fit']['b']:.3f}")
    n = np.geomspace(1e3, 1e5, 20)
    ax.plot(n, PAPER_FIT[0] * n ** PAPER_FIT[1], "k:", label="eq. 3.6: 0.968 N^-0.184")
    ax.set(xscale="log", yscale="log", xlabel="points N", ylabel="nearest-neighbour FS distance", title="Fig. 3 right")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    p = Parser(description=__doc__.split("\n")[0], renamed={"--out": "--out_dir", "--no_unclustered": "--unclustered=false"})
    p.add_argument("--config", default=str(ROOT / "conf" / "studies" / "paper_kernels.yaml"))
    p.add_argument("--out_dir", default="runs/paper-kernels")
    p.add_argument("--sizes", type=int, nargs="+", help="only these train sizes")
    p.add_argument("--kernels", nargs="+", help="only these kernels")
    p.add_argument("--unclustered", type=boolean, default=True, metavar="true|false",
                   help="run the unclustered 1e5 comparison (default true)")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    if a.sizes:
        cfg["sizes"] = a.sizes
    if a.kernels:
        cfg["kernels"] = a.kernels
    if not a.unclustered or (a.sizes and cfg.get("unclustered", {}).get("size") not in a.sizes):
        cfg.pop("unclustered", None)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in planned(cfg):
        row = run_one(cfg, r, out)
        rows.append(row)
        shown = row.get("error") or f"train gain {row['train_gain']:.3g}, test gain {row['test_gain']:.3g}"
        print(f"[paper kernels] {row['name']}: {shown}", flush=True)
    scaling, bounds = {}, {}
    for pop in cfg["populations"]:
        path = out / f"scaling-{pop}.json"
        if not path.exists():
            write_json(path, distance_scaling(manifold("fermat_quintic"), cfg["scaling"], seed=0, budget_s=1e9,
                                              population=pop, log=lambda *x: None))
        scaling[pop] = json.loads(path.read_text())
        path = out / f"local-{pop}.json"
        if not path.exists():
            write_json(path, {"rows": local_bound(pop, cfg["sizes"], cfg.get("local_test_points", 5000))})
        bounds[pop] = json.loads(path.read_text())["rows"]
    result = {"config": cfg, "paper": PAPER, "runs": rows, "scaling": scaling, "local_bound": bounds}
    write_study(out, "paper_kernels", result, tables(rows, scaling, bounds),
                figure(rows, scaling, bounds, min(cfg["sizes"])))
    return result


if __name__ == "__main__":
    main()
