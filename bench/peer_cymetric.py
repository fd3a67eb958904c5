"""Peer benchmark on the bicubic: cymetric (github.com/pythoncymetric/cymetric; Larfors, Lukas, Ruehle, Schneider)
against mflow, same machine, one thread each. Run through ``python bench/bench_peers.py --peer cymetric``; not part
of the test suite and never an mflow dependency (cymetric is GPL: it lives in its own virtualenv,
.bench-venvs/cymetric, and nothing of it is in this repository). Writes bench/results/peers-cymetric.json
(peers-cymetric-quick.json with --quick) and docs/figures/peers_cymetric.png (sigma against CPU-seconds; --replot
redraws it from the JSON).

Manifold: mflow's preset 'bicubic' (surface_seed 0, t = (1, 1)); its 100 monomials and coefficients are handed to
cymetric's own point generator.
Peer: the documented recipe of cymetric's notebooks (1.PointGenerator: PointGenerator, which serves a CICY with one
hypersurface such as the bicubic, prepare_dataset(n_p = 100000, val_split 0.1) and prepare_basis(kappa);
2.TensorFlow_models: PhiFSModel on a 3 x 64 GELU network with a bias-free scalar output, alpha = [1]*5, Adam at
Keras' defaults, train_model(epochs = 50, batch_sizes = [64, 50000]), their custom metrics TotalLoss, SigmaLoss,
KaehlerLoss, TransitionLoss, VolkLoss, RicciLoss). The peer trains on its OWN points (its sampler, weights and
kappa); its point generator runs in one process (nproc = 1), TensorFlow on one intra-op and one inter-op thread.
mflow: bench_peers.mflow_side: train.py --config conf/bicubic.yaml --num_threads=1 --trainer.callbacks=[] with a
callback measuring sigma after every epoch, then finish.py's L-BFGS (--mflow_finish iterations).

Both sides are measured on the SAME test points, sampled by mflow (seed 7654321; the rare points with a second
coordinate within np.isclose of 1 in a factor are dropped for both, as cymetric's patch rule cannot place them),
with mflow's sigma: r = det g / |Omega|^2 in one chart per point, kappa = sum(w r) / sum(w),
sigma = sum w |1 - r/kappa| / sum w, mflow's weights w. The peer child evaluates cymetric's metric (its local
coordinates) at [Re z, Im z] and divides det g by cymetric's |Omega|^2 in the same chart. Checked and reported
(``definitions``): cymetric's |Omega|^2 and charts against mflow's, r_FS against mflow's r_FS point by point,
r of the learned metric in a second chart (another eliminated coordinate), and cymetric's own sigma_measure on the
same points and weights against mflow's sigma. Times are CPU-seconds of each child (getrusage: self and children;
elapsed wall time too), from the first training step, excluding the benchmark's evaluations, mflow's validation
and both sides' point generation (reported separately).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_peers import ONE_THREAD, ROOT, TEST_SEED, mflow_side, sigma_with_se, versions
from mflow.data.cymetric import basis_dict
from mflow.data.pointset import sample_pointset, save_pointset
from mflow.geometry.presets import manifold
from mflow.io import pyplot, write_json, write_png

PEER_VENV = ROOT / ".bench-venvs" / "cymetric"
INSTALL = ("python3.11 -m venv .bench-venvs/cymetric && .bench-venvs/cymetric/bin/pip install tensorflow-cpu==2.14.1 "
           "git+https://github.com/pythoncymetric/cymetric.git")
MARKS_CPU = (60, 300, 900, 1800, 3600)
PEER_THREADS = {**{k: v for k, v in ONE_THREAD.items() if k != "XLA_FLAGS"},
                "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

PEER_CHILD = r'''
import functools, json, os, resource, sys, time
from importlib.metadata import version
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.get_logger().setLevel("ERROR")
from cymetric.pointgen.pointgen import PointGenerator
from cymetric.models.tfhelper import prepare_tf_basis, train_model
from cymetric.models.tfmodels import PhiFSModel
from cymetric.models.metrics import SigmaLoss, KaehlerLoss, TransitionLoss, VolkLoss, RicciLoss, TotalLoss
from cymetric.models.measures import sigma_measure
tfk = tf.keras

cfg = json.load(open(sys.argv[1]))
m = np.load(cfg["inputs"])

def cpu():
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))

# their notebook 1: the point generator, its dataset and basis (one process)
t, c = time.perf_counter(), cpu()
pg = PointGenerator(m["monomials"], m["coefficients"], m["kmoduli"].astype(np.float64), m["ambient"], verbose=3)
pg.generate_points = functools.partial(pg.generate_points, nproc=1)
kappa = pg.prepare_dataset(cfg["n_points"], cfg["dir"])
pg.prepare_basis(cfg["dir"], kappa=kappa)
gen = {"seconds": time.perf_counter() - t, "cpu": cpu() - c}
data = dict(np.load(os.path.join(cfg["dir"], "dataset.npz")))
raw_basis = np.load(os.path.join(cfg["dir"], "basis.pickle"), allow_pickle=True)
BASIS = prepare_tf_basis(raw_basis)
gen.update(train_points=len(data["X_train"]), val_points=len(data["X_val"]), kappa=float(kappa))
print(f"[cymetric] {gen}", flush=True)

# the SAME test points (mflow's), in cymetric's conventions: X = [Re z, Im z], its chart rule and |Omega|^2
z = m["z"]
X = np.concatenate([z.real, z.imag], axis=1).astype(np.float32)
j_own = pg._find_max_dQ_coords(z)
omega_own = np.abs(pg.holomorphic_volume_form(z)) ** 2
pb = pg.pullbacks(z)
fs = pg.fubini_study_metrics(z)
r_fs = np.real(np.linalg.det(np.einsum("xai,xij,xbj->xab", pb, fs, np.conj(pb)))) / omega_own
dq = np.abs(pg._compute_dQdz(z)) * ~np.isclose(z, 1)  # a second chart: the next-best coordinate to eliminate
dq[np.arange(len(z)), j_own] = 0
j_alt = np.argmax(dq, axis=-1)
omega_alt = np.abs(pg.holomorphic_volume_form(z, j_elim=j_alt)) ** 2

# their notebook 2: PhiFSModel, 3 x 64 GELU, alpha = 1, Adam defaults, train_model(batch_sizes=[64, 50000])
tfk.utils.set_random_seed(cfg["seed"])  # python, numpy and TensorFlow: a reproducible initialisation
n_in = X.shape[1]
nn = tfk.Sequential([tfk.Input(shape=(n_in,))] + [tfk.layers.Dense(cfg["width"], activation="gelu") for _ in range(cfg["depth"])]
                    + [tfk.layers.Dense(1, use_bias=False)])
model = PhiFSModel(nn, BASIS, alpha=[1.0] * 5)
n_params = int(sum(np.prod(v.shape) for v in nn.trainable_variables))
det_fn = tf.function(lambda x: tf.math.real(tf.linalg.det(model(x))), reduce_retracing=True)
det_alt_fn = tf.function(lambda x, j: tf.math.real(tf.linalg.det(model(x, j_elim=j))), reduce_retracing=True)
B = cfg["eval_batch"]

def dets(fn, *extra):
    return np.concatenate([fn(tf.constant(X[i:i + B]), *[tf.constant(e[i:i + B]) for e in extra]).numpy()
                           for i in range(0, len(X), B)]).astype(np.float64)

evals, rs, clock = [], [], {"skip": 0.0, "skip_cpu": 0.0}
Xv, yv = tf.constant(data["X_val"], tf.float32), tf.constant(data["y_val"], tf.float32)

def evaluate(epoch, logs=None):
    t, c = time.perf_counter(), cpu()
    det = dets(det_fn)
    rs.append(det / omega_own)
    e = {"epoch": epoch, "elapsed": t - clock.get("t0", t) - clock["skip"], "cpu": c - clock.get("c0", c) - clock["skip_cpu"],
         "own_val_sigma": float(sigma_measure(model, Xv, yv)), "not_pd_det": int((det <= 0).sum())}
    if logs:
        e["train"] = {k: float(v) for k, v in logs.items()}
    evals.append(e)
    clock["skip"] += time.perf_counter() - t
    clock["skip_cpu"] += cpu() - c
    print(f"[cymetric] {e}", flush=True)

class Clock(tfk.callbacks.Callback):
    """train_model passes its callbacks to the second (volk) fit of each epoch: its end is the epoch's end."""
    def on_epoch_end(self, epoch, logs=None):
        clock["epoch"] = clock.get("epoch", 0) + 1
        evaluate(clock["epoch"], logs)

model(tf.constant(X[:2]))  # builds the model (eagerly)
evaluate(0)  # sigma at initialisation
cmetrics = [TotalLoss(), SigmaLoss(), KaehlerLoss(), TransitionLoss(), VolkLoss(), RicciLoss()]
clock["t0"], clock["c0"], clock["skip"], clock["skip_cpu"] = time.perf_counter(), cpu(), 0.0, 0.0
evals[0]["elapsed"] = evals[0]["cpu"] = 0.0
model, history = train_model(model, data, optimizer=tfk.optimizers.Adam(), epochs=cfg["epochs"], batch_sizes=cfg["batch_sizes"],
                             verbose=0, custom_metrics=cmetrics, callbacks=[Clock()])
train_cpu = cpu() - clock["c0"] - clock["skip_cpu"]

# checks on the final metric: a second chart, and their sigma_measure on the same points and weights
det_alt = dets(det_alt_fn, j_alt.reshape(-1, 1).astype(np.int64))
y = np.stack([m["w"], omega_own], axis=1).astype(np.float32)
their = float(sigma_measure(model, tf.constant(X), tf.constant(y)))

def installed(name):
    try:
        return version(name)
    except Exception:
        return "unknown"

out = {"generation": gen, "n_params": n_params, "evals": evals, "train_cpu": train_cpu,
       "their_sigma_on_mflow_points": their, "basis_intnums": np.real(np.asarray(raw_basis["INTNUMS"])).tolist(),
       "chart_agrees_with_mflow": float(np.mean(j_own == m["elim"])),
       "versions": {k: installed(k) for k in ("tensorflow", "tensorflow-cpu", "numpy", "cymetric")}}
np.savez(cfg["out"] + ".npz", r=np.stack(rs), r_alt=det_alt / omega_alt, omega=omega_own, r_fs=r_fs)
json.dump(out, open(cfg["out"] + ".json", "w"), indent=1)
'''


def ensure_peer_venv() -> Path:
    """cymetric's own virtualenv (never mflow's); installing it is left to the user (it needs the network)."""
    py = PEER_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([py, "-c", "import cymetric.models.tfmodels"], capture_output=True,
                                        env={**os.environ, **PEER_THREADS}).returncode == 0
    if not ok:
        raise SystemExit(f"cymetric is not importable from {py}; install it in its own virtualenv: {INSTALL}")
    return py


def run_child(python, code, cfg, cpu_core, env_extra):
    """Run code with cfg as its JSON argument under taskset (when cpu_core is set); returns (wall s, CPU s)."""
    with tempfile.TemporaryDirectory() as tmp:
        script, arg = Path(tmp) / "child.py", Path(tmp) / "cfg.json"
        script.write_text(code)
        arg.write_text(json.dumps(cfg))
        cmd = ([] if cpu_core is None else ["taskset", "-c", str(cpu_core)]) + [str(python), str(script), str(arg)]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not TensorFlow's: it refuses unknown XLA flags
        cpu = lambda: sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])  # noqa: E731
        t, c = time.perf_counter(), cpu()
        subprocess.run(cmd, check=True, cwd=ROOT, env={**env, **env_extra, "PYTHONWARNINGS": "ignore"})
        return time.perf_counter() - t, cpu() - c


def cymetric_side(args, test, surface, work):
    py = ensure_peer_venv()
    b = basis_dict(surface)
    np.savez(work / "inputs.npz", monomials=b["QB0"], coefficients=b["QF0"], ambient=b["AMBIENT"], kmoduli=b["KMODULI"],
             z=test.z.numpy(), elim=test.elim.numpy(), w=test.weights.numpy())
    cfg = {"inputs": str(work / "inputs.npz"), "dir": str(work / "cymetric-data"), "out": str(work / "cymetric"),
           "n_points": args.peer_points, "epochs": args.peer_epochs, "batch_sizes": [64, 50000], "depth": 3, "width": 64,
           "seed": 42, "eval_batch": 2000}
    wall, cpu = run_child(py, PEER_CHILD, cfg, args.cpu, PEER_THREADS)
    out = json.loads((work / "cymetric.json").read_text())
    arrays = np.load(work / "cymetric.npz")
    w = test.weights.numpy()
    for e, r in zip(out["evals"], arrays["r"]):
        e["sigma"], e["sigma_se"] = sigma_with_se(w, r)
    last = out["evals"][-1]
    r_fs_mflow = (torch.linalg.det(test.g_fs).real / test.omega_sq).numpy()
    q = arrays["r_fs"] / r_fs_mflow
    r, r_alt = arrays["r"][-1], arrays["r_alt"]
    out["definitions"] = {
        "omega_sq_max_rel_diff": float(np.abs(arrays["omega"] / test.omega_sq.numpy() - 1).max()),
        "chart_agrees_with_mflow": out.pop("chart_agrees_with_mflow"),
        "r_fs_ratio_max_dev": float(np.abs(q / np.median(q) - 1).max()), "r_fs_ratio_median": float(np.median(q)),
        "second_chart_r_max_rel_diff": float(np.abs(r_alt / r - 1).max()),
        "second_chart_sigma": sigma_with_se(w, r_alt)[0],
        "their_sigma_measure_on_same_points": out.pop("their_sigma_on_mflow_points"), "ours": last["sigma"],
        "intnums_agree": bool(np.array_equal(np.rint(out.pop("basis_intnums")), b["INTNUMS"])),
    }
    d = out["definitions"]
    d["same_points_rel_diff"] = abs(d["their_sigma_measure_on_same_points"] / d["ours"] - 1)
    d["agree"] = bool(d["same_points_rel_diff"] < 1e-3 and d["r_fs_ratio_max_dev"] < 1e-6 and d["omega_sq_max_rel_diff"] < 1e-6)
    out.update(wall=wall, process_cpu=cpu, recipe={k: cfg[k] for k in ("n_points", "epochs", "batch_sizes", "depth", "width")},
               series=[{k: e[k] for k in ("epoch", "elapsed", "cpu", "sigma", "sigma_se", "own_val_sigma")}
                       for e in out["evals"]],
               final={"sigma": last["sigma"], "cpu": last["cpu"], "own_val_sigma": last["own_val_sigma"]})
    return out


def at_cpu(series, t):
    """sigma at CPU time t (linear interpolation); None past the run's end."""
    ts, ss = [p["cpu"] for p in series], [p["sigma"] for p in series]
    return float(np.interp(t, ts, ss)) if ts and t <= ts[-1] else None


def compare(peer, ours):
    """At every CPU time either side measured after training started (inside both runs): is mflow's sigma lower?
    The other side's sigma there is interpolated linearly between its measurements."""
    end = min(peer[-1]["cpu"], ours[-1]["cpu"])
    times = sorted({p["cpu"] for p in peer + ours if p["epoch"] != 0 and p["cpu"] <= end})
    rows = [{"cpu": t, "cymetric": at_cpu(peer, t), "mflow": at_cpu(ours, t)} for t in times]
    return {"points": rows, "mflow_lower_at_every_time": all(r["mflow"] < r["cymetric"] for r in rows) if rows else None}


def sides(result: dict) -> list[tuple[str, dict]]:
    """(name, measurements) of each side a result holds: cymetric, then each mflow config."""
    return ([("cymetric", result["cymetric"])] if "cymetric" in result else []) + \
        [(f"mflow {Path(c).name}", m) for c, m in result.get("mflow", {}).items()]


def plot(result: dict, path: Path) -> Path:
    """Test sigma against CPU-seconds for both sides (log-log; mflow's L-BFGS finish as its last point)."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    for name, s in sides(result):
        name += f" (its notebook recipe, {s['recipe']['epochs']} epochs)" if name == "cymetric" else ""
        pts = [p for p in s["series"] if p["epoch"] != 0]  # after training started (log scale)
        ax.plot([p["cpu"] for p in pts], [p["sigma"] for p in pts], marker=".", label=name)
    ax.axhline(result["sigma_fs"], color="grey", ls=":", label="Fubini-Study")
    ax.set(xscale="log", yscale="log", xlabel="CPU-seconds of training (one thread)", ylabel="test sigma",
           title=f"bicubic, {result['test_points']['n']} shared test points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return write_png(path, fig)


def main(args):
    """``bench_peers.py --peer cymetric``: the options of bench_peers (module doc of this file)."""
    args.mflow_config = args.mflow_config or ["conf/bicubic.yaml"]
    n_test, args.peer_points = 50_000, 100_000
    args.peer_epochs = args.peer_epochs or 50
    if args.quick:
        n_test, args.peer_points = 2_000, 2_000
        args.epochs, args.peer_epochs, args.mflow_finish = args.epochs or 3, min(args.peer_epochs, 3), min(args.mflow_finish, 2)
    out = Path(args.out or ROOT / "bench" / "results" / ("peers-cymetric-quick.json" if args.quick else "peers-cymetric.json"))
    figure = ROOT / "docs" / "figures" / "peers_cymetric.png"
    if args.replot:
        print(f"wrote {plot(json.loads(out.read_text()), figure)}")
        return
    torch.set_num_threads(1)
    surface = manifold("bicubic")
    result = {"machine": {"cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "threads": 1, "taskset_cpu": args.cpu,
                          "env_mflow": ONE_THREAD, "env_cymetric": PEER_THREADS}, "quick": args.quick,
              "manifold": {"preset": "bicubic", "surface_seed": 0, "kahler": list(surface.kahler),
                           "fingerprint": surface.fingerprint()}}
    test = sample_pointset(surface, n_test, seed=TEST_SEED)
    z = test.z.numpy()
    keep = np.logical_and.reduce([np.isclose(z[:, s], 1).sum(1) == 1 for s in surface.factor_slices])
    test = test[torch.from_numpy(keep)]
    result["test_points"] = {"n": len(test), "seed": TEST_SEED, "dropped_ambiguous_patch": int((~keep).sum()),
                             "sampler": "mflow sample_pointset(bicubic)"}
    w = test.weights.numpy()
    result["sigma_fs"] = sigma_with_se(w, (torch.linalg.det(test.g_fs).real / test.omega_sq).numpy())[0]
    with tempfile.TemporaryDirectory(prefix="bench-cymetric-") as tmp:
        work = Path(tmp)
        test_file = save_pointset(work / "test.npz", test, surface, seed=TEST_SEED)
        if not args.skip_peer:
            result["cymetric"] = cymetric_side(args, test, surface, work)
        if not args.skip_mflow:
            result["mflow"] = {c: mflow_side(args, c, test_file, work) for c in args.mflow_config}
    for _, s in sides(result):
        s["sigma_at_cpu"] = {str(t): at_cpu(s["series"], t) for t in MARKS_CPU}
    if "cymetric" in result:
        result["comparison"] = {c: compare(result["cymetric"]["series"], m["series"]) for c, m in result.get("mflow", {}).items()}
    peer_versions = result.get("cymetric", {}).pop("versions", {})
    result["versions"] = {**versions(), **{f"cymetric-venv {k}": v for k, v in peer_versions.items()}}
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["notes"] = ("sigma: mflow's definition with mflow's weights on the same mflow-sampled test points; cpu: CPU-seconds "
                       "of each child from its first training step, excluding evaluations and point generation.")
    write_json(out, result)
    if not args.quick:
        plot(result, figure)
    for name, s in sides(result):
        curve = ", ".join(f"{p['cpu']:.0f}s:{p['sigma']:.4f}" for p in s["series"])
        print(f"{name:<28} sigma vs CPU-s: {curve}")
    if "cymetric" in result:
        print(f"definitions: {result['cymetric']['definitions']}")
    print(f"wrote {out}")
