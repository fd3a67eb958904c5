"""Point populations: all of X, or the points of one chart (the paper's sec. 3.1 rejection sampling).

``all_charts``: sampled points (mflow.geometry.sampling), each in its preferred chart (patch, elim)
(docs/conventions.md section 2).
``one_chart``: only the points whose preferred chart is the population's chart: the most common chart of X,
found once per manifold from a fixed pilot sample (:func:`population_chart`; on the Fermat quintic all 20
charts are equally common, about 5% of the points each, and the pilot's sampling noise picks one, always the
same: (patch, elim) = (3, 2)). The paper
samples ~20x more points than it keeps and rejects the rest, so that every metric is in the same coordinates.

Monte-Carlo weights stay those of all_charts: the kept points are distributed by the FS measure restricted
to the chart's region U = {x : chart(x) = c}, and w (|Omega|^2 over the sampling density) is still the density ratio.
Weighted means over a one-chart set therefore estimate integrals over U against mu_CY, normalised by mu_CY(U):
its sigma is the sigma measure of the metric on U (with kappa the metric's own over U), not on X.
"""
from __future__ import annotations

import torch

from mflow.choices import POPULATIONS, check_choice
from mflow.geometry import charts
from mflow.geometry.cicy import CompleteIntersection
from mflow.geometry.points import CYPoints, cat_points, sample

PILOT_POINTS, PILOT_SEED = 20_000, 271_828
MAX_OVERSAMPLING = 100  # one_chart refuses a chart that keeps fewer than 1 in this many sampled points


def check_population(population: str) -> str:
    return check_choice("population", population, POPULATIONS)


_CHARTS: dict[str, tuple[int, int]] = {}


def population_chart(surface: CompleteIntersection) -> tuple[int, int]:
    """(patch, elim) of the most common chart of X (fixed pilot sample; ties: the lowest chart id)."""
    key = surface.fingerprint()
    if key not in _CHARTS:
        pilot = sample(surface, PILOT_POINTS, PILOT_SEED)
        counts = torch.bincount(charts.chart_id(surface, pilot.patch, pilot.elim), minlength=charts.n_chart_ids(surface))
        best = int(torch.argmax(counts))  # argmax returns the first maximum: the lowest id among ties
        _CHARTS[key] = tuple(int(c) for c in charts.chart_of_id(surface, best))
    return _CHARTS[key]


def in_population(points: CYPoints, surface: CompleteIntersection, population: str) -> torch.Tensor:
    """Which points belong to the population: [N] bool."""
    if check_population(population) == "all_charts":
        return torch.ones(len(points), dtype=torch.bool)
    patch, elim = population_chart(surface)
    return (points.patch == patch) & (points.elim == elim)


def rejection_chunk(n_points: int, chunk_size: int) -> int:
    """Points sampled per rejection round for n_points of one chart: ~25x the need (a chart holds ~5% of the
    quintic's points), at least 20k, at most chunk_size."""
    return min(chunk_size, max(20_000, 25 * n_points))


def sample_population(surface: CompleteIntersection, n_points: int, seed: int, chunk_size: int, sample_chunk) -> CYPoints:
    """n_points of a one_chart population by rejection: chunks ``sample_chunk(k)`` (chunk_size points each, seeded
    by (seed, k)) are sampled and their points of the chart kept, in order, until there are n_points."""
    kept, have, k = [], 0, 0
    while have < n_points:
        part = sample_chunk(k)
        part = part[in_population(part, surface, "one_chart")]
        kept.append(part)
        have += len(part)
        k += 1
        sampled = k * chunk_size
        if have * MAX_OVERSAMPLING < sampled:
            raise ValueError(
                f"population one_chart: sampled {sampled} points on {surface.name} and kept {have} (chart "
                f"{population_chart(surface)}); that chart holds too few points for {n_points}: use population=all_charts"
            )
    return cat_points(kept)[:n_points]
