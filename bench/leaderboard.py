"""The leaderboard: every preset's shipped configuration trained, L-BFGS-finished and evaluated the same way.

    python bench/leaderboard.py [--presets bicubic p1p3] [--out_dir runs/leaderboard] [--set trainer.max_epochs=1 ...]

Per preset (fermat_quintic, dwork at psi = 1.5, bicubic, p1p3, tetraquadric, two_cubics), in its own folder
<out_dir>/<preset>/:

  train     train.py --config <the preset's shipped config> --run_dir=<preset>/train --wandb=off (CONFIGS)
  finish    finish.py: full-batch L-BFGS from train/checkpoints/last.ckpt to <preset>/finished.ckpt
  evaluate  evaluate.py on last.ckpt (eval-adam/) and on finished.ckpt (eval-finish/, with --euler): sigma_FS, sigma
            and gain = sigma_FS / sigma on fresh test points, the Ricci measure, the Euler characteristic by
            Gauss-Bonnet-Chern with its Monte Carlo error against the topological value

Each step records its command, wall time and its process's peak memory (ru_maxrss, os.wait4) in <preset>/steps.json
when it succeeds; a recorded step is never redone, a killed training run resumes from its last checkpoint (train.py
--resume; killed before its first checkpoint: started afresh, mflow.cli.resume.study_run_arguments), a killed finish
or evaluation starts again. A preset folder made with other settings is refused.
Peers' figures come from bench/results/peers*.json wherever a peer was measured side by side (PEERS). Writes
bench/results/leaderboard.json and docs/leaderboard.md (--results_json, --doc), merged per preset: the presets of this
run replace their rows, the other presets' rows are kept (if made with the same settings: else refused).
Not on the board (the issue's list is the six above): random, a generic quintic (chi -200 like the two quintic
members already here, fermat_quintic and the non-Fermat dwork at psi = 1.5: a third member of the same family);
fermat_quartic and fermat_cubic, a K3 surface and a torus (complex dimension 2 and 1, not threefolds: mflow's cheap
test manifolds; the torus' chi = 0 has no relative difference).

Measured on 2026-12-03 (each row records its threads): 9,220 s of one-thread work for the six presets (the quintic
680 s, dwork 1,270 s, each product 1,730-1,920 s: training 940-1,000 s, the finish ~400 s, chi on 10000 points
~7 min), made as two processes of one thread each on disjoint presets (--num_threads 1), so ~80 min on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow import configs  # noqa: E402
from mflow.cli.options import Parser  # noqa: E402
from mflow.cli.resume import study_run_arguments  # noqa: E402
from mflow.cli.threads import default_threads  # noqa: E402
from mflow.evaluation.euler import MIN_POINTS  # noqa: E402
from mflow.io import atomic_write, write_json  # noqa: E402

PRESETS = ("fermat_quintic", "dwork", "bicubic", "p1p3", "tetraquadric", "two_cubics")
# the quintic's best metric (conf/best.yaml: PhiFS GELU, smooth, so its Euler form is defined; the preset's own
# default.yaml is a ReLU MultFS); every other preset's shipped config (mflow.configs.PRESET_CONFIGS; dwork.yaml is at
# psi = 1.5)
CONFIGS = {"fermat_quintic": "best.yaml"}
# peers measured side by side on mflow's test points: preset -> (results file, its key, the peer's name)
PEERS = {"fermat_quintic": ("peers.json", "mlgeometry", "MLGeometry"),
         "bicubic": ("peers-cymetric.json", "cymetric", "cymetric")}
RESULTS = ROOT / "bench" / "results"
STEPS = ("train", "finish", "evaluate_adam", "evaluate_finish")
COLUMNS = [
    ("preset", "the manifold (mflow.geometry.presets; dwork at psi = 1.5, generic members at surface_seed 0, t = 1)"),
    ("config", "the shipped configuration train.py ran (conf/)"),
    ("sigma_FS", "sigma of the Fubini-Study metric on the fresh test points (eq. B.11)"),
    ("sigma Adam", "test sigma of the trained network (train/checkpoints/last.ckpt)"),
    ("sigma finish", "test sigma after finish.py's full-batch L-BFGS"),
    ("gain", "sigma_FS / sigma after the finish, on the test points"),
    ("Ricci", "Ricci measure of the finished metric on test points (FS's in brackets)"),
    ("chi", "Euler characteristic of the finished metric by Gauss-Bonnet-Chern +- its Monte Carlo error (by "
            "sampling system), on --euler_points fresh points"),
    ("chi top", "the topological Euler characteristic of X"),
    ("rel. diff", "(chi - chi top) / |chi top|"),
    ("wall", "seconds of train + finish + evaluate (a resumed step: its last attempt), with the torch threads the "
             "steps ran on (--num_threads, else the fair share of the cores the leaderboard may use)"),
    ("peak mem", "largest peak resident memory of the steps' processes (MiB)"),
    ("peer", "a peer's test sigma (after Adam / after its L-BFGS) measured side by side on mflow's test points "
             "(bench/bench_peers.py)"),
]


def preset_config(preset: str) -> Path:
    """The shipped config a preset is trained with (CONFIGS, else mflow.configs.preset_config)."""
    return configs.config(CONFIGS[preset]) if preset in CONFIGS else configs.preset_config(preset)


def run_child(script: str, args: list[str]) -> dict:
    """python <script> ARGS in the repository root; {seconds, max_rss_mib} of that process; SystemExit if it fails."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"leaderboard: {script} {' '.join(args)} failed (exit {proc.returncode}): see its output "
                         "above; rerun the same command once fixed (finished steps are kept)")
    return {"seconds": time.perf_counter() - t, "max_rss_mib": usage.ru_maxrss / 1024}  # Linux: KiB


def train_args(run: Path, config: Path, overrides: list[str], threads: list[str]) -> list[str]:
    """train.py's arguments: a new run, or the resumption of a killed one (keeping the overrides a resume allows), or
    a fresh start of one killed before its first checkpoint (mflow.cli.resume.study_run_arguments)."""
    return study_run_arguments(run, ["--config", str(config), f"--run_dir={run}", "--wandb=off",
                                     "--trainer.enable_progress_bar=false", *threads, *overrides])


def say(line: str) -> None:
    print(f"[leaderboard] {line}", flush=True)  # before the children's own lines


def run_preset(preset: str, out: Path, settings: dict, num_threads: int | None) -> dict:
    """The four steps of one preset (module doc), each done once, on num_threads torch threads (None: each step's
    fair share, mflow.cli.threads); returns steps.json."""
    threads = [] if num_threads is None else [f"--num_threads={num_threads}"]
    d = out / preset
    record = d / "leaderboard_args.json"
    if not record.exists():
        write_json(record, settings)
    elif json.loads(record.read_text()) != settings:
        raise SystemExit(f"leaderboard: {d} was made with other settings (see {record}): choose another --out_dir "
                         "or delete that folder")
    steps_path = d / "steps.json"
    steps = json.loads(steps_path.read_text()) if steps_path.exists() else {}
    last, finished = d / "train" / "checkpoints" / "last.ckpt", d / "finished.ckpt"
    evaluation = ["--n_test", str(settings["n_test"]), "--mode", "gaussian", "--noise_levels", "1e-4", "--n_noise",
                  "100", "--n_distance", "0", "--ricci_points", str(settings["ricci_points"]), "--quiet", *threads]
    commands = {
        "train": ("train.py", lambda: train_args(d / "train", preset_config(preset), settings["train_args"], threads)),
        "finish": ("finish.py", lambda: ["--ckpt_path", str(last), "--out", str(finished),
                                         "--iterations", str(settings["iterations"]), *threads]),
        "evaluate_adam": ("evaluate.py", lambda: ["--ckpt_path", str(last), "--out_dir", str(d / "eval-adam"),
                                                  *evaluation]),
        "evaluate_finish": ("evaluate.py", lambda: ["--ckpt_path", str(finished), "--out_dir", str(d / "eval-finish"),
                                                    "--euler", str(settings["euler_points"]), *evaluation]),
    }
    for step in STEPS:
        if step in steps:
            say(f"{preset}: {step} done already ({steps[step]['seconds']:.0f} s)")
            continue
        script, args = commands[step]
        argv = args()
        say(f"{preset}: {step}: {script} {' '.join(argv)}")
        steps[step] = {**run_child(script, argv), "command": [script, *argv], "threads": num_threads or default_threads()}
        write_json(steps_path, steps)
        say(f"{preset}: {step} done in {steps[step]['seconds']:.0f} s "
            f"(peak {steps[step]['max_rss_mib']:.0f} MiB)")
    return steps


def peer_figure(preset: str, results: Path = RESULTS) -> dict | None:
    """The peer's test sigma on mflow's test points (PEERS), from a full (not --quick) benchmark; None if none."""
    if preset not in PEERS or not (results / PEERS[preset][0]).exists():
        return None
    name, key, peer = PEERS[preset]
    data = json.loads((results / name).read_text())
    if data.get("quick") or key not in data:
        return None
    final = data[key]["final"]
    return {"peer": peer, "source": f"bench/results/{name}", "test_points": data["test_points"]["n"],
            "sigma_adam": final.get("after_adam", final.get("sigma")), "sigma_finish": final.get("after_lbfgs")}


def row(preset: str, out: Path, settings: dict, steps: dict, results: Path = RESULTS) -> dict:
    """One preset's leaderboard entry from its run folder."""
    d = out / preset
    adam = json.loads((d / "eval-adam" / "eval.json").read_text())["checkpoints"][0]
    fin = json.loads((d / "eval-finish" / "eval.json").read_text())["checkpoints"][0]
    summary = json.loads((d / "train" / "summary.json").read_text())
    ricci = fin["test"]["ricci"] or {}
    return {
        "preset": preset, "config": settings["config"], "train_args": settings["train_args"],
        "manifold": fin["manifold"], "epochs": summary["epochs"], "points": summary["points"],
        "test_points": fin["test"]["n"], "sigma_fs": fin["test"]["sigma_fs"], "sigma_adam": adam["test"]["sigma"],
        "sigma_finish": fin["test"]["sigma"], "gain_adam": adam["test"]["gain"], "gain": fin["test"]["gain"],
        "ricci": ricci.get("model"), "ricci_fs": ricci.get("fs"), "euler": fin["euler"],
        "seconds": {**{s: steps[s]["seconds"] for s in STEPS}, "total": sum(steps[s]["seconds"] for s in STEPS)},
        "max_rss_mib": {**{s: steps[s]["max_rss_mib"] for s in STEPS},
                        "max": max(steps[s]["max_rss_mib"] for s in STEPS)},
        "threads": sorted({steps[s].get("threads") for s in STEPS}, key=str),
        "resumed": "--resume" in steps["train"]["command"], "run_dir": str(d), "peer": peer_figure(preset, results),
    }


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def thread_label(r: dict) -> str:
    """A row's thread count as the table shows it ("? thr": recorded before steps noted their threads)."""
    t = [x for x in r.get("threads", []) if x is not None]
    return f"{'/'.join(map(str, t)) or '?'} thr"


def table(rows: list[dict]) -> str:
    """The leaderboard as a markdown table (COLUMNS)."""
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        e = r["euler"] or {}
        m = e.get("model") or {}
        chi = "-" if m.get("chi") is None else f"{m['chi']:.1f} +- {_num(m.get('error'), '.1f')}"
        p = r["peer"]
        peer = "-" if p is None else f"{p['peer']} {_num(p['sigma_adam'], '.3g')} / {_num(p['sigma_finish'], '.3g')}"
        cells = [r["preset"], r["config"], f"{r['sigma_fs']:.4f}", f"{r['sigma_adam']:.4g}", f"{r['sigma_finish']:.4g}",
                 f"{r['gain']:.3g}", f"{_num(r['ricci'], '.3g')} ({_num(r['ricci_fs'], '.3g')})", chi,
                 str(e.get("topological", "-")), _num(m.get("relative_difference"), "+.1%"),
                 f"{r['seconds']['total']:.0f} ({thread_label(r)})", f"{r['max_rss_mib']['max']:.0f}", peer]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merged_rows(results_json: Path, shared: dict, presets: list[str]) -> list[dict]:
    """The rows of an earlier leaderboard.json that this run keeps (the presets it does not run); SystemExit if that
    file was made with other settings (its rows would not compare with the new ones)."""
    if not Path(results_json).exists():
        return []
    old = json.loads(Path(results_json).read_text())
    if old.get("settings") != shared:
        raise SystemExit(f"leaderboard: {results_json} was made with other settings ({old.get('settings')}): its rows "
                         "would not compare; run with the same settings, or give another --results_json and --doc")
    return [r for r in old.get("rows", []) if r["preset"] not in presets and r["preset"] in PRESETS]


COVERAGE = (
    "Presets: fermat_quintic (conf/best.yaml, a smooth PhiFS GELU: chi needs a C^2 metric, and default.yaml's MultFS\n"
    "ReLU is refused by `evaluate.py --euler`), dwork at psi = 1.5, bicubic, p1p3, tetraquadric and two_cubics (their\n"
    "shipped configs). Not on the board: random, a generic quintic (chi -200, a third member of the quintic family after\n"
    "fermat_quintic and dwork), and fermat_quartic / fermat_cubic, a K3 surface and a torus (not threefolds: mflow's\n"
    "cheap test manifolds; the torus' chi = 0 has no relative difference).\n"
)


def markdown(rows: list[dict], commands: list[str], settings: dict) -> str:
    """docs/leaderboard.md: what the leaderboard is, the table, the command that regenerates it, the columns."""
    cols = "\n".join(f"- **{c}**: {what}" for c, what in COLUMNS)
    body = table(rows) if rows else "Not measured yet: run the command below (about 1.5-2 h on 2 cores).\n"
    return (
        "# Leaderboard\n\n"
        "Every preset's shipped configuration (conf/), trained by train.py, finished by finish.py's full-batch\n"
        "L-BFGS and evaluated by evaluate.py the same way: sigma and gain on fresh test points (not the data seed),\n"
        "the Ricci measure, and the Euler characteristic of the finished metric by Gauss-Bonnet-Chern\n"
        "(`evaluate.py --euler`) against the topological one ([training.md](training.md),\n"
        "[conventions.md](conventions.md)). Each preset has its run folder, "
        f"{settings['out_dir']}/<preset>/: train/ (the\ntrain.py run), finished.ckpt (+ .json), eval-adam/ and "
        "eval-finish/ (eval.json), steps.json (each step's wall\ntime and peak memory).\n\n"
        f"{body}\n{COVERAGE}\n"
        "Regenerate (resumable: a finished step is kept, a killed training resumes; a run of some presets replaces "
        f"their rows and keeps the others'):\n\n```bash\n" + "\n".join(commands) + "\n```\n\n"
        f"Settings: {settings['n_test']} test points, {settings['euler_points']} points for chi, "
        f"{settings['ricci_points']} for the Ricci measure, {settings['iterations']} L-BFGS iterations"
        + (f", train.py overrides {' '.join(settings['train_args'])}" if settings["train_args"] else "") + ".\n\n"
        f"## Columns\n\n{cols}\n"
    )


def main(argv=None) -> list[dict]:
    p = Parser(prog="bench/leaderboard.py", description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS), metavar="PRESET",
                   help=f"which presets (default: all of {', '.join(PRESETS)})")
    p.add_argument("--out_dir", default="runs/leaderboard", help="one run folder per preset (default runs/leaderboard)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="train.py overrides for every preset, e.g. trainer.max_epochs=1 data.n_points=2000 (tests)")
    p.add_argument("--n_test", type=int, default=20_000, help="fresh test points (default 20000)")
    p.add_argument("--euler_points", type=int, default=10_000,
                   help=f"points for the Euler characteristic (>= {MIN_POINTS}, default 10000)")
    p.add_argument("--ricci_points", type=int, default=500, help="test points for the Ricci measure (default 500)")
    p.add_argument("--iterations", type=int, default=20, help="L-BFGS iterations of the finish (default 20)")
    p.add_argument("--num_threads", type=int, default=None, help="torch threads of every step (default: fair share)")
    p.add_argument("--results_json", default=str(RESULTS / "leaderboard.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "leaderboard.md"))
    a = p.parse_args(argv)
    bad = [kv for kv in a.set if "=" not in kv]
    if bad:
        p.error(f"--set takes KEY=VALUE (a train.py option without its dashes), got {bad[0]!r}")
    if min(a.n_test, a.iterations) < 1 or a.euler_points < MIN_POINTS or a.ricci_points < 0:
        p.error(f"--n_test and --iterations must be >= 1, --euler_points >= {MIN_POINTS}, --ricci_points >= 0")
    out = Path(a.out_dir)
    shared = {"train_args": [f"--{kv}" for kv in a.set], "iterations": a.iterations, "n_test": a.n_test,
              "euler_points": a.euler_points, "ricci_points": a.ricci_points, "out_dir": a.out_dir}
    merged_rows(a.results_json, shared, a.presets)  # its settings checked before any work
    command = "python bench/leaderboard.py" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    new = []
    for preset in a.presets:
        settings = {"config": f"conf/{preset_config(preset).relative_to(configs.conf_dir())}",
                    **{k: v for k, v in shared.items() if k != "out_dir"}}
        steps = run_preset(preset, out, settings, a.num_threads)
        new.append({**row(preset, out, settings, steps), "command": command})
    kept = merged_rows(a.results_json, shared, a.presets)  # again: another process may have added rows meanwhile
    rows = sorted(kept + new, key=lambda r: PRESETS.index(r["preset"]))
    commands = list(dict.fromkeys(r.get("command", command) for r in rows))
    write_json(a.results_json, {"tool": "bench/leaderboard.py", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "commands": commands, "settings": shared, "cpu_count": os.cpu_count(),
                                "num_threads": a.num_threads, "rows": rows})
    atomic_write(a.doc, lambda tmp: Path(tmp).write_text(markdown(rows, commands, shared)))
    print(table(rows))
    say(f"wrote {a.results_json} and {a.doc}")
    return rows


if __name__ == "__main__":
    main()
