"""The results section: one subsection per experiment (table, plot, LaTeX table), prediction pictures,
recall against the success radius, and the activation heatmaps of the baselines."""
from __future__ import annotations

import logging
from pathlib import Path

from tools.collect_results import RECALLS

from .folder import Experiment, Study, Table
from .heatmaps import Source, baseline_heatmaps, find_source
from .markup import MISSING, esc, figure, string
from .plots import recall_bars, recall_vs_threshold
from .sections import copy_figure
from .tables import layout_of, row_cells, typst_table, write_latex

PARTS = (("baseline", "Baselines"), ("ablation", "Ablations"), ("variation", "Variations"))


def metric(t: Table, row: dict[str, str], column: str) -> str:
    """A number as the table shows it, kept on one line; 'missing' when the CSV cell is empty."""
    return (t.text(row, column) or MISSING).replace(" ± ", "\u00a0±\u00a0")


def row_label(t: Table, row: dict[str, str]) -> str:
    """A row named by its label cells ('flag=value, ...', or the collector's run name)."""
    lay = layout_of(t)
    cells = row_cells(t, lay, row)[:len(lay.labels)]
    return ", ".join(f"{k}={v}" for k, v in zip(lay.labels, cells)) if t.flags else cells[0]


def best_row(t: Table, column: str) -> dict[str, str] | None:
    """The row with the highest mean in column (None when no row has it)."""
    rows = [r for r in t.rows if t.stat(r, column)[0] is not None]
    return max(rows, key=lambda r: t.stat(r, column)[0]) if rows else None


def findings(t: Table) -> str:
    """Measured facts of a table: best row per dataset at R@1, and its spread across rows and seeds."""
    out = []
    for dataset in t.datasets:
        col = f"{dataset} R@{RECALLS[0]}"
        best = best_row(t, col)
        if best is None:
            continue
        means = [m for m, _ in (t.stat(r, col) for r in t.rows) if m is not None]
        stds = [s for _, s in (t.stat(r, col) for r in t.rows) if s is not None]
        text = f"on {esc(dataset)}, the highest R\\@1 is {esc(metric(t, best, col))}"
        if len(t.rows) > 1:
            text += f" ({esc(row_label(t, best))}); the rows span {max(means) - min(means):.1f} points"
        if stds:
            text += f", the largest standard deviation over seeds is {max(stds):.1f} points"
        out.append(text)
    return ("Measured: " + "; ".join(out) + ".\n") if out else ""


def status_line(exp: Experiment) -> str:
    """How many of its runs are done, failed or not run, with the first failure's message."""
    counts, own = exp.state_counts(), len(exp.own_runs)
    line = f"Runs: {own} planned, {counts['done']} done"
    line += f", {counts['failed']} failed" if counts["failed"] else ""
    rest = own - counts["done"] - counts["failed"]
    line += f", {rest} not run" if rest else ""
    refs = len(exp.runs) - own
    line += f", plus {refs} reference runs of other experiments" if refs else ""
    errors = exp.errors()
    return esc(line) + (f" (first error: {esc(errors[0][:200])})" if errors else "") + ".\n"


def experiment_section(study: Study, exp: Experiment, figures: Path, base: Path) -> str:
    """The subsection of one experiment; without results it says 'missing' and nothing else is shown."""
    varies = ", ".join(exp.varies) or "nothing (reference)"
    out = f"=== {esc(exp.title)}\n{esc(exp.question)} Experiment {esc(exp.name)}; varies: {esc(varies)}. "
    out += status_line(exp)
    if exp.table is None:
        return out + f"\n*Results: {MISSING}.* No run of this experiment has finished, so it has no table.\n"
    t = exp.table
    latex = write_latex(t, base / "tables" / f"{exp.name}.tex")
    out += typst_table(t, f"{esc(exp.title)}: recall\\@N (%) as mean ± std over seeds; also in "
                          f"{esc(latex.relative_to(base).as_posix())}.")
    out += findings(t)
    if t.datasets:
        plot = recall_bars(t, exp.title, figures / f"recall_{exp.name}.png")
        out += figure(plot, base, f"{esc(exp.title)}: recall\\@N per row and dataset (error bars: std over seeds).",
                      width=f"{min(80, 25 + 25 * len(t.datasets))}%")
    return out


def predictions_section(sources: dict[str, Source], figures: Path, base: Path) -> str:
    """One right and one wrong prediction picture of each baseline."""
    out = "== Predictions, right and wrong\nEach picture shows a query (blue) and its top database images, framed " \
          "green within the success radius and red outside, captioned with their distance in metres.\n"
    if not sources:
        return out + f"Prediction pictures: {MISSING} (no baseline evaluation saved any).\n"
    for name, src in sources.items():
        pics = {kind: next(iter(sorted((src.folder / "predictions").glob(f"*_{kind}.jpg"))), None)
                for kind in ("correct", "wrong")}
        shown = {k: copy_figure(p, figures / f"prediction_{name}_{k}.jpg") for k, p in pics.items() if p}
        cells = ", ".join(f"image({string(c.relative_to(base).as_posix())})" for c in shown.values())
        what = " and ".join(f"{'right' if k == 'correct' else 'wrong'} ({pics[k].name})" for k in shown)
        caption = f"{esc(name)}: {esc(what)} top-1 predictions on {esc(src.args.get('dataset_name', MISSING))}."
        out += f"#figure(block(width: 75%, grid(columns: 1, gutter: 4pt, {cells})), caption: [{caption}])\n"
    return out


def threshold_section(study: Study, figures: Path, base: Path) -> str:
    """Recall against the success radius of the baselines' evaluations that measured it."""
    series = {agg: [r for _, r in study.eval_results(exp) if r.get("recalls_by_threshold")]
              for agg, exp in study.baselines()}
    path = recall_vs_threshold(series, figures / "recall_vs_threshold.png")
    out = "== Recall against the success radius\n"
    if path is None:
        return out + f"Recall at several radii: {MISSING} (no baseline evaluation used `--recall_thresholds`).\n"
    runs = sum(len(v) for v in series.values())
    caption = (f"Recall\\@1 and recall\\@5 against the success radius, mean ± std over {runs} evaluations of "
               f"the baselines (`eval.py --recall_thresholds`).")
    return out + figure(path, base, caption, width="70%")


def heatmap_section(sources: dict[str, Source], figures: Path, base: Path) -> str:
    """Activation heatmaps over right and wrong queries of each baseline."""
    out = ("= Where the model looks\nThe heat of a pixel is the L2 norm over channels of the backbone feature map "
           "at that location (upsampled, scaled to [0, 1] per image), computed with the baseline's best_model.pth "
           "on queries whose top-1 prediction was right or wrong.\n")
    if not sources:
        return out + f"Heatmaps: {MISSING} (no baseline evaluation saved prediction pictures).\n"
    for name, src in sources.items():
        path = baseline_heatmaps(src, figures / f"heatmap_{name}.png")
        out += figure(path, base, f"{esc(name)}: activation energy over queries of {esc(src.args['dataset_name'])} "
                                  f"(checkpoint {esc('/'.join(src.checkpoint.parts[-4:-1]))}).")
    return out


def prediction_sources(study: Study) -> dict[str, Source]:
    """Baseline name → the evaluation whose prediction pictures and checkpoint the report shows."""
    sources = {}
    for agg, exp in study.baselines():
        src = find_source(study, exp)
        if src is None:
            logging.info(f"{exp.name}: no evaluation with prediction pictures and its checkpoint")
        else:
            sources[agg] = src
    return sources


def results_section(study: Study, sources: dict[str, Source], figures: Path, base: Path) -> str:
    """All experiments by part, then predictions and recall against the radius."""
    seeds = esc(" ".join(map(str, study.plan.get("seeds", []))))
    out = ("= Results\nEach table is the collector's CSV (collect_results.py over the experiment's run folders): "
           f"recall\\@N in percent as mean ± sample std over the seeds {seeds}, the training time in seconds and "
           "the epochs trained; '(n=1)' marks a mean over one of the merged runs. A dash marks a flag that was not "
           "set; 'missing' a number that no run folder holds.\n")
    for part, title in PARTS:
        exps = study.part(part)
        if exps:
            out += f"== {title}\n" + "".join(experiment_section(study, e, figures, base) for e in exps)
    return out + predictions_section(sources, figures, base) + threshold_section(study, figures, base)

