"""Section 2's statements, computed: a report with plots (the tests in tests/test_perelman.py, test_kernels.py
and test_ntk.py assert the same statements at fixed sizes).

  python studies/theory.py [--out_dir runs/theory]      (about a minute on 2 cores)

Panels of <out>/theory.png, numbers in <out>/theory.json:
  (a) the cosine net (eq. 2.32) with only a_i trained: empirical NTK -> (A^2/2) exp(-sigma_w^2 |x-x'|^2 / 2d)
      (eq. 2.35) as width N grows, averaged over initialisations (Monte-Carlo error ~ N^-1/2);
  (b) the metric network's empirical NTK at initialisation -> the analytic ReLU NTK as width grows
      (a ReLU MLP in NTK parametrisation on Fermat-quintic points);
  (c) the local limit (eq. 2.30 -> 2.31): the normalised Gaussian NTK flow of the Perelman loss on P^1 tends
      to the local flow as sigma_w grows (gap ~ sigma_w^-2);
  (d) the Perelman loss (eq. 2.41-2.42) in the local limit is the Ricci-flow step (eq. 2.39-2.40): on FS P^1,
      d rho/dt = -4 pi rho (Ric = 2 pi g); on a perturbed metric at fixed measure, -rho (R + Delta phi);
  (e) how the NTK drift of a lazily trained net falls with width, with code independent of mflow.ntk
      (a toy scalar net): the reference for the width study's drift exponents.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mflow.cli.options import Parser  # noqa: E402
from mflow.geometry import perelman as P  # noqa: E402
from mflow.geometry.presets import manifold  # noqa: E402
from mflow.geometry.points import sample  # noqa: E402
from mflow.io import pyplot, write_json, write_png  # noqa: E402
from mflow.kernels.analytic import CosineNTK
from mflow.models.cosine import CosineNet  # noqa: E402
from mflow.models.metric import MetricModel  # noqa: E402
from mflow.ntk.drift import analytic_relu_network_kernel, network_kernel, relative_change  # noqa: E402
from studies.width import power_fit  # noqa: E402


def cosine_net_convergence(widths, seeds=4, d=2, sigma_w=1.5, n=16) -> dict:
    """(a) |Theta_emp - eq. 2.35|_F / |eq. 2.35|_F against width, mean over initialisations."""
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    analytic = CosineNTK(sigma_w, d).matrix(x)
    errors = []
    for N in widths:
        e = []
        for seed in range(seeds):
            net = CosineNet(d, N, sigma_w=sigma_w, generator=torch.Generator().manual_seed(seed))
            phi = net.features(x)  # d phi / d a (eq. 2.33): the empirical NTK is phi phi^T
            e.append(relative_change(phi @ phi.T, analytic))
        errors.append(sum(e) / seeds)
    return {"widths": list(widths), "relative_error": errors, "fit": power_fit(widths, errors)}


def relu_metric_ntk_convergence(widths, seeds=3, n=24) -> dict:
    """(b) the empirical network kernel of a ReLU MetricModel (NTK parametrisation) at initialisation against
    out_scale^2 K_ReLU delta (mflow.ntk.drift.analytic_relu_network_kernel), mean over initialisations."""
    X = manifold("fermat_quintic")
    pts = sample(X, n, seed=11)
    errors = []
    for width in widths:
        e = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = MetricModel(X, "addfs", depth=2, width=width, activation="relu", parametrization="ntk",
                                sigma_w=1.4142, sigma_b=0.1, out_scale=0.03)
            e.append(relative_change(network_kernel(model, pts), analytic_relu_network_kernel(model, pts)))
        errors.append(sum(e) / seeds)
    return {"widths": list(widths), "relative_error": errors, "fit": power_fit(widths, errors)}


def local_limit(sigma_ws, n=1201) -> dict:
    """(c) gap between the Gaussian-NTK flow (eq. 2.30) and the local flow (eq. 2.31) of the Perelman loss."""
    s, ds = P.grid(6.0, n)
    rho, m = P.perturbed_fs(s)
    local = P.local_rate(rho, m, ds)
    inner = slice(n // 4, -(n // 4))
    gaps = []
    for sw in sigma_ws:
        smeared = P.nonlocal_rate(local, s[2:-2], ds, CosineNTK(float(sw), 1))
        gaps.append(float((smeared - local)[inner].abs().max() / local[inner].abs().max()))
    return {"sigma_w": list(sigma_ws), "relative_gap": gaps, "fit": power_fit(sigma_ws, gaps)}


def ricci_step(n=1201) -> dict:
    """(d) the local Perelman step against Ricci flow: profiles and errors."""
    s, ds = P.grid(6.0, n)
    fs = P.fs_rho(s)
    rate_fs = P.local_rate(fs, fs, ds)
    rho, m = P.perturbed_fs(s)
    rate, formula = P.local_rate(rho, m, ds), P.ricci_flow_rate(rho, m, ds)
    return {
        "s": s[2:-2], "fs_rate": rate_fs, "fs_closed_form": -4 * math.pi * fs[2:-2], "rate": rate, "formula": formula,
        "fs_relative_error": float(((rate_fs + 4 * math.pi * fs[2:-2]) / fs[2:-2]).abs().max() / (4 * math.pi)),
        "perturbed_relative_error": float((rate - formula).abs().max() / formula.abs().max()),
        "area_rate": float(2 * math.pi * rate.sum() * ds), "area_rate_gauss_bonnet": -8 * math.pi,
    }


def lazy_drift(widths, seeds=2, steps=100, lr=0.1, n_train=64, n_probe=16) -> dict:
    """(e) NTK drift of a scalar 1-hidden-layer ReLU net in NTK parametrisation after ``steps`` SGD steps on an
    MSE fit, against width: plain autograd Jacobians, none of mflow's NTK code. Lazy-regime theory: the
    change is O(1/width) (Dyer & Gur-Ari 2019, Huang & Yau 2020), inside the O(width^-1/2) bound."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train, 10, dtype=torch.float64, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    probe = x[:n_probe]

    def f(p, inp):
        w1, b1, w2 = p
        return torch.relu(inp @ w1.T / math.sqrt(10) + 0.1 * b1) @ w2.T / math.sqrt(len(b1))

    def kernel(p):
        rows = [torch.cat([t.reshape(-1) for t in torch.autograd.grad(f(p, probe[i : i + 1]).sum(), p)])
                for i in range(n_probe)]
        J = torch.stack(rows)
        return J @ J.T

    drift = []
    for width in widths:
        d = []
        for seed in range(seeds):
            gs = torch.Generator().manual_seed(seed)
            p = [torch.randn(*shape, dtype=torch.float64, generator=gs).requires_grad_()
                 for shape in ((width, 10), (width,), (1, width))]
            K0 = kernel(p)
            for _ in range(steps):
                grads = torch.autograd.grad(((f(p, x) - y) ** 2).mean(), p)
                with torch.no_grad():
                    for t, dt in zip(p, grads):
                        t -= lr * dt
            d.append(relative_change(kernel(p), K0))
        drift.append(sum(d) / seeds)
    return {"widths": list(widths), "relative_drift": drift, "fit": power_fit(widths, drift)}


def figure(a, b, c, d, e):
    plt = pyplot()

    fig, ax = plt.subplots(2, 3, figsize=(16, 8.5))

    def loglog(axis, xs, ys, fit, label, xlabel, title):
        axis.plot(xs, ys, "o", label=label)
        if fit:
            axis.plot(xs, [fit["prefactor"] * x ** fit["exponent"] for x in xs], "--", label=f"slope {fit['exponent']:.2f}")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_title(title, fontsize=10)
        axis.legend()

    loglog(ax[0, 0], a["widths"], a["relative_error"], a["fit"], "|emp - eq. 2.35| / |eq. 2.35|", "width N",
           "(a) cosine net NTK -> Gaussian (eq. 2.35)")
    loglog(ax[0, 1], b["widths"], b["relative_error"], b["fit"], "|emp - analytic| / |analytic|", "width",
           "(b) ReLU metric net at init -> analytic NTK")
    loglog(ax[1, 0], c["sigma_w"], c["relative_gap"], c["fit"], "|Gaussian flow - local| / |local|", "sigma_w",
           "(c) local limit of the Perelman flow (eq. 2.30 -> 2.31)")
    x = d["s"]
    ax[1, 1].plot(x, d["fs_rate"], label="FS: local Perelman step")
    ax[1, 1].plot(x[::40], d["fs_closed_form"][::40], "o", ms=4, label="FS: -4 pi rho (Ric = 2 pi g)")
    ax[1, 1].plot(x, d["rate"], label="perturbed: local Perelman step")
    ax[1, 1].plot(x[::40], d["formula"][::40], "s", ms=4, label="perturbed: -rho (R + Delta phi)")
    ax[1, 1].set_xlim(-4, 4)
    ax[1, 1].set_xlabel("s = log|w|")
    ax[1, 1].set_ylabel("d rho / dt")
    ax[1, 1].set_title("(d) Perelman loss in the local limit = Ricci flow (eq. 2.39-2.42)", fontsize=10)
    ax[1, 1].legend(fontsize=8)
    loglog(ax[0, 2], e["widths"], e["relative_drift"], e["fit"], "|K_100 - K_0| / |K_0|", "width",
           "(e) lazy NTK drift after 100 SGD steps (toy net)")
    ax[1, 2].axis("off")
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = Parser(description=__doc__.split("\n\n")[0], renamed={"--out": "--out_dir"})
    ap.add_argument("--out_dir", type=Path, default=Path("runs") / "theory")
    ap.add_argument("--quick", action="store_true", help="smaller widths (for the test suite)")
    opts = ap.parse_args(argv)
    torch.set_num_threads(1)
    a = cosine_net_convergence([64, 256, 1024] if opts.quick else [64, 256, 1024, 4096, 16384])
    b = relu_metric_ntk_convergence([32, 128] if opts.quick else [32, 64, 128, 256, 512, 1024, 2048])
    c = local_limit([4, 8, 16] if opts.quick else [2, 4, 8, 16, 32, 64])
    d = ricci_step()
    e = lazy_drift([64, 256] if opts.quick else [64, 256, 1024, 4096])
    write_png(opts.out_dir / "theory.png", figure(a, b, c, d, e), dpi=100)
    numbers = {"cosine_net_ntk": a, "relu_metric_ntk_at_init": b, "local_limit": c,
               "ricci_step": {k: v for k, v in d.items() if not torch.is_tensor(v)}, "lazy_ntk_drift": e}
    write_json(opts.out_dir / "theory.json", numbers)
    for name, r in (("(a) cosine net", a), ("(b) ReLU metric NTK", b), ("(c) local limit", c), ("(e) lazy NTK drift", e)):
        print(f"{name}: exponent {r['fit']['exponent']:.3f}")
    print(f"(d) FS step vs -4 pi rho: {d['fs_relative_error']:.2e}; perturbed vs -rho(R + Delta phi): "
          f"{d['perturbed_relative_error']:.2e}; dA/dt {d['area_rate']:.5f} (Gauss-Bonnet {-8 * math.pi:.5f})")
    return numbers


if __name__ == "__main__":
    main()
