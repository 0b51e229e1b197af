"""An experiment's results table, from its collector CSV: typst for the report and LaTeX (booktabs) for users.

Layout: the flags that differ across rows (or the collector's run names when none does), then R@1/R@5/R@10
under each evaluated dataset, training time and epochs, and the number of merged runs (seeds). Cells are the
collector's own formatting: 'mean ± std' over seeds, one decimal.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.collect_results import LATEX_ESCAPES, RECALLS

from .folder import Table
from .markup import breakable, string, table

RUN_METRIC_NAMES = {"train_time_s": "train time (s)", "epochs": "epochs"}
INCOMPLETE = "(incomplete)"
NBSP = "\u00a0"


@dataclass
class Layout:
    """Column groups of a results table."""
    labels: list[str]  # leading columns: flags, or ["run"]
    datasets: list[str]  # one group of R@N columns each
    run_metrics: list[str]  # train_time_s, epochs (those present)

    @property
    def columns(self) -> list[str]:
        """CSV column of every displayed column, in order."""
        recalls = [f"{d} R@{n}" for d in self.datasets for n in RECALLS]
        return self.labels + recalls + self.run_metrics + ["runs"]


def layout_of(t: Table) -> Layout:
    """The displayed columns of a collector table."""
    return Layout(labels=t.flags or ["run"], datasets=t.datasets,
                  run_metrics=[m for m in t.metrics if m in RUN_METRIC_NAMES])


def row_cells(t: Table, lay: Layout, row: dict[str, str]) -> list[str]:
    """Displayed texts of one row; an empty flag is '–' (the flag was not set), a missing number 'missing'."""
    cells = []
    for col in lay.columns:
        text = t.text(row, col)
        if col in lay.labels:
            text = text or "–"
        elif not text:
            text = "missing" if col != "runs" else ""
        text = text.replace(" ± ", NBSP + "±" + NBSP)  # a mean ± std never wraps
        cells.append(text)
    if INCOMPLETE in row.get("run", "") and INCOMPLETE not in cells[0]:
        cells[0] += f" {INCOMPLETE}"
    return cells


def typst_table(t: Table, caption: str) -> str:
    """The table as a typst figure with a two-level header (dataset over R@N)."""
    lay = layout_of(t)
    span2 = [f"table.cell(rowspan: 2, align: bottom, {string(breakable(c))})" for c in lay.labels]
    top = span2 + [f"table.cell(colspan: {len(RECALLS)}, align: center, {string(d)})" for d in lay.datasets]
    top += [f"table.cell(rowspan: 2, align: bottom, {string(RUN_METRIC_NAMES[m])})" for m in lay.run_metrics]
    top += ["table.cell(rowspan: 2, align: bottom, \"runs\")"]
    second = [string(f"R@{n}") for _ in lay.datasets for n in RECALLS]
    rules = [f"table.hline(start: {len(lay.labels) + i * len(RECALLS)}, end: {len(lay.labels) + (i + 1) * len(RECALLS)}"
             f", stroke: 0.3pt)" for i in range(len(lay.datasets))]
    header = [top, rules + second] if second else [top]
    return table(header, (row_cells(t, lay, r) for r in t.rows), len(lay.columns), caption=caption)


def latex_escape(text: str) -> str:
    """text with LaTeX's special characters escaped (the collector's escapes; a no-break space as ~)."""
    return "".join("~" if ch == NBSP else LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex_table(t: Table) -> str:
    """The same table as a LaTeX booktabs tabular (needs \\usepackage{booktabs})."""
    lay = layout_of(t)
    n_labels, width = len(lay.labels), len(RECALLS)
    top = [""] * n_labels + [rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(d)}}}" for d in lay.datasets]
    top += [""] * (len(lay.run_metrics) + 1)
    rules = "".join(rf"\cmidrule(lr){{{n_labels + i * width + 1}-{n_labels + (i + 1) * width}}}"
                    for i in range(len(lay.datasets)))
    names = lay.labels + [f"R@{n}" for _ in lay.datasets for n in RECALLS] + \
        [RUN_METRIC_NAMES[m] for m in lay.run_metrics] + ["runs"]
    lines = [r"\begin{tabular}{" + "l" * n_labels + "r" * (len(lay.columns) - n_labels) + "}", r"\toprule"]
    if lay.datasets:
        lines += [" & ".join(top) + r" \\", rules]
    lines += [" & ".join(latex_escape(c) for c in names) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row_cells(t, lay, r)) + r" \\" for r in t.rows]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_latex(t: Table, path: Path) -> Path:
    """Write latex_table(t) to path and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(latex_table(t))
    return path
