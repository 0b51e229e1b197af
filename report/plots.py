"""Report figures from measured numbers: recall bars per experiment (from its collector CSV) and recall against
the success radius (from the eval.py results.json files of the baselines)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tools.collect_results import RECALLS

from .folder import Table
from .tables import layout_of, row_cells

DPI = 150


def plain(text: str) -> str:
    """text shown as it is by matplotlib ('$' would start mathtext)."""
    return text.replace("$", r"\$")


def row_names(t: Table) -> list[str]:
    """Short row names for axes: the label cells of each row joined."""
    lay = layout_of(t)
    return [plain(", ".join(row_cells(t, lay, r)[:len(lay.labels)])) for r in t.rows]


def recall_bars(t: Table, title: str, path: Path) -> Path:
    """One panel per evaluated dataset: R@1/R@5/R@10 of every row as grouped bars, std over seeds as error bars."""
    datasets = t.datasets
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.0, 3.2 * len(datasets)), 3.2), squeeze=False)
    names = row_names(t)
    x = np.arange(len(t.rows))
    width = 0.8 / len(RECALLS)
    for ax, dataset in zip(axes[0], datasets):
        for j, n in enumerate(RECALLS):
            stats = [t.stat(r, f"{dataset} R@{n}") for r in t.rows]  # per row (mean, std)
            means = [m if m is not None else np.nan for m, _ in stats]
            stds = [s or 0.0 for _, s in stats]
            ax.bar(x + (j - 1) * width, means, width, yerr=stds, capsize=2, color=f"C{j}", label=f"R@{n}")
        ax.set_xticks(x, names, rotation=30 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center",
                      fontsize=7)
        ax.set(title=plain(dataset), ylabel="recall (%)", ylim=(0, 100))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(plain(title), fontsize=9)
    return save(fig, path)


def save(fig: plt.Figure, path: Path) -> Path:
    """Write fig as PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def threshold_curves(results: list[dict]) -> dict[str, dict[float, dict[str, list[float]]]]:
    """{dataset label: {radius m: {'1': [R@1 of each run], ...}}} from eval.py results with recalls_by_threshold."""
    curves: dict[str, dict[float, dict[str, list[float]]]] = {}
    for res in results:
        label = f"{res.get('dataset', '?')}" + ("" if res.get("split", "test") == "test" else f":{res['split']}")
        for radius, recalls in (res.get("recalls_by_threshold") or {}).items():
            point = curves.setdefault(label, {}).setdefault(float(radius), {})
            for n, value in recalls.items():
                point.setdefault(n, []).append(float(value))
    return curves


def recall_vs_threshold(series: dict[str, list[dict]], path: Path) -> Path | None:
    """R@1 (solid) and R@5 (dashed) against the success radius, mean over seeds (error bars: std), one colour per
    model, one panel per dataset. series: model name → its eval.py results. None when no run measured it."""
    curves = {name: threshold_curves(res) for name, res in series.items()}
    datasets = sorted({d for c in curves.values() for d in c})
    if not datasets:
        return None
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for i, (name, by_dataset) in enumerate(curves.items()):
            points = sorted(by_dataset.get(dataset, {}).items())
            for n, style in (("1", "-"), ("5", "--")):
                xy = [(r, np.mean(v[n]), np.std(v[n], ddof=1) if len(v[n]) > 1 else 0.0) for r, v in points if n in v]
                if xy:
                    r, m, s = zip(*xy)
                    ax.errorbar(r, m, yerr=s, color=f"C{i}", linestyle=style, marker="o", markersize=3, capsize=2,
                                label=plain(f"{name} R@{n}"))
        ax.set(title=plain(dataset), xlabel="success radius (m)", ylabel="recall (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)
