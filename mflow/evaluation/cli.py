"""The evaluate.py command line (the logic is mflow.evaluation.report.evaluate)."""
from __future__ import annotations

import argparse

from ..cli.options import Parser, add_num_threads, set_threads
from ..data.population import POPULATIONS
from .euler import MIN_POINTS, check_euler_points
from .report import DEFAULT_DISTANCES, DEFAULT_SEED, DEFAULT_VARIANCES, evaluate
from .scaling import DEFAULT_SCALING_N


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="evaluate.py", renamed={"--out": "--out_dir"},
        description="Evaluate mflow checkpoints: sigma, gain and Ricci measure on train, fresh test and noised points "
                    "(paper sec. 3.2, Fig. 3).",
    )
    p.add_argument("--ckpt_path", nargs="+", required=True, metavar="PATH",
                   help="mflow checkpoint(s) (network or kernel flow)")
    p.add_argument("--out_dir", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--n_test", type=int, default=10_000, help="fresh test points (default 10000)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the test points and of the noise (not the data seed)")
    p.add_argument("--noise_levels", type=float, nargs="+", default=list(DEFAULT_VARIANCES), metavar="V",
                   help="Gaussian noise variances (mode gaussian)")
    p.add_argument("--distances", type=float, nargs="+", default=list(DEFAULT_DISTANCES), metavar="D",
                   help="requested FS distances of the on-manifold points (mode manifold)")
    p.add_argument("--mode", choices=("gaussian", "manifold", "both"), default="both", help="noised points to make")
    p.add_argument("--n_noise", type=int, default=1000, help="train points noised per level (default 1000)")
    p.add_argument("--n_distance", type=int, default=2000, help="test points whose distance to the train set is measured")
    p.add_argument("--ricci_points", type=int, default=500, help="points for the Ricci measure (0: skip)")
    p.add_argument("--euler", type=int, default=None, metavar="N",
                   help="also the Euler characteristic of each metric by Gauss-Bonnet-Chern on N fresh points of all "
                        "charts (seed --seed), with its Monte Carlo error, against the topological value, and its "
                        f"difference from g_FS's on the same points (N >= {MIN_POINTS}, e.g. 20000; smooth networks "
                        "only, not ReLU; computed on the CPU whatever --device)")
    p.add_argument("--keep_chart", action="store_true", help="noised points keep their train point's chart")
    p.add_argument("--population", choices=POPULATIONS, default=None,
                   help="of the fresh test points and the distance scaling (default: the one each model was trained on)")
    p.add_argument("--test_data", default=None, help="test points from this point-set file instead of sampling")
    p.add_argument("--scaling", action="store_true", help="also measure the distance scaling (Fig. 3 right)")
    p.add_argument("--scaling_n", type=int, nargs="+", default=list(DEFAULT_SCALING_N), metavar="N")
    p.add_argument("--scaling_budget", type=float, default=60.0, help="seconds for the distance scaling")
    p.add_argument("--target_gain", type=float, nargs="+", default=[], metavar="G",
                   help="print the number of points needed for this test gain sigma_FS / sigma (extrapolation, "
                        "paper sec. 3.2)")
    p.add_argument("--fit", type=float, nargs=2, default=None, metavar=("A", "B"),
                   help="distance fit mean = A N^B for --target_gain (default: measure it; the paper's is 0.968 -0.184)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if available")
    add_num_threads(p)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_euler_points(args.euler)
    set_threads(args)
    evaluate(
        args.ckpt_path, args.out_dir, n_test=args.n_test, seed=args.seed, mode=args.mode, variances=args.noise_levels,
        distances=args.distances, n_noise=args.n_noise, n_distance=args.n_distance, ricci_points=args.ricci_points,
        keep_chart=args.keep_chart, test_data=args.test_data, scaling=args.scaling, scaling_n=args.scaling_n,
        scaling_budget=args.scaling_budget, target_gains=args.target_gain, fit=args.fit, device=args.device,
        quiet=args.quiet, population=args.population, euler=args.euler,
    )
    return 0

