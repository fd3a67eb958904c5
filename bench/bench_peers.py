"""Peer benchmark: MLGeometry (pip mlgeometry-jax 2.0.0; Douglas, Lakshminarasimhan, Qi) against mflow on the
Fermat quintic, same machine, one thread each. Not part of the test suite. Writes bench/results/peers.json.

Peer: MLGeometry's documented quintic recipe (their training/bihomoNN_train.py) in its own virtualenv
(.bench-venvs/mlgeometry, created and pip-installed here when absent): psi = 0 of their f0 family, 50k train and
50k test points from their Hypersurface (n_pairs 10000, 5 points a pair), the k = 4 Kaehler-potential network
(their `twolayers` with layers 70_100: Bihomogeneous z_i zbar_j, two square-activation layers, log: degree 4 in
z and zbar, 9,200 parameters; the network is composed here from their bihomoNN layers, their models.py is not
in the wheel), Adam 1e-2 at batch 1000 for 100 epochs on their weighted_MAPE, then 20 jaxopt.LBFGS iterations
on their full-dataset loss (tol 1e-7; batches of 2000, the largest size <= their 2048 that divides the train
set: they pad a last partial batch with z = 0, where log 0 makes loss and gradient NaN). One solver worker.
mflow: train.py --config C --num_threads=1 --trainer.callbacks=[] (no NTKDrift diagnostics) for each C of --mflow_config (default conf/best.yaml, PhiFS, and
conf/bihomogeneous.yaml, the peer's model family), with a callback measuring sigma after every epoch, then (like the
peer) 20 iterations of finish.py's full-batch L-BFGS on its last checkpoint (--mflow_finish).

Both sides are measured on the SAME 50k test points, sampled by mflow (seed 7654321), with mflow's sigma
(docs/conventions.md):
r = det g / |Omega|^2 in one chart per point, kappa = sum(w r)/sum(w), sigma = sum w |1 - r/kappa|
/ sum w, mflow's weights w. The peer child builds its Hypersurface with points= these points (+ autopatch), so
that MLGeometry computes its own restriction and Omega_Omegabar there, evaluates its metric with
loss.compute_cy_metric and returns det g / Omega_Omegabar in the original point order (autopatch regroups the
points by chart: the order is rebuilt from its patches and checked up to projective scaling). The peer's own
weighted_MAPE on its own test set is reported too, and whether the two definitions agree on its metric.
Elapsed times exclude the benchmark's own evaluations and mflow's validation; sigma at equal wall time is interpolated linearly.

    python bench/bench_peers.py [--peer cymetric] [--quick] [--skip_peer | --skip_mflow] [--epochs N] [--peer_epochs 100]
        [--mflow_config conf/best.yaml conf/bihomogeneous.yaml] [--mflow_args="--model.precision=float32 --model.compile=true"] [--cpu K]
(--mflow_args takes its value after "=", as it starts with "--"; --quick writes bench/results/peers-quick.json.)
"""
import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
os.environ.update(ONE_THREAD)  # before numpy / torch are imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mflow.cli.options import Parser  # noqa: E402
from mflow.data.pointset import sample_pointset, save_pointset  # noqa: E402
from mflow.geometry.montecarlo import sigma_error  # noqa: E402
from mflow.geometry.presets import manifold  # noqa: E402
from mflow.io import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".bench-venvs" / "mlgeometry"
PEER_PACKAGE = "mlgeometry-jax==2.0.0"
TEST_SEED = 7654321
MARKS = (60, 300, 900)

PEER_CHILD = r'''
import functools, json, multiprocessing, resource, sys, time
from importlib.metadata import version
import numpy as np, sympy as sp, jax, jax.numpy as jnp, optax, jaxopt
from flax import linen as nn
import MLGeometry as mlg
from MLGeometry import bihomoNN as bnn, loss as mloss

cfg = json.load(open(sys.argv[1]))
mlg.hypersurface.Pool = functools.partial(multiprocessing.Pool, 1)  # their root solver, one worker process

def cpu():
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))

class KPotential(nn.Module):  # their `twolayers` [70, 100]: k = 4 after two square activations
    units: tuple = (70, 100)
    @nn.compact
    def __call__(self, z):
        x = bnn.Bihomogeneous()(z)
        for n in self.units:
            x = bnn.SquareDense(features=n, activation=lambda t: t ** 2)(x)
        return jnp.log(bnn.SquareDense(features=1, activation=None)(x))

def original_order(hs, z):
    """Row k of generate_dataset(hs) is point order[k] of z: autopatch groups by argmax |z| (top patches hold
    z / z_i in the original order), then by the largest gradient (subsets of a top patch, order kept)."""
    top = np.argmax(np.abs(hs.points), axis=1)  # their rule, on their own complex64 copy
    where = {row.tobytes(): j for p in hs.patches for row, j in zip(p.points, np.flatnonzero(top == p.norm_coordinate))}
    leaves = [p for p in mlg.dataset._collect_leaf_patches(hs) if p.n_points > 0]  # generate_dataset's order
    order = np.array([where[row.tobytes()] for p in leaves for row in p.points])
    assert np.array_equal(np.sort(order), np.arange(len(z))), "autopatch lost or duplicated points"
    p, q = np.concatenate([lf.points for lf in leaves]).astype(np.complex128), z[order]
    proj = (p * q.conj()).sum(1, keepdims=True) / (q * q.conj()).sum(1, keepdims=True)
    dist = np.linalg.norm(p - proj * q, axis=1) / np.linalg.norm(p, axis=1)
    assert dist.max() < 1e-5, f"point order not recovered (projective distance {dist.max():.2e})"
    return order, float(dist.max())

def installed(name):
    try:
        return version(name)
    except Exception:  # a package without metadata must not lose the run's results
        return "unknown"

def padding_free(n, cap):
    """Largest batch <= cap dividing n: make_full_dataset_loss_fn pads the last batch with z = 0 points, where
    log(0) makes the loss and its gradient NaN (mlgeometry-jax 2.0.0), so padding must not occur."""
    return max(d for d in range(1, cap + 1) if n % d == 0)

Z = sp.symbols("z0:5")
f = sum(z ** 5 for z in Z)  # f0 with psi = 0
np.random.seed(cfg["seed"])
t, c = time.perf_counter(), cpu()
hs_train, hs_test = (mlg.hypersurface.Hypersurface(list(Z), f, cfg["n_pairs"]) for _ in range(2))
gen = {"seconds": time.perf_counter() - t, "cpu": cpu() - c, "points": hs_train.n_points + hs_test.n_points}
t = time.perf_counter()
train, test = mlg.dataset.generate_dataset(hs_train), mlg.dataset.generate_dataset(hs_test)
zm = np.load(cfg["test_points"])
hs_m = mlg.hypersurface.Hypersurface(list(Z), f, points=zm)
hs_m.autopatch()
ours = mlg.dataset.generate_dataset(hs_m)
order, order_dist = original_order(hs_m, zm)
gen["dataset_seconds"] = time.perf_counter() - t

model = KPotential()
params = mlg.trainer.init_params(model, (5,), cfg["seed"])
n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
print(f"[peer] {gen['points']} points in {gen['seconds']:.1f} s; k=4 network, {n_params} parameters", flush=True)
det_fn = jax.jit(lambda p, b: jnp.real(jnp.linalg.det(mloss.compute_cy_metric(model, p, b))))
eval_batch, lbfgs_batch = padding_free(len(test["points"]), 1000), padding_free(len(train["points"]), 2048)
own_test_sigma = jax.jit(mloss.make_full_dataset_loss_fn(model, test, mloss.weighted_MAPE, batch_size=eval_batch))
omega, mass = np.asarray(ours["Omega_Omegabar"], np.float64), np.asarray(ours["mass"], np.float64)
evals, rs, clock = [], [], {"t0": time.perf_counter(), "c0": cpu(), "skip": 0.0, "skip_cpu": 0.0}

def evaluate(phase, step):
    t, c = time.perf_counter(), cpu()
    det = np.concatenate([np.asarray(det_fn(params, {"points": ours["points"][i:i + 2000], "restriction": ours["restriction"][i:i + 2000]}))
                          for i in range(0, len(order), 2000)]).astype(np.float64)
    r = np.empty_like(det)
    r[order] = det / omega
    factor = np.sum(mass * det / omega) / np.sum(mass)
    rs.append(r)
    evals.append({"phase": phase, "step": step, "elapsed": t - clock["t0"] - clock["skip"], "cpu": c - clock["c0"] - clock["skip_cpu"],
                  "own_test_sigma": float(own_test_sigma(params)),
                  "their_sigma_on_mflow_points": float(mloss.weighted_MAPE(omega, det / factor, mass))})
    clock["skip"] += time.perf_counter() - t
    clock["skip_cpu"] += cpu() - c
    print(f"[peer] {phase} {step}: {evals[-1]}", flush=True)

evaluate("init", 0)
opt = optax.adam(cfg["lr"])
state = opt.init(params)

@jax.jit
def step(params, state, batch):
    loss, grads = jax.value_and_grad(lambda p: mloss.compute_loss(model, p, batch, mloss.weighted_MAPE))(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

rng, n, bs, epoch_seconds = jax.random.PRNGKey(cfg["seed"]), len(train["points"]), cfg["batch"], []
for epoch in range(1, cfg["epochs"] + 1):
    t = time.perf_counter()
    rng, key = jax.random.split(rng)
    shuffled = jax.tree_util.tree_map(lambda x: x[jax.random.permutation(key, n)], train)
    for i in range(0, n, bs):
        params, state, loss = step(params, state, {k: v[i:i + bs] for k, v in shuffled.items()})
        loss.item()
    epoch_seconds.append(time.perf_counter() - t)
    if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]:
        evaluate("adam", epoch)

solver = jaxopt.LBFGS(fun=mloss.make_full_dataset_loss_fn(model, train, mloss.weighted_MAPE, batch_size=lbfgs_batch),
                      maxiter=cfg["lbfgs_iters"], tol=1e-7)
lstate, lbfgs = solver.init_state(params), []
lstep = jax.jit(solver.update)
t_lbfgs, c_lbfgs = time.perf_counter() - clock["skip"], cpu() - clock["skip_cpu"]
for it in range(1, cfg["lbfgs_iters"] + 1):
    params, lstate = lstep(params, lstate)
    lbfgs.append({"iteration": it, "train_loss": float(lstate.value), "elapsed": time.perf_counter() - clock["t0"] - clock["skip"]})
    if it % cfg["eval_every"] == 0 or it == cfg["lbfgs_iters"] or float(lstate.error) < 1e-7:
        evaluate("lbfgs", it)
    if float(lstate.error) < 1e-7:
        break
out = {"n_params": n_params, "model": "Bihomogeneous -> SquareDense 70 -> SquareDense 100 -> SquareDense 1 -> log (k=4)",
       "generation": gen, "train_points": int(n), "test_points": int(len(test["points"])), "order_max_projective_distance": order_dist,
       "adam_seconds_per_epoch": epoch_seconds, "lbfgs": lbfgs, "lbfgs_batch": lbfgs_batch, "eval_batch": eval_batch,
       "lbfgs_seconds": time.perf_counter() - t_lbfgs - clock["skip"], "lbfgs_cpu": cpu() - c_lbfgs - clock["skip_cpu"],
       "evals": evals, "versions": {k: installed(k) for k in ("jax", "jaxlib", "flax", "optax", "jaxopt", "mlgeometry-jax")}}
np.savez(cfg["out"] + ".npz", r=np.stack(rs), mass=mass[np.argsort(order)])
json.dump(out, open(cfg["out"] + ".json", "w"), indent=1)
'''

MFLOW_CHILD = r'''
import json, sys, time
import lightning as L, torch
from mflow.cli.train import main
from mflow.data.pointset import load_pointset

cfg = json.load(open(sys.argv[1]))
points = load_pointset(cfg["test_points"]).points

class SigmaClock(L.Callback):
    """sigma of the current network on the bench's test points at train start and after every epoch."""
    def __init__(self):
        self.series, self.skip, self.skip_cpu = [], 0.0, 0.0
    def record(self, module, epoch):
        t, c = time.perf_counter(), time.process_time()
        m = module.measure(points)
        self.series.append({"epoch": epoch, "elapsed": t - self.t0 - self.skip, "cpu": c - self.c0 - self.skip_cpu, **m})
        self.skip += time.perf_counter() - t
        self.skip_cpu += time.process_time() - c
        print(f"[mflow-bench] {self.series[-1]}", flush=True)
    def on_train_start(self, trainer, module):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.record(module, 0)
    def on_validation_start(self, trainer, module):  # mflow's validation is not training: excluded like the peer's
        self.v, self.vc = time.perf_counter(), time.process_time()
    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.skip += time.perf_counter() - self.v
            self.skip_cpu += time.process_time() - self.vc
    def on_train_epoch_end(self, trainer, module):
        self.record(module, trainer.current_epoch + 1)

clock = SigmaClock()
trainer = main(cfg["argv"], callbacks=[clock])
summary = json.load(open(cfg["run_dir"] + "/summary.json"))
if cfg["finish"]:  # finish.py's full-batch L-BFGS on the run's last checkpoint, timed like the epochs
    from mflow.cli.finish import finish_checkpoint
    from mflow.evaluation.checkpoints import load_checkpoint
    out_ckpt = cfg["run_dir"] + "/finished.ckpt"
    rep = finish_checkpoint(cfg["run_dir"] + "/checkpoints/last.ckpt", out_ckpt, iterations=cfg["finish"])
    t = rep["seconds"]  # the L-BFGS iterations alone (one thread: CPU = wall), not finish.py's own sigma evaluations
    last = clock.series[-1]
    m = load_checkpoint(out_ckpt).module.measure(points)
    clock.series.append({"epoch": "finish", "elapsed": last["elapsed"] + t, "cpu": last["cpu"] + t, **m})
    print(f"[mflow-bench] {clock.series[-1]}", flush=True)
out = {"series": clock.series, "n_params": sum(p.numel() for p in trainer.lightning_module.parameters()),
       "threads": torch.get_num_threads(), "summary": summary}
json.dump(out, open(cfg["out"], "w"), indent=1, default=str)
'''


def run_child(python, code, cfg, cpu_core):
    """Run a child script (code) with cfg as its JSON argument, one thread; returns (wall s, CPU s)."""
    with tempfile.TemporaryDirectory() as tmp:
        script, arg = Path(tmp) / "child.py", Path(tmp) / "cfg.json"
        script.write_text(code)
        arg.write_text(json.dumps(cfg))
        cmd = ([] if cpu_core is None else ["taskset", "-c", str(cpu_core)]) + [str(python), str(script), str(arg)]
        cpu = lambda: sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])  # noqa: E731
        t, c = time.perf_counter(), cpu()
        # a fresh torch.compile cache: mflow pays its compilation as the peer pays its JIT's
        env = {**os.environ, **ONE_THREAD, "PYTHONWARNINGS": "ignore", "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        return time.perf_counter() - t, cpu() - c


def ensure_peer_venv() -> Path:
    """The peer's own virtualenv with MLGeometry (never /work/venv); nothing is done if it imports already."""
    py = PEER_VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import MLGeometry"], capture_output=True).returncode == 0:
        return py
    subprocess.run(["python3.11", "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", PEER_PACKAGE], check=True)
    return py


def sigma_with_se(w, r, system=None):
    """mflow's sigma (kappa of r itself, weights w) and its Monte-Carlo standard error (kappa's own error included,
    the points of a sampling system counted together: mflow.geometry.montecarlo.sigma_error)."""
    w, r = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)
    return sigma_error(w, r, torch.ones_like(r), system)


def at_time(series, t):
    """sigma at elapsed time t (linear interpolation; the final sigma when the run ended before t)."""
    ts, ss = [p["elapsed"] for p in series], [p["sigma"] for p in series]
    return float(np.interp(t, ts, ss)) if ts else None


def peer_side(args, test, work):
    py = ensure_peer_venv()
    np.save(work / "test_z.npy", test.z.numpy())
    cfg = {"seed": 42, "n_pairs": args.n_pairs, "epochs": args.peer_epochs, "lbfgs_iters": args.lbfgs_iters, "lr": 1e-2,
           "batch": 1000, "eval_every": args.eval_every, "test_points": str(work / "test_z.npy"), "out": str(work / "peer")}
    wall, cpu = run_child(py, PEER_CHILD, cfg, args.cpu)
    out = json.loads((work / "peer.json").read_text())
    arrays = np.load(work / "peer.npz")
    w = test.weights.numpy()
    for e, r in zip(out["evals"], arrays["r"]):
        e["sigma"], e["sigma_se"] = sigma_with_se(w, r, test.system)
        e["not_pd_det"] = int((r <= 0).sum())
    last, gen = out["evals"][-1], out["generation"]
    ratio = arrays["mass"] / w
    joint_se = np.hypot(last["sigma_se"], last["sigma_se"] * (len(w) / out["test_points"]) ** 0.5)
    out["definitions"] = {
        "same_points_rel_diff": abs(last["their_sigma_on_mflow_points"] / last["sigma"] - 1),
        "weights_proportional_max_dev": float(np.abs(ratio / np.median(ratio) - 1).max()),
        "own_test_minus_ours": last["own_test_sigma"] - last["sigma"], "mc_joint_se": float(joint_se),
    }
    d = out["definitions"]
    d["agree"] = bool(d["same_points_rel_diff"] < 1e-3 and abs(d["own_test_minus_ours"]) < 3 * joint_se)
    adam = [e for e in out["evals"] if e["phase"] == "adam"]
    out.update(points_per_second=gen["points"] / gen["seconds"], seconds_per_epoch=float(np.mean(out["adam_seconds_per_epoch"])),
               seconds_per_epoch_after_first=float(np.mean(out["adam_seconds_per_epoch"][1:] or [np.nan])),
               wall=wall, process_cpu=cpu, series=[{"elapsed": e["elapsed"], "sigma": e["sigma"]} for e in out["evals"]],
               final={"after_adam": adam[-1]["sigma"] if adam else None, "after_lbfgs": last["sigma"],
                      "own_test_sigma_after_adam": adam[-1]["own_test_sigma"] if adam else None,
                      "own_test_sigma_after_lbfgs": last["own_test_sigma"],
                      "adam_cpu": adam[-1]["cpu"] if adam else None, "lbfgs_cpu": out["lbfgs_cpu"]})
    return out


def mflow_side(args, config, test_file, work):
    run_dir = work / f"mflow-run-{Path(config).stem}"
    argv = ["--config", config, "--num_threads=1", "--wandb=off", f"--run_dir={run_dir}",
            "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", *shlex.split(args.mflow_args)]
    argv += [f"--trainer.max_epochs={args.epochs}"] if args.epochs else []
    argv += ["--data.n_points=2000"] if args.quick else []
    cfg = {"argv": argv, "run_dir": str(run_dir), "test_points": str(test_file), "out": str(run_dir) + ".json",
           "finish": args.mflow_finish}
    wall, cpu = run_child(sys.executable, MFLOW_CHILD, cfg, args.cpu)
    out = json.loads(Path(cfg["out"]).read_text())
    s = out.pop("summary")
    series = out["series"]
    out.update(command="train.py " + " ".join(argv), wall=wall, process_cpu=cpu, seconds_per_epoch=s.get("seconds_per_epoch"),
               final={"sigma": series[-1]["sigma"], "cpu": series[-1]["cpu"], "own_test_sigma": s["sigma_final"]["test"],
                      "before_finish": [p for p in series if p["epoch"] != "finish"][-1]["sigma"]},
               series=[{"elapsed": p["elapsed"], "cpu": p["cpu"], "sigma": p["sigma"], "not_pd": p["not_pd"], "epoch": p["epoch"]}
                       for p in series],
               epochs=sum(p["epoch"] != "finish" for p in series) - 1)
    return out


def sampling_speed(n):
    t = time.perf_counter()
    sample_pointset(manifold("fermat_quintic"), n, seed=11)
    return {"points": n, "seconds": time.perf_counter() - t, "points_per_second": n / (time.perf_counter() - t)}


def versions():
    import lightning
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"torch": torch.__version__, "lightning": lightning.__version__, "mflow_commit": commit + ("+dirty" if dirty else "")}


def table(result):
    sides = ([("MLGeometry", result["mlgeometry"])] if "mlgeometry" in result else []) + \
        [(f"mflow {Path(c).name}", m) for c, m in result.get("mflow", {}).items()]
    fmt = lambda x, f="{:.4g}": "-" if x is None else f.format(x)  # noqa: E731
    final = lambda name, s: s["final"]["after_lbfgs"] if name == "MLGeometry" else s["final"]["sigma"]  # noqa: E731
    adam = lambda name, s: s["final"]["after_adam"] if name == "MLGeometry" else s["final"]["before_finish"]  # noqa: E731
    sampling = lambda name: result["mflow_sampling"]["points_per_second"] if name != "MLGeometry" else None  # noqa: E731
    rows = [("", *[n for n, _ in sides]),
            ("sampling points/s", *[fmt(s["points_per_second"] if n == "MLGeometry" else sampling(n)) for n, s in sides]),
            ("seconds per epoch", *[fmt(s["seconds_per_epoch"]) for _, s in sides]),
            ("parameters", *[fmt(s["n_params"], "{}") for _, s in sides])]
    rows += [(f"sigma at {t} s", *[fmt(s["sigma_at"][str(t)]) for _, s in sides]) for t in MARKS]
    rows += [("sigma after Adam", *[fmt(adam(n, s)) for n, s in sides]),
             ("final sigma (after L-BFGS)", *[fmt(final(n, s)) for n, s in sides]),
             ("run wall / CPU s", *[f"{s['wall']:.0f} / {s['process_cpu']:.0f}" for _, s in sides])]
    return "\n".join(f"{r[0]:<28}" + "".join(f"{c:>26}" for c in r[1:]) for r in rows)


def main():
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=("mlgeometry", "cymetric"), default="mlgeometry",
                    help="mlgeometry: the quintic (this file); cymetric: the bicubic (bench/peer_cymetric.py)")
    ap.add_argument("--mflow_config", nargs="+", default=None,
                    help="default conf/best.yaml conf/bihomogeneous.yaml (cymetric: conf/bicubic.yaml)")
    ap.add_argument("--mflow_args", default="", help="extra train.py arguments, one string")
    ap.add_argument("--epochs", type=int, default=None, help="mflow epochs (default: the config's)")
    ap.add_argument("--peer_epochs", type=int, default=None, help="default 100 (cymetric: 50, its notebook's)")
    ap.add_argument("--mflow_finish", type=int, default=20, help="L-BFGS iterations of finish.py after each mflow run (0: none)")
    ap.add_argument("--lbfgs_iters", type=int, default=20)
    ap.add_argument("--skip_peer", action="store_true")
    ap.add_argument("--skip_mflow", action="store_true")
    ap.add_argument("--reuse_peer", default=None, help="take the peer's side from an earlier peers.json (same test points)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2k points, 2 epochs a side, 2 L-BFGS iterations")
    ap.add_argument("--cpu", type=int, default=None, help="pin both children to this core with taskset")
    ap.add_argument("--out", default=None, help="default bench/results/peers.json (peers-quick.json with --quick)")
    ap.add_argument("--replot", action="store_true", help="cymetric: redraw docs/figures/peers_cymetric.png from --out")
    args = ap.parse_args()
    if args.peer == "cymetric":
        from peer_cymetric import main as cymetric_main
        return cymetric_main(args)
    args.mflow_config = args.mflow_config or ["conf/best.yaml", "conf/bihomogeneous.yaml"]
    args.peer_epochs = args.peer_epochs or 100
    n_test, n_speed, args.n_pairs, args.eval_every = 50_000, 100_000, 10_000, 10
    if args.quick:
        n_test, n_speed, args.n_pairs, args.eval_every = 2_000, 5_000, 400, 1
        args.epochs, args.peer_epochs, args.lbfgs_iters, args.mflow_finish = args.epochs or 2, 2, 2, min(args.mflow_finish, 2)
    out = Path(args.out or ROOT / "bench" / "results" / ("peers-quick.json" if args.quick else "peers.json"))
    torch.set_num_threads(1)
    result = {"machine": {"cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "threads": 1,
                          "taskset_cpu": args.cpu, "env": ONE_THREAD}, "quick": args.quick}
    test = sample_pointset(manifold("fermat_quintic"), n_test, seed=TEST_SEED)
    result["test_points"] = {"n": len(test), "seed": TEST_SEED, "sampler": "mflow sample_pointset(fermat_quintic)"}
    result["mflow_sampling"] = sampling_speed(n_speed)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        test_file = save_pointset(work / "test.npz", test, manifold("fermat_quintic"), seed=TEST_SEED)
        if args.reuse_peer:  # the peer's side of an earlier run on the same test points
            earlier = json.loads(Path(args.reuse_peer).read_text())
            if earlier["test_points"] != result["test_points"]:
                raise ValueError(f"{args.reuse_peer} was measured on other test points: {earlier['test_points']}")
            peer_versions = {k: v for k, v in earlier["versions"].items() if k not in versions()}
            result["mlgeometry"] = {**earlier["mlgeometry"], "reused_from": args.reuse_peer, "versions": peer_versions}
        elif not args.skip_peer:
            result["mlgeometry"] = peer_side(args, test, work)
        if not args.skip_mflow:
            result["mflow"] = {c: mflow_side(args, c, test_file, work) for c in args.mflow_config}
    for side in ([result["mlgeometry"]] if "mlgeometry" in result else []) + list(result.get("mflow", {}).values()):
        side["sigma_at"], side["run_ended_s"] = {str(t): at_time(side["series"], t) for t in MARKS}, side["series"][-1]["elapsed"]
    result["versions"] = {**versions(), **(result.get("mlgeometry", {}).pop("versions", {}))}
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["notes"] = ("sigma: mflow's definition with mflow's weights on the same mflow-sampled test points; elapsed "
                       "excludes the benchmark's evaluations; sigma_at uses the final sigma when a run ended earlier.")
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
