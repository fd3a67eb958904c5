"""Command line: ``python -m mflow.data sample --n_points N --out FILE ...`` writes a point-set file; ``info FILE``
checks and describes one."""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from mflow.cli.options import Parser, add_num_threads, set_threads
from mflow.geometry.presets import PRESETS, surface_from_args
from mflow.geometry.volume import kappa, real_det, sigma

from .cymetric import write_basis
from .population import POPULATIONS
from .pointset import DEFAULT_CHUNK, PointSetError, load_pointset, sample_pointset, save_pointset


def _fs_summary(points) -> tuple[float, float]:
    """(kappa, sigma) of the Fubini-Study metric on these points (docs/conventions.md section 5, eq. B.10-B.11)."""
    d = real_det(points.g_fs)
    return float(kappa(points.weights, d, points.omega_sq)), float(sigma(points.weights, d, points.omega_sq))


def cmd_sample(a: argparse.Namespace) -> int:
    surface = surface_from_args(a.manifold, a.psi, a.ambient_n, a.surface_seed, a.kahler)
    t0 = time.perf_counter()
    print(f"sampling {a.n_points} points on {surface.name} ({surface.ambient}, t = {surface.kahler}, fingerprint "
          f"{surface.fingerprint()}), seed {a.seed}",
          flush=True)
    points = sample_pointset(surface, a.n_points, a.seed, chunk_size=a.chunk_size, progress=a.n_points > a.chunk_size,
                             population=a.population)
    t_sample = time.perf_counter() - t0
    path = save_pointset(a.out, points, surface, seed=a.seed, val_fraction=a.val_fraction,
                         extra={"n_requested": a.n_points, "chunk_size": a.chunk_size, "population": a.population})
    k, s = _fs_summary(points)
    print(f"wrote {path}: {len(points)} points, kappa(FS) = {k:.6g}, sigma(FS) = {s:.4f}, "
          f"sampled in {t_sample:.2f} s, total {time.perf_counter() - t0:.2f} s")
    if a.basis:
        print(f"wrote {write_basis(path.parent / 'basis.pickle', surface, k)} (cymetric's manifold description)")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        ps = load_pointset(a.file)
    except PointSetError as e:
        print(f"INVALID: {e}", file=sys.stderr)
        return 1
    meta = dict(ps.metadata)
    if not a.full:
        meta["manifold"] = {k: v for k, v in meta["manifold"].items() if k in ("name", "params", "dims", "kahler")}
    print(json.dumps(meta, indent=2, sort_keys=True))
    k, s = _fs_summary(ps.points)
    res = float(ps.surface.residual(ps.points.z).max())
    print(f"OK: checksum, format version {meta['format_version']} and geometry verified; {len(ps.points)} points, "
          f"max relative |p| = {res:.2e}, kappa(FS) = {k:.6g}, sigma(FS) = {s:.4f} ({time.perf_counter() - t0:.2f} s)")
    return 0


def _moduli(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kahler takes comma-separated numbers such as 1,2; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m mflow.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", renamed={"--n": "--n_points"}, help="sample points on a CY manifold and write a point-set file",
                       description="Points from random linear subspaces (Shiffman-Zelditch for one P^n) with weights "
                                   "and |Omega|^2, written atomically to an .npz "
                                   "that also holds cymetric's X_train/y_train/X_val/y_val keys.")
    s.add_argument("--manifold", default="fermat_quintic", choices=sorted(PRESETS), help="preset (default fermat_quintic)")
    s.add_argument("--n_points", type=int, required=True, help="number of points")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--out", required=True, help="output .npz path (written atomically)")
    s.add_argument("--psi", type=float, default=None,
                   help="deformation psi (manifolds dwork, default 0, and two_cubics, default 0.5)")
    s.add_argument("--ambient_n", type=int, default=4, help="P^n of manifold random (default 4)")
    s.add_argument("--surface_seed", type=int, default=0,
                   help="coefficient seed of the generic presets random, bicubic, p1p3, tetraquadric (default 0)")
    s.add_argument("--kahler", type=_moduli, default=None,
                   help="Kaehler moduli t, one per factor, comma-separated, e.g. 1,2 (default: all 1)")
    s.add_argument("--population", default="all_charts", choices=POPULATIONS,
                   help="all_charts (default) or one_chart: the points of the most common chart only (the paper's sec. 3.1)")
    s.add_argument("--val_fraction", type=float, default=0.1, help="cymetric X_val/y_val fraction (default 0.1)")
    s.add_argument("--basis", action="store_true",
                   help="also write cymetric's basis.pickle beside the output (with the file, a cymetric dataset)")
    s.add_argument("--chunk_size", type=int, default=DEFAULT_CHUNK,
                   help=f"points sampled per chunk (memory bound; part of the seed's meaning; default {DEFAULT_CHUNK})")
    add_num_threads(s)
    s.set_defaults(func=cmd_sample)
    i = sub.add_parser("info", help="verify a point-set file and print its metadata",
                       description="Checks format version, checksum, that p vanishes at the points and that stored "
                                   "weights match recomputed ones; prints the metadata. Exit code 1 if invalid.")
    i.add_argument("file", help="point-set .npz file")
    i.add_argument("--full", action="store_true", help="print the full manifold (monomials, coefficients)")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.command == "sample" and a.n_points < 1:
        build_parser().error("--n_points must be positive")
    if set_threads(a) > 16 and getattr(a, "num_threads", None) is None:  # sampling gains nothing beyond 16
        torch.set_num_threads(16)
    try:
        return a.func(a)
    except ValueError as e:  # NotCalabiYauError, bad parameters
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
