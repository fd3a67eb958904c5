"""Plots of an evaluation: gain against distance to the train set (Fig. 3 left), distance scaling (Fig. 3 right)."""
from __future__ import annotations

import numpy as np

from mflow.io import pyplot

from .scaling import PAPER_FIT


def gain_curve(result: dict, mode: str = "gaussian") -> tuple[np.ndarray, np.ndarray]:
    """(mean shortest distance to the train set, gain) of one checkpoint's noised levels, by distance."""
    pts = [(e["distance_to_train"]["mean"], e["gain"]) for e in result["noised"].get(mode, []) if e.get("n")]
    pts = sorted(p for p in pts if p[0] is not None and p[0] > 0 and np.isfinite(p[1]) and p[1] > 0)
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def plot_gain_vs_distance(results: list[dict]):
    """Gain against mean shortest FS distance to the train set, every checkpoint (Fig. 3 left), log-log."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(results):
        c = colors[i % len(colors)]
        for mode, style, marker in (("gaussian", "-", "o"), ("manifold", "--", "s")):
            d, g = gain_curve(r, mode)
            if len(d):
                ax.plot(d, g, style, marker=marker, color=c, ms=4,
                        label=f"{r['label']}: {'Gaussian noise' if mode == 'gaussian' else 'on X'}")
        td = r["test"].get("distance_to_train", {}).get("mean")
        if td and r["test"]["gain"] > 0:
            ax.plot([td], [r["test"]["gain"]], "*", color=c, ms=12, label=f"{r['label']}: fresh test points")
        if r["train"]["gain"] > 0 and np.isfinite(r["train"]["gain"]):
            ax.axhline(r["train"]["gain"], color=c, ls=":", lw=1)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean shortest FS distance to the train set")
    ax.set_ylabel(r"gain $\sigma_{FS} / \sigma$")
    ax.set_title("Gain vs distance to the train set (dotted: train points)", fontsize=10)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_distance_scaling(scaling: dict):
    """min / mean / max nearest-neighbour distance against N with the fits (Fig. 3 right), log-log."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    rows = scaling["rows"]
    n = np.array([r["n"] for r in rows], dtype=float)
    for key, m in (("max", "^"), ("mean", "o"), ("min", "v")):
        ax.plot(n, [r[key] for r in rows], m, label=key)
    grid = np.geomspace(n.min(), n.max() * 10, 50)
    if "fit" in scaling:
        a, b = scaling["fit"]["a"], scaling["fit"]["b"]
        ax.plot(grid, a * grid**b, "-", label=f"fit {a:.3f} N^{b:.3f}")
    pa, pb = PAPER_FIT
    ax.plot(grid, pa * grid**pb, ":", label=f"paper {pa} N^{pb}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of points N")
    ax.set_ylabel("nearest-neighbour FS distance")
    ax.set_title(f"Distance scaling on {scaling['manifold']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
