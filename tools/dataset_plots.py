"""Charts of analyze_dataset.py: counts, UTM maps and histograms, drawn from the numbers in summary.json."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from runs.visualize import pyplot, save_figure

SPLIT_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def integer_ticks():
    """A tick locator that puts ticks on integers only."""
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(integer=True)


def _stairs(ax, hist: dict, label: str | None = None, **kw) -> None:
    """Draw a {"edges", "counts"} histogram, or a 'no data' note when it is empty."""
    if hist["counts"]:
        ax.stairs(hist["counts"], hist["edges"], fill=True, alpha=0.6, label=label, **kw)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _mark_stats(ax, stats: dict, unit: str = "") -> None:
    """Vertical lines at the median and mean, with their values in the legend."""
    if stats["median"] is None:
        return
    ax.axvline(stats["median"], color="k", ls="--", lw=1, label=f"median {stats['median']:.1f}{unit}")
    ax.axvline(stats["mean"], color="k", ls=":", lw=1, label=f"mean {stats['mean']:.1f}{unit}")


def plot_counts(summary: dict, path: Path) -> Path:
    """Grouped bars: database and query images per split."""
    splits = list(summary["splits"])
    x = np.arange(len(splits))
    fig, ax = pyplot().subplots(figsize=(1.6 + 1.4 * len(splits), 3.5))
    for off, kind, colour in ((-0.2, "database", "tab:blue"), (0.2, "queries", "tab:orange")):
        vals = [summary["splits"][s][f"{kind}_num"] for s in splits]
        bars = ax.bar(x + off, vals, width=0.4, label=kind, color=colour)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, splits)
    ax.set(ylabel="images", title=f"{summary['dataset']}: images per split")
    ax.margins(y=0.15)
    ax.legend()
    return save_figure(fig, path)


def plot_map(groups: Sequence[tuple[str, np.ndarray, str, float]], origin: Sequence[float], path: Path,
             title: str) -> Path:
    """Scatter of UTM positions; groups are (label, N×2 easting/northing, colour, marker size)."""
    fig, ax = pyplot().subplots(figsize=(6, 6))
    for label, utms, colour, size in groups:
        ax.scatter(utms[:, 0] - origin[0], utms[:, 1] - origin[1], s=size, c=colour, label=f"{label} ({len(utms)})",
                   linewidths=0, rasterized=True)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel=f"easting − {origin[0]:.0f} (m)", ylabel=f"northing − {origin[1]:.0f} (m)", title=title)
    ax.legend(markerscale=3, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_positives(split: dict, name: str, thresholds: dict[str, float], path: Path) -> Path:
    """Histograms of positives per query, one panel per threshold (thresholds: name → metres)."""
    fig, axes = pyplot().subplots(1, len(thresholds), figsize=(5 * len(thresholds), 3.5), squeeze=False)
    for ax, (what, thr) in zip(axes[0], thresholds.items()):
        pos = split["positives_per_query"][f"{thr:g}"]
        _stairs(ax, pos["histogram"])
        _mark_stats(ax, pos)
        ax.xaxis.set_major_locator(integer_ticks())
        ax.set(xlabel=f"database images within {thr:g} m ({what} threshold)", ylabel="queries",
               title=f"{name}: {pos['queries_without_positives']} of {split['queries_num']} queries without positives")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_nearest_database(split: dict, name: str, thresholds: dict[str, float], path: Path) -> Path:
    """Histogram of the distance from each query to its nearest database image, with the thresholds."""
    near = split["nearest_database_distance_m"]
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    _stairs(ax, near["histogram"])
    _mark_stats(ax, near, " m")
    for (what, thr), colour in zip(thresholds.items(), ("tab:green", "tab:red")):
        ax.axvline(thr, color=colour, lw=1.5, label=f"{what} threshold {thr:g} m")
    ax.set(xlabel="distance to the nearest database image (m)", ylabel="queries",
           title=f"{name}: nearest database image")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_density(split: dict, name: str, path: Path) -> Path:
    """Database density: images per distinct position, and spacing between neighbouring positions."""
    dens = split["database_density"]
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 3.5))
    _stairs(a, dens["images_per_position"]["histogram"])
    a.xaxis.set_major_locator(integer_ticks())
    a.set(xlabel="database images at the same position", ylabel="positions",
          title=f"{name}: {dens['distinct_positions']} distinct database positions")
    spacing = dens["neighbour_spacing_m"]
    _stairs(b, spacing["histogram"], color="tab:purple")
    _mark_stats(b, spacing, " m")
    b.set(xlabel="distance to the nearest other database position (m)", ylabel="positions", title="spacing")
    if spacing["median"] is not None:
        b.legend(fontsize=8)
    return save_figure(fig, path)
