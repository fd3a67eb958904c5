"""One network for a family of Kaehler classes (or complex structures) against separate networks.

Kaehler classes (conf/studies/moduli.yaml), on the bicubic in P2 x P2. The family network (conf/bicubic_family.yaml)
sees t = (1, t2) as an input and trains on points whose t2 is drawn log-uniformly in [0.5, 2]; each separate network
(conf/bicubic.yaml with data.kahler=[1, t2]) trains at one t2.
Every network gets the same budget (the config's `args`: epochs, points). All are then evaluated on the same fresh
test points at every t2 of `grid_t2` (the points and their weights do not depend on t; g_FS does):
  * sigma (eq. B.11, its own kappa) and the Ricci measure (on `ricci_points` of the points);
  * a separate network away from its own t2 means its correction with that t's g_FS (PhiFS: g_FS(t) + d dbar phi),
    i.e. how far one class's learned correction carries to another.

    python studies/moduli.py [--config conf/studies/moduli.yaml] [--out_dir runs/moduli]

Complex structures (conf/studies/moduli_psi.yaml, ``modulus: psi``), on each manifold of its ``manifolds`` (dwork,
two_cubics): the family network sees psi (read off the points) and trains on members evenly spaced over psi_range
(data.psi_range); each separate network trains at one psi (data.psi). Every network is the config's ``train``
config (written to <out>/train.yaml) with the same budget (``args``). They are evaluated at every psi of
``grid_psi`` on fresh test points of that member (the points, weights and kappa change with psi; g_FS does not):
sigma with the member's own kappa and the Ricci measure; a separate network away from its own psi means its
correction on that member (g_FS + d dbar phi along that member's tangent spaces).

    python studies/moduli.py --config conf/studies/moduli_psi.yaml --out_dir runs/moduli_psi

Writes <out>/moduli.json, moduli.md and moduli.png (moduli_psi.* for psi); a finished run is not retrained, so a
killed study resumes. Each run keeps the settings it was trained with (<run>/study_args.json): an --out_dir whose
runs were made with other settings is refused before anything trains rather than mixed in.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow.cli.options import Parser  # noqa: E402
from mflow.cli.resume import study_run_arguments  # noqa: E402
from mflow.evaluation.checkpoints import load_checkpoint  # noqa: E402
from mflow.geometry import charts, curvature, volume  # noqa: E402
from mflow.geometry.points import CYPoints, sample  # noqa: E402
from mflow.geometry.cicy import NotCalabiYauError  # noqa: E402
from mflow.geometry.montecarlo import sigma_error  # noqa: E402
from mflow.geometry.presets import check_psi_range, surface_from_args  # noqa: E402
from mflow.io import pyplot, write_json, write_study  # noqa: E402

TEST_SEED = 7_654_321


def train(config: str | Path, run: Path, args: list[str]) -> Path:
    """train.py on a config (resumed if it was killed, started afresh if killed before its first checkpoint:
    mflow.cli.resume.study_run_arguments); returns the run's final checkpoint."""
    if not (run / "summary.json").exists():
        cmd = study_run_arguments(run, ["--config", str(ROOT / config), f"--run_dir={run}", "--wandb=off",
                                        "--trainer.enable_progress_bar=false", *args])
        subprocess.run([sys.executable, str(ROOT / "train.py"), *cmd], check=True, cwd=ROOT)
    path = run / "checkpoints" / "last.ckpt"
    load_checkpoint(path)  # refused in one line now, not after the other runs
    return path


def at_moduli(points: CYPoints, gs: torch.Tensor, t: torch.Tensor) -> CYPoints:
    """The points with the g_FS of J = sum t_i J_i (the same z, charts, weights)."""
    g_fs = charts.kahler_metric(gs, t)
    return CYPoints(points.z, points.patch, points.elim, points.pullback, points.omega_sq, g_fs, points.weights,
                    points.system)


@torch.no_grad()
def measure(model, points: CYPoints, t: torch.Tensor | None, ricci_points: int) -> dict:
    """sigma of the model at moduli t (None: the model's own, or psi read off the points) on the points with its Monte
    Carlo error (sigma_err, by sampling system), and its Ricci measure on the first ricci_points."""
    kw = (lambda n: {}) if t is None else (lambda n: {"kahler": t[None].expand(n, -1)})
    g = torch.cat([model(points.z[i : i + 4096], points.patch[i : i + 4096], points.elim[i : i + 4096],
                         points.pullback[i : i + 4096], points.g_fs[i : i + 4096], **kw(len(points.z[i : i + 4096])))
                   for i in range(0, len(points), 4096)])
    sub = points[:ricci_points]
    ricci, used = curvature.ricci_measure_on(lambda z, patch, elim: model(z, patch, elim, **kw(len(z))), sub,
                                             model.surface.dim)
    sigma, err = sigma_error(points.weights, volume.real_det(g), points.omega_sq, points.system)
    return {"sigma": sigma, "sigma_err": err, "ricci": ricci, "ricci_points": used}


def table(grid: list[float], fs: list[dict], networks: dict, label: str) -> str:
    names = list(networks)
    lines = [f"| {label} | sigma FS | " + " | ".join(f"sigma {n}" for n in names) + " | " +
             " | ".join(f"Ricci {n}" for n in names) + " |", "|" + "---|" * (2 + 2 * len(names))]
    for i, x in enumerate(grid):
        row = [f"{x:g}", f"{fs[i]['sigma']:.4f}"]
        row += [f"{networks[n][i]['sigma']:.4f}" for n in names]
        row += [f"{networks[n][i]['ricci']:.3f}" for n in names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def panels(axes, grid: list[float], singles: list[float], fs: list[dict], networks: dict, symbol: str, xlabel: str,
           log_x: bool):
    """test sigma and the Ricci measure against the modulus ``symbol`` (two axes), every network a line, each
    separate network's own modulus a square."""
    for ax, key, ylabel in ((axes[0], "sigma", "test sigma"), (axes[1], "ricci", "Ricci measure")):
        if key == "sigma":
            ax.plot(grid, [r["sigma"] for r in fs], "k:", label="Fubini-Study")
        ax.plot(grid, [r[key] for r in networks["family"]], "o-", color="C0", lw=2,
                label=f"one network g(x; {symbol})")
        for j, x in enumerate(singles):
            rows = networks[f"single {symbol}={x:g}"]
            line, = ax.plot(grid, [r[key] for r in rows], "--", color=f"C{j + 1}", alpha=0.6)
            ax.plot([x], [rows[grid.index(x)][key]], "s", ms=8, color=line.get_color(),
                    label=f"separate network at {symbol}={x:g}")
        if log_x:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)


def figure(res: dict):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels(axes, res["grid_t2"], res["single_t2"], res["fs"], res["networks"], "t2", "t2 (J = J_1 + t2 J_2)", True)
    fig.suptitle("Bicubic in P2 x P2: one moduli-dependent network vs separate networks (same budget each)", fontsize=9)
    fig.tight_layout()
    return fig


def check_settings(plan: dict[str, tuple]) -> dict[str, tuple]:
    """plan (name: (config, run dir, train.py args, settings)) after refusing, in one line, a run whose
    study_args.json records other settings (an --out_dir of another study)."""
    for _, run, _, settings in plan.values():
        path = run / "study_args.json"
        if path.exists() and json.loads(path.read_text()) != json.loads(json.dumps(settings)):
            raise SystemExit(f"{run} was run with other settings (see {path}): choose another --out_dir")
    return plan


def train_plan(plan: dict[str, tuple]) -> dict[str, Path]:
    """train() on each run of a checked plan, recording its settings in study_args.json before it trains."""
    for _, run, _, settings in plan.values():
        if not (run / "summary.json").exists() and not (run / "study_args.json").exists():
            write_json(run / "study_args.json", settings)
    return {name: train(config, run, args) for name, (config, run, args, _) in plan.items()}


def check_psi_config(c: dict) -> None:
    """The psi study's config before anything trains: per manifold a psi_range clear of the singular members,
    single_psi in it and on grid_psi, no singular member on either; SystemExit in one line naming the bad value."""
    for name, m in c["manifolds"].items():
        try:
            lo, hi = check_psi_range(name, m["psi_range"])
            for key in ("grid_psi", "single_psi"):
                for x in m[key]:
                    try:
                        surface_from_args(name, float(x))
                    except NotCalabiYauError as e:
                        raise ValueError(f"{key} has psi = {x:g}: {e}") from None
        except ValueError as e:
            raise SystemExit(f"{name}: {e}") from None
        grid, singles = [float(x) for x in m["grid_psi"]], [float(x) for x in m["single_psi"]]
        if any(not lo <= x <= hi for x in singles):
            raise SystemExit(f"{name}: single_psi={next(x for x in singles if not lo <= x <= hi):g} is outside "
                             f"psi_range={[lo, hi]}: choose separate networks' psi in the family's range")
        if not set(singles) <= set(grid):
            raise SystemExit(f"{name}: single_psi {singles} must be points of grid_psi {grid}")


def psi_study(c: dict, out: Path) -> dict:
    """The complex-structure study (module doc) on every manifold of c["manifolds"]."""
    check_psi_config(c)
    config = (out / "train.yaml").resolve()
    plans = {}
    for name, m in c["manifolds"].items():
        (lo, hi), args = m["psi_range"], [f"--data.manifold={name}", *c["args"]]
        runs = {"family": (out / name / "family",
                           [*args, f"--data.psi_range=[{lo}, {hi}]", "--model.moduli_input=true"])}
        runs |= {f"single psi={x:g}": (out / name / f"single-psi{x:g}", [*args, f"--data.psi={x}"])
                 for x in map(float, m["single_psi"])}
        plans[name] = check_settings({n: (config, run, a, {"train": c["train"], "args": a})
                                      for n, (run, a) in runs.items()})
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(c["train"], sort_keys=False)
    if not config.exists() or config.read_text() != text:  # rewritten only when changed
        config.write_text(text)
    res = {"config": c, "modulus": "psi", "manifolds": {}}
    for name, m in c["manifolds"].items():
        grid, singles = [float(x) for x in m["grid_psi"]], [float(x) for x in m["single_psi"]]
        lo, hi = m["psi_range"]
        runs = train_plan(plans[name])
        models = {n: load_checkpoint(path).module.model.eval() for n, path in runs.items()}
        r = res["manifolds"][name] = {"psi_range": [lo, hi], "grid_psi": grid, "single_psi": singles, "fs": [],
                                      "networks": {n: [] for n in models}}
        for k, x in enumerate(grid):
            X = surface_from_args(name, x)
            test = sample(X, c["test_points"], TEST_SEED + k)
            r["fs"].append({"sigma": float(test.sigma()), "kappa": float(volume.kappa(test.weights,
                                                                                   volume.real_det(test.g_fs), test.omega_sq))})
            for n, model in models.items():
                r["networks"][n].append(measure(on_member(model, X), test, None, c["ricci_points"]))
            print(f"[moduli] {name} psi={x:g}: sigma FS {r['fs'][-1]['sigma']:.4f}, " + ", ".join(
                f"{n} {r['networks'][n][-1]['sigma']:.4f}" for n in models), flush=True)
    text = "".join(f"{name} (psi in {r['psi_range']}):\n\n" + table(r["grid_psi"], r["fs"], r["networks"], "psi") + "\n"
                   for name, r in res["manifolds"].items())
    write_study(out, "moduli_psi", res, text, psi_figure(res))
    return res


def on_member(model, X):
    """A separate network's model on the member X (its correction along X's tangent spaces); a family's as it is
    (it reads each point's member off the point)."""
    if model.pencil is not None:
        return model
    moved = copy.copy(model)
    moved.surface = X
    return moved


def psi_figure(res: dict):
    plt = pyplot()
    rows = res["manifolds"]
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.6 * len(rows)), squeeze=False)
    for ax, (name, r) in zip(axes, rows.items()):
        panels(ax, r["grid_psi"], r["single_psi"], r["fs"], r["networks"], "psi", f"psi ({name})", False)
    fig.suptitle("One network g(x; psi) of a complex-structure family vs separate networks (same budget each)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    p = Parser(description=__doc__.split("\n")[0], renamed={"--out": "--out_dir"})
    p.add_argument("--config", default=str(ROOT / "conf" / "studies" / "moduli.yaml"))
    p.add_argument("--out_dir", default="runs/moduli")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a top-level YAML key (tests)")
    a = p.parse_args(argv)
    c = yaml.safe_load(Path(a.config).read_text())
    for kv in a.set:
        k, v = kv.split("=", 1)
        c[k] = yaml.safe_load(v)
    out = Path(a.out_dir)
    if c.get("modulus", "kahler") == "psi":
        return psi_study(c, out)
    grid = [float(t) for t in c["grid_t2"]]
    singles = [float(t) for t in c["single_t2"]]
    if not set(singles) <= set(grid):
        raise ValueError(f"single_t2 {singles} must be points of grid_t2 {grid}")
    plan = {"family": (c["family"], out / "family", c["args"])}
    plan |= {f"single t2={t2:g}": (c["single"], out / f"single-t{t2:g}", [*c["args"], f"--data.kahler=[1.0, {t2}]"])
             for t2 in singles}
    runs = train_plan(check_settings({n: (*p, {"config": p[0], "args": p[2]}) for n, p in plan.items()}))
    models = {name: load_checkpoint(path).module.model.eval() for name, path in runs.items()}
    X = models["family"].surface.with_kahler((1.0, 1.0))
    test = sample(X, c["test_points"], TEST_SEED)
    gs = charts.factor_metrics(X, test.z, test.pullback)
    res = {"config": c, "grid_t2": grid, "single_t2": singles, "fs": [], "networks": {n: [] for n in models}}
    for t2 in grid:
        t = torch.tensor([1.0, t2], dtype=torch.float64)
        pts = at_moduli(test, gs, t)
        res["fs"].append({"sigma": float(pts.sigma()), "kappa": float(volume.kappa(pts.weights, volume.real_det(pts.g_fs),
                                                                                     pts.omega_sq))})
        for name, model in models.items():
            res["networks"][name].append(measure(model, pts, t, c["ricci_points"]))
        print(f"[moduli] t2={t2:g}: sigma FS {res['fs'][-1]['sigma']:.4f}, " + ", ".join(
            f"{n} {res['networks'][n][-1]['sigma']:.4f}" for n in models), flush=True)
    write_study(out, "moduli", res, table(grid, res["fs"], res["networks"], "t2"), figure(res))
    return res


if __name__ == "__main__":
    main()
