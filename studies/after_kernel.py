"""The after kernel: is the network's advantage over its frozen NTK the kernel adapting to the data?

For each network of the config (conf/relu_baseline.yaml's ReLU MultFS, conf/best.yaml's PhiFS) trained by train.py
as its config says, with a checkpoint after every epoch: at the config's epochs (0 = initialisation),
  * the network's own test gain (sigma_FS / sigma on fresh test points);
  * the after-kernel flow's test gain: the empirical metric-NTK of the checkpoint, frozen (mflow.kernels.network,
    the full Theta_ijkl(x, x') by NTK-vector products), as the kernel of the frozen flow (eq. 2.12) from g_FS on the
    first `train_points` of the network's train split, its step size picked from a grid (times N / lambda_max) by
    the train gain of a short flow;
  * the kernel's drift from initialisation on the probe points (trace kernel: relative change, CKA; NTKDrift's);
  * its alignment with the target on test points: the cosine between what one flow step from g_FS does at the
    test points, -Theta(test, train) dL/dr(train), and the ideal direction there, -dL/dr(test) (1: the kernel
    moves the test points exactly downhill; 0: not at all).
If the kernel taken after training generalises far better than the one at initialisation, the network's feature
learning is (at least) its kernel adapting to the data.

    python studies/after_kernel.py [--config conf/studies/after_kernel.yaml] [--out_dir runs/after-kernel]

Writes <out>/after_kernel.json, after_kernel.md and after_kernel.png; a network that finished training is not
retrained and a finished checkpoint is not re-measured (<out>/<network>/measure-e<epoch>.json), so a killed study
resumes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow.cli.options import Parser  # noqa: E402
from mflow.data.pointset import sample_pointset  # noqa: E402
from mflow.flows import NetworkFlow  # noqa: E402
from mflow.evaluation.checkpoints import load_checkpoint, recorded_splits  # noqa: E402
from mflow.io import pyplot, write_json, write_study  # noqa: E402
from mflow.evaluation.after_kernel import after_kernel_flow, alignment, initial_network, sigma  # noqa: E402
from mflow.ntk import cka, metric_ntk, relative_change  # noqa: E402

TEST_SEED = 7_654_321


def train_network(cfg: dict, out: Path) -> Path:
    """train.py with the network's config and a checkpoint after every epoch (<run>/epochs/e<epoch>.ckpt, 0-based)."""
    run = out / "run"
    if not (run / "summary.json").exists():
        resume = (run / "checkpoints" / "last.ckpt").exists()
        args = ["--resume", str(run)] if resume else [
            "--config", str(ROOT / cfg["config"]), f"--run_dir={run}", "--wandb=off",
            "--trainer.enable_progress_bar=false", f"--trainer.max_epochs={max(cfg['epochs'])}", *cfg.get("args", []),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", f"--trainer.callbacks.dirpath={run / 'epochs'}",
            "--trainer.callbacks.filename=e{epoch}", "--trainer.callbacks.auto_insert_metric_name=false",
            "--trainer.callbacks.every_n_epochs=1", "--trainer.callbacks.save_top_k=-1",
        ]
        subprocess.run([sys.executable, str(ROOT / "train.py"), *args], check=True, cwd=ROOT)
    return run


def network_at(run: Path, epochs_done: int) -> NetworkFlow:
    """The network after `epochs_done` epochs (0: at initialisation, rebuilt from the run's configuration)."""
    if epochs_done == 0:
        return initial_network(run)
    return load_checkpoint(run / "epochs" / f"e{epochs_done - 1}.ckpt").module


def measure(run: Path, epochs_done: int, data: dict, c: dict, K0) -> dict:
    module = network_at(run, epochs_done)
    model = module.model.eval()
    train, test, probe, kappa = data["train"], data["test"], data["probe"], data["kappa"]
    with torch.no_grad():
        g_test = module.predict_metric(test)
    K = metric_ntk(model, probe, kind="trace").detach()
    out = {"epochs": epochs_done, "network_test_gain": sigma(test, test.g_fs) / sigma(test, g_test),
           "drift": {"relative_change": relative_change(K, K0) if K0 is not None else 0.0,
                     "cka": cka(K, K0) if K0 is not None else 1.0},
           "alignment": alignment(model, train, test, kappa)}
    out["after_kernel"] = after_kernel_flow(model, module.surface, train, test, kappa, c["flow"])
    return out, K


def table(res: dict) -> str:
    lines = ["| network | epochs | network test gain | after-kernel test gain | after-kernel train gain | kernel drift "
             "(rel. change) | CKA with K_0 | test alignment |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in res.items():
        for r in rows:
            a = r["after_kernel"]
            lines.append(f"| {name} | {r['epochs']} | {r['network_test_gain']:.3g} | {a['test_gain']:.3g} | "
                         f"{a['train_gain']:.3g} | {r['drift']['relative_change']:.3g} | {r['drift']['cka']:.3f} | "
                         f"{r['alignment']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(res: dict):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, rows) in enumerate(res.items()):
        e = [max(r["epochs"], 0.5) for r in rows]
        a.plot(e, [r["network_test_gain"] for r in rows], "-o", color=f"C{i}", label=f"{name}: network")
        a.plot(e, [r["after_kernel"]["test_gain"] for r in rows], "--s", color=f"C{i}", label=f"{name}: its frozen kernel")
        b.plot(e, [r["alignment"] for r in rows], "-o", color=f"C{i}", label=f"{name}: test alignment")
        b.plot(e, [r["drift"]["cka"] for r in rows], ":^", color=f"C{i}", label=f"{name}: CKA with K_0")
    a.set(xscale="log", yscale="log", xlabel="epochs trained (0 plotted at 0.5)", ylabel="test gain",
          title="network vs the flow of its kernel frozen at that epoch")
    b.set(xscale="log", xlabel="epochs trained", ylabel="cosine / CKA", title="kernel: alignment with the test target, drift")
    for ax in (a, b):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    p = Parser(description=__doc__.split("\n")[0], renamed={"--out": "--out_dir"})
    p.add_argument("--config", default=str(ROOT / "conf" / "studies" / "after_kernel.yaml"))
    p.add_argument("--out_dir", default="runs/after-kernel")
    p.add_argument("--networks", nargs="+", help="only these networks of the config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a top-level YAML key (tests)")
    a = p.parse_args(argv)
    c = yaml.safe_load(Path(a.config).read_text())
    for kv in a.set:
        k, v = kv.split("=", 1)
        c[k] = yaml.safe_load(v)
    out = Path(a.out_dir)
    res = {}
    for name, ncfg in c["networks"].items():
        if a.networks and name not in a.networks:
            continue
        run = train_network(ncfg, out / name)
        ck = load_checkpoint(run / "checkpoints" / "last.ckpt")
        splits = recorded_splits(ck)  # the network's own points, as its checkpoint records them
        data = {"train": splits["train"][: c["train_points"]], "probe": splits["val"][: c["probe_points"]],
                "test": sample_pointset(ck.surface, c["test_points"], TEST_SEED, population=ck.data["population"]),
                "kappa": float(ck.module.kappa)}
        rows, K0 = [], None
        for e in ncfg["epochs"]:
            path = out / name / f"measure-e{e}.json"
            if path.exists():
                row = json.loads(path.read_text())
                if K0 is None:
                    K0 = metric_ntk(network_at(run, 0).model, data["probe"], kind="trace").detach()
            else:
                row, K = measure(run, e, data, c, K0)
                K0 = K if K0 is None else K0
                write_json(path, row)
            rows.append(row)
            print(f"[after kernel] {name}, epoch {e}: network {row['network_test_gain']:.3g}, "
                  f"frozen kernel {row['after_kernel']['test_gain']:.3g}", flush=True)
        res[name] = rows
    write_study(out, "after_kernel", {"config": c, "networks": res}, table(res), figure(res))
    return res


if __name__ == "__main__":
    main()
