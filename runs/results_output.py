"""Outputs of collect_results.py: the table as csv, markdown and LaTeX, and recall_vs_<flag>.png plots.

Every file is written whole or not at all (atomic_files.atomic_write).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from runs.atomic_files import atomic_write
from runs.visualize import pyplot

RECALLS = (1, 5, 10)


def key_of(value: Any) -> str:
    """A hashable, order-independent representation of a JSON value."""
    return json.dumps(value, sort_keys=True)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sort_key(value: Any) -> tuple:
    """Numbers first (by value), then lists of numbers (e.g. sizes, by value), other values (by text), missing ones."""
    if value is None:
        return (3, ())
    if is_number(value):
        return (0, (float(value),))
    if isinstance(value, list) and all(is_number(v) for v in value):
        return (1, tuple(float(v) for v in value))
    return (2, (key_of(value),))


def write_text(path: Path, text: str) -> None:
    """Write text (UTF-8) whole or not at all."""
    atomic_write(path, lambda f: f.write(text.encode()))


def to_csv(header: list[str], table: list[dict]) -> str:
    """Plain numbers: a metric's mean, and a '<metric> std' column when some row merges several seeds."""
    metric_cols = [c for c in header if table and isinstance(table[0].get(c), tuple)]
    with_std = [c for c in metric_cols if any(r[c][1] is not None for r in table)]
    cols = [x for c in header for x in ([c, f"{c} std"] if c in with_std else [c])]
    with io.StringIO(newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in table:
            cells = {c: format_cell(r.get(c)) for c in header if c not in metric_cols}
            cells.update({c: "" if r[c][0] is None else repr(r[c][0]) for c in metric_cols})
            cells.update({f"{c} std": "" if r[c][1] is None else repr(r[c][1]) for c in with_std})
            w.writerow([cells[c] for c in cols])
        return f.getvalue()


def format_cell(value: Any) -> str:
    """Text of a flag value: '' for missing, sizes as 'HxW', numbers in their shortest form."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else " ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_metric(col: str, stat: tuple, runs: int) -> str:
    """'mean ± std' (or 'mean', or '' when missing), '(n=k)' when only k of the runs have the number;
    one decimal, epochs in their shortest form."""
    mean, std, count = stat
    if mean is None:
        return ""
    fmt = "{:g}" if col == "epochs" else "{:.1f}"
    return (fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std)) +
            ("" if count == runs else f" (n={count})"))


def text_cells(header: list[str], row: dict) -> list[str]:
    """The displayed cells of a table row."""
    return [format_metric(c, row[c], row["runs"]) if isinstance(row.get(c), tuple) else format_cell(row.get(c))
            for c in header]


def to_markdown(header: list[str], table: list[dict]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = [header, ["---"] * len(header)] + [text_cells(header, r) for r in table]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines) + "\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def to_latex(header: list[str], table: list[dict]) -> str:
    """A booktabs tabular."""
    def esc(text: str) -> str:
        return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in text_cells(header, r)) + r" \\" for r in table]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def plot_flag(ax, table: list[dict], f: str, others: list[str], label: str, xpos) -> None:
    """R@N on dataset `label` against flag f; one line style per setting of the `others` flags."""
    lines: dict[str, list[dict]] = {}
    for r in table:
        lines.setdefault(", ".join(f"{k}={format_cell(r[k]) or 'default'}" for k in others), []).append(r)
    for i, (name, rows) in enumerate(lines.items()):
        rows = sorted(rows, key=lambda r: sort_key(r[f]))
        for j, n in enumerate(RECALLS):
            pts = [(xpos(r[f]), *r[f"{label} R@{n}"][:2]) for r in rows if r[f"{label} R@{n}"][0] is not None]
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=[v or 0 for v in e], color=f"C{j}", marker="os^vD"[i % 5], capsize=3,
                            linestyle=("-", "--", ":", "-.")[i % 4], label=f"R@{n}" + (f" ({name})" if name else ""))
    ax.set(title=label, xlabel=f, ylabel="recall (%)")
    if ax.lines:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_ablations(table: list[dict], flags: list[str], labels: list[str], out: Path) -> list[Path]:
    """recall_vs_<flag>.png for every varied flag: R@N per evaluated dataset against the flag's values
    (error bars: std over seeds)."""
    plt = pyplot()
    paths = []
    for f in flags:
        ticks = sorted({key_of(r[f]): r[f] for r in table}.values(), key=sort_key)
        numeric = all(sort_key(v)[0] == 0 for v in ticks)
        order = [key_of(v) for v in ticks]
        # flags whose value follows from f (e.g. test_resize = resize) do not split lines
        others = [k for k in flags if k != f and len({(key_of(r[f]), key_of(r[k])) for r in table}) > len(ticks)]
        fig, axes = plt.subplots(len(labels), 1, figsize=(5, 4 * len(labels)), squeeze=False)
        for ax, label in zip(axes[:, 0], labels):
            plot_flag(ax, table, f, others, label, lambda v, numeric=numeric, order=order:
                      float(v) if numeric else order.index(key_of(v)))
            if not numeric:
                ax.set_xticks(range(len(ticks)), [format_cell(v) or "default" for v in ticks], rotation=30)
        fig.tight_layout()
        paths.append(out / f"recall_vs_{f}.png")
        try:
            atomic_write(paths[-1], lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=100, bbox_inches="tight"))
        finally:
            plt.close(fig)
    return paths
