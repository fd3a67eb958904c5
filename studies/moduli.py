"""One network for a family of Kaehler classes against separate networks, on the bicubic in P2 x P2.

The family network (conf/bicubic_family.yaml) sees t = (1, t2) as an input and trains on points whose t2 is drawn
log-uniformly in [0.5, 2]; each separate network (conf/bicubic.yaml with data.kahler=[1, t2]) trains at one t2.
Every network gets the same budget (the config's `args`: epochs, points). All are then evaluated on the same fresh
test points at every t2 of `grid_t2` (the points and their weights do not depend on t; g_FS does):
  * sigma (eq. B.11, its own kappa) and the Ricci measure (on `ricci_points` of the points);
  * a separate network away from its own t2 means its correction with that t's g_FS (PhiFS: g_FS(t) + d dbar phi),
    i.e. how far one class's learned correction carries to another.

    python studies/moduli.py [--config conf/studies/moduli.yaml] [--out_dir runs/moduli]

Writes <out>/moduli.json, moduli.md and moduli.png; a finished run is not retrained, so a killed study resumes.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow.cli.options import Parser  # noqa: E402
from mflow.evaluation.checkpoints import load_checkpoint  # noqa: E402
from mflow.geometry import charts, curvature, volume  # noqa: E402
from mflow.geometry.points import CYPoints, sample  # noqa: E402
from mflow.io import pyplot, write_study  # noqa: E402

TEST_SEED = 7_654_321


def train(config: str, run: Path, args: list[str]) -> Path:
    """train.py on a config (resumed if it was killed); returns the run's final checkpoint."""
    if not (run / "summary.json").exists():
        resume = (run / "checkpoints" / "last.ckpt").exists()
        cmd = ["--resume", str(run)] if resume else ["--config", str(ROOT / config), f"--run_dir={run}",
                                                      "--wandb=off", "--trainer.enable_progress_bar=false", *args]
        subprocess.run([sys.executable, str(ROOT / "train.py"), *cmd], check=True, cwd=ROOT)
    path = run / "checkpoints" / "last.ckpt"
    load_checkpoint(path)  # refused in one line now, not after the other runs
    return path


def at_moduli(points: CYPoints, gs: torch.Tensor, t: torch.Tensor) -> CYPoints:
    """The points with the g_FS of J = sum t_i J_i (the same z, charts, weights)."""
    g_fs = charts.kahler_metric(gs, t)
    return CYPoints(points.z, points.patch, points.elim, points.pullback, points.omega_sq, g_fs, points.weights)


@torch.no_grad()
def measure(model, points: CYPoints, t: torch.Tensor, ricci_points: int) -> dict:
    """sigma of the model at moduli t on the points, and its Ricci measure on the first ricci_points."""
    kahler = t[None].expand(len(points), -1)
    g = torch.cat([model(points.z[i : i + 4096], points.patch[i : i + 4096], points.elim[i : i + 4096],
                         points.pullback[i : i + 4096], points.g_fs[i : i + 4096], kahler=kahler[i : i + 4096])
                   for i in range(0, len(points), 4096)])
    sub = points[:ricci_points]
    ricci, used = curvature.ricci_measure_on(
        lambda z, patch, elim: model(z, patch, elim, kahler=t[None].expand(len(z), -1)), sub, model.surface.dim)
    return {"sigma": float(points.sigma(g)), "ricci": ricci, "ricci_points": used}


def table(res: dict) -> str:
    names = list(res["networks"])
    lines = ["| t2 | sigma FS | " + " | ".join(f"sigma {n}" for n in names) + " | " +
             " | ".join(f"Ricci {n}" for n in names) + " |", "|" + "---|" * (2 + 2 * len(names))]
    for i, t2 in enumerate(res["grid_t2"]):
        row = [f"{t2:g}", f"{res['fs'][i]['sigma']:.4f}"]
        row += [f"{res['networks'][n][i]['sigma']:.4f}" for n in names]
        row += [f"{res['networks'][n][i]['ricci']:.3f}" for n in names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def figure(res: dict):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    grid = res["grid_t2"]
    for ax, key, label in ((axes[0], "sigma", "test sigma"), (axes[1], "ricci", "Ricci measure")):
        if key == "sigma":
            ax.plot(grid, [r["sigma"] for r in res["fs"]], "k:", label="Fubini-Study")
        ax.plot(grid, [r[key] for r in res["networks"]["family"]], "o-", color="C0", lw=2, label="one network g(x; t)")
        for j, t2 in enumerate(res["single_t2"]):
            rows = res["networks"][f"single t2={t2:g}"]
            line, = ax.plot(grid, [r[key] for r in rows], "--", color=f"C{j + 1}", alpha=0.6)
            own = grid.index(t2)
            ax.plot([t2], [rows[own][key]], "s", ms=8, color=line.get_color(), label=f"separate network at t2={t2:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t2 (J = J_1 + t2 J_2)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("Bicubic in P2 x P2: one moduli-dependent network vs separate networks (same budget each)", fontsize=9)
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
    grid = [float(t) for t in c["grid_t2"]]
    singles = [float(t) for t in c["single_t2"]]
    if not set(singles) <= set(grid):
        raise ValueError(f"single_t2 {singles} must be points of grid_t2 {grid}")
    runs = {"family": train(c["family"], out / "family", c["args"])}
    for t2 in singles:
        runs[f"single t2={t2:g}"] = train(c["single"], out / f"single-t{t2:g}", [*c["args"], f"--data.kahler=[1.0, {t2}]"])
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
    write_study(out, "moduli", res, table(res), figure(res))
    return res


if __name__ == "__main__":
    main()
