"""Fig. 3 right and the paper's extrapolation: nearest-neighbour FS distance against N (eq. 3.6) and the number
of points at which fresh test points would reach a target gain."""
from __future__ import annotations

import math
import time

import numpy as np

from mflow.geometry.distance import NearestIndex
from mflow.geometry.cicy import CompleteIntersection
from mflow.data.pointset import sample_pointset

from .measures import stats

PAPER_FIT = (0.968, -0.184)  # eq. 3.6: mean nearest-neighbour FS distance = 0.968 N^-0.184
DEFAULT_SCALING_N = (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)


def fit_power_law(n, y) -> tuple[float, float]:
    """Least-squares fit y = a n^b in log-log: -> (a, b)."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if len(n) < 2 or np.any(n <= 0) or np.any(y <= 0):
        raise ValueError("a power-law fit needs at least 2 points with n > 0 and y > 0")
    b, loga = np.polyfit(np.log(n), np.log(y), 1)
    return float(np.exp(loga)), float(b)


def distance_scaling(
    surface: CompleteIntersection, ns=DEFAULT_SCALING_N, seed: int = 0, budget_s: float = 60.0, min_sizes: int = 3, log=print,
    population: str = "all_charts",
) -> dict:
    """min / mean / max nearest-neighbour FS distance among N Shiffman-Zelditch points of a population
    (mflow.data.population; the paper's points are one_chart), for N in ns while the next size is predicted to
    fit in budget_s (the first min_sizes always run), and the fit mean = a N^b (eq. 3.6; paper 0.968 N^-0.184;
    theory exponent -1/(real dimension of X))."""

    rows, t_start = [], time.perf_counter()
    ns = sorted(int(n) for n in ns)
    for i, n in enumerate(ns):
        if i >= min_sizes and rows:
            prev = rows[-1]
            expo = 1.3
            if len(rows) >= 2 and rows[-2]["seconds"] > 0.05:
                expo = max(1.0, math.log(prev["seconds"] / rows[-2]["seconds"]) / math.log(prev["n"] / rows[-2]["n"]))
            predicted = prev["seconds"] * (n / prev["n"]) ** expo
            if time.perf_counter() - t_start + predicted > budget_s:
                break
        t = time.perf_counter()
        z = sample_pointset(surface, n, seed + i, population=population).z
        d, _ = NearestIndex(z, surface).self_query()
        row = {"n": n, **{k: v for k, v in stats(d).items() if k != "n"}, "seconds": time.perf_counter() - t}
        rows.append(row)
        log(f"[mflow] distance scaling: N={n}: mean nearest-neighbour distance {row['mean']:.4f} ({row['seconds']:.1f} s)")
    out = {
        "manifold": surface.name, "population": population, "seed": seed, "budget_seconds": budget_s, "rows": rows,
        "paper_fit": {"a": PAPER_FIT[0], "b": PAPER_FIT[1]},
        "theory_exponent": -1.0 / (2 * surface.dim),
    }
    if len(rows) >= 2:
        a, b = fit_power_law([r["n"] for r in rows], [r["mean"] for r in rows])
        out["fit"] = {"a": a, "b": b}
        for key in ("min", "max"):
            ak, bk = fit_power_law([r["n"] for r in rows], [r[key] for r in rows])
            out[f"fit_{key}"] = {"a": ak, "b": bk}
    return out


def distance_for_gain(distances, gains, target_gain: float) -> tuple[float, bool]:
    """Mean shortest distance at which a gain-versus-distance curve reaches target_gain: -> (d, extrapolated).

    Interpolates log gain against log distance (piecewise linear). Going out from the smallest distance,
    the first crossing of the target (the curve falling through it) is returned. A target above every gain
    of the curve is extrapolated along its first segment towards d -> 0, one below every gain along its last
    segment (extrapolated=True); d = 0 when the curve does not rise towards small distances (the target
    cannot be reached: infinitely many points).
    """
    d, g = np.asarray(distances, dtype=float), np.asarray(gains, dtype=float)
    keep = np.isfinite(d) & np.isfinite(g) & (d > 0) & (g > 0)
    d, g = d[keep], g[keep]
    if len(d) < 2:
        raise ValueError("a gain curve needs at least 2 levels with positive distance and gain")
    if not target_gain > 0:
        raise ValueError(f"the target gain must be > 0, got {target_gain}")
    order = np.argsort(d)
    x, y, Y = np.log(d[order]), np.log(g[order]), math.log(target_gain)
    for i in range(len(x) - 1):
        if y[i] >= Y >= y[i + 1] and y[i] != y[i + 1]:
            return float(np.exp(x[i] + (Y - y[i]) * (x[i + 1] - x[i]) / (y[i + 1] - y[i]))), False
        if y[i] == Y:
            return float(np.exp(x[i])), False
    if Y > y.max() or Y > y[0]:  # towards small distances along the first segment
        s = (y[1] - y[0]) / (x[1] - x[0])
        if s >= 0:
            return 0.0, True
        return float(np.exp(x[0] + (Y - y[0]) / s)), True
    s = (y[-1] - y[-2]) / (x[-1] - x[-2])  # target below the whole curve: towards large distances
    if s >= 0:
        return float(np.exp(x[-1])), True
    return float(np.exp(x[-1] + (Y - y[-1]) / s)), True


def points_needed(distances, gains, target_gain: float, a: float, b: float) -> dict:
    """The paper's extrapolation: the number of sampled points N whose mean nearest-neighbour distance
    a N^b equals the distance at which the gain curve reaches target_gain (N = (d / a)^(1/b))."""
    if not (a > 0 and b < 0):
        raise ValueError(f"need a distance fit a N^b with a > 0 and b < 0, got a={a}, b={b}")
    d, extrapolated = distance_for_gain(distances, gains, target_gain)
    n = math.inf if d <= 0 else (d / a) ** (1.0 / b)
    return {"target_gain": float(target_gain), "distance": d, "n_points": n, "extrapolated": extrapolated,
            "fit": {"a": a, "b": b}}
