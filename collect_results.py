"""Collect the results.json of train.py / eval.py runs into one table (csv, md, tex) and recall plots.

Example: python collect_results.py logs/ablation_lr_optimizer --out logs/ablation_lr_optimizer/summary

One row per trained model and evaluation setting. An eval.py run is linked to its training run through the
checkpoint path; it adds columns (R@N on its dataset) to that run's row when it evaluates with the same
settings (distance threshold, test size, index, test-time variants), and otherwise gets its own row carrying
the training flags plus its evaluation flags. Runs that differ only in --seed are merged into mean ± std
(sample std). Only flags that differ across rows are shown. A number that is missing stays an empty cell.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from commons import UserError, run_cli

RECALLS = (1, 5, 10)
RUN_METRICS = ("train_time_s", "epochs")
# never shown as flags nor used to tell runs apart (seed: runs differing only in it are merged)
IGNORED = {"save_dir", "resume", "datasets_folder", "device", "num_workers", "infer_batch_size", "log_level",
           "seed", "recall_values", "skip_corrupt", "recall_thresholds", "save_predictions",
           "save_only_wrong_predictions"}
# eval.py flags that are not evaluation settings (dataset_name and split become the column label)
EVAL_NOT_SETTINGS = IGNORED | {"dataset_name", "split", "pretrain", "resize", "precision"}
SHARED_SETTINGS = ("val_positive_dist_threshold", "test_resize", "index")  # train.py flags eval.py may change


def read_json(path: Path) -> dict | None:
    """The JSON object in path, or None (with a warning) when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        logging.warning(f"skipping unreadable {path}: {e}")
        return None


def key_of(value: Any) -> str:
    """A hashable, order-independent representation of a JSON value."""
    return json.dumps(value, sort_keys=True)


def eval_defaults() -> dict:
    """Default values of eval.py's flags (empty when the parser cannot be imported)."""
    try:
        from parser import eval_parser
        return vars(eval_parser().parse_args(["--resume", "-"]))
    except Exception as e:  # noqa: BLE001 - the collector also works on results copied elsewhere
        logging.warning(f"eval.py flag defaults unavailable ({e}); eval-only flags are not compared")
        return {}


def dataset_label(info: dict) -> str:
    """Column label of an evaluated dataset: its name, plus ':split' when the split is not 'test'."""
    split = info.get("split", "test")
    return f"{info.get('dataset', '?')}" + ("" if split == "test" else f":{split}")


def recall_cells(label: str, recalls: dict | None) -> dict[str, float | None]:
    """{'<label> R@N': value or None} for N in RECALLS."""
    recalls = recalls or {}
    return {f"{label} R@{n}": recalls.get(str(n)) for n in RECALLS}


class Collection:
    """Rows (flags, metrics, name) built from the run folders below one or more roots."""

    def __init__(self, roots: list[Path]):
        self.rows: list[dict] = []
        self.train_rows: dict[Path, dict] = {}  # resolved run folder → its row
        self.labels: list[str] = []  # dataset labels, in order of appearance
        self.defaults = {}
        evals = []
        for folder in sorted({p.parent for root in roots for name in ("results.json", "args.json")
                              for p in root.rglob(name)}):
            results, args = read_json(folder / "results.json"), read_json(folder / "args.json")
            args = (results or {}).get("args") or args or {}
            if (results or {}).get("kind") == "train" or (not results and "epochs_num" in args):
                self.add_train(folder, results, args)
            elif results is not None:
                evals.append((folder, results))
        if evals:
            self.defaults = eval_defaults()
        for folder, results in evals:
            self.add_eval(folder, results)

    def _label(self, info: dict) -> str:
        label = dataset_label(info)
        if label not in self.labels:
            self.labels.append(label)
        return label

    def add_train(self, folder: Path, results: dict | None, args: dict) -> dict:
        """A row for a training run (empty metrics when it has no results.json yet)."""
        flags = {k: v for k, v in args.items() if k not in ("test_resize",)}
        flags["test_resize"] = args.get("test_resize") or args.get("resize")
        row = {"flags": flags, "metrics": {}, "name": args.get("save_dir", folder.parent.name),
               "seed": args.get("seed"), "complete": results is not None}
        if results:
            test = results.get("test") or {}
            row["metrics"].update(recall_cells(self._label(test), test.get("recalls")) if test else {})
            row["metrics"].update({k: results.get(k) for k in RUN_METRICS})
        self.rows.append(row)
        self.train_rows[folder.resolve()] = row
        return row

    def find_train_row(self, checkpoint: Any) -> dict | None:
        """The row of the training run whose folder holds `checkpoint` (loaded from disk when outside the roots)."""
        if not isinstance(checkpoint, str):
            return None  # an ensemble of several checkpoints is not one training run
        folder = Path(checkpoint).parent
        if folder.resolve() in self.train_rows:
            return self.train_rows[folder.resolve()]
        tail = folder.parts[-2:]
        for path, row in self.train_rows.items():  # paths relative to another working directory
            if path.parts[-len(tail):] == tail:
                return row
        results, args = read_json(folder / "results.json"), read_json(folder / "args.json")
        if results or args:
            return self.add_train(folder, results, (results or {}).get("args") or args or {})
        return None

    def add_eval(self, folder: Path, results: dict) -> None:
        """Attach an eval.py run to its training run's row, or give it a row of its own."""
        args = results.get("args") or {}
        settings = {k: args.get(k) for k in SHARED_SETTINGS}
        settings["test_resize"] = args.get("test_resize") or args.get("resize")
        settings.update({k: v for k, v in args.items() if k not in EVAL_NOT_SETTINGS and k not in settings
                         and k in self.defaults and self.defaults[k] != v})
        cells = recall_cells(self._label(results), results.get("recalls"))
        name = args.get("save_dir", folder.parent.name)
        train = self.find_train_row(results.get("checkpoint"))
        if train is None:
            self.rows.append({"flags": settings, "metrics": cells, "name": name, "seed": args.get("seed"),
                              "complete": True})
            return
        if all(key_of(train["flags"].get(k)) == key_of(v) for k, v in settings.items()):
            for col, v in cells.items():
                if train["metrics"].get(col) is None:
                    train["metrics"][col] = v
            return
        target = next((r for r in self.rows if r.get("train") is train and key_of(r["flags"]) ==
                       key_of({**train["flags"], **settings})), None)
        if target is None:
            target = {"flags": {**train["flags"], **settings}, "name": f"{train['name']} ({Path(name).name})",
                      "train": train, "metrics": {k: train["metrics"].get(k) for k in RUN_METRICS},
                      "seed": train["seed"], "complete": train["complete"]}
            self.rows.append(target)
        target["metrics"].update({c: v for c, v in cells.items() if target["metrics"].get(c) is None})


def group_rows(rows: list[dict]) -> list[dict]:
    """Merge rows whose flags are equal (they differ at most in --seed); incomplete runs stay alone."""
    groups: dict[str, list[dict]] = {}
    for i, row in enumerate(rows):
        key = key_of({k: v for k, v in row["flags"].items() if k not in IGNORED}) if row["complete"] else str(i)
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        cols = {c for m in members for c in m["metrics"]}
        stats = {}
        for c in cols:
            vals = [float(m["metrics"][c]) for m in members if m["metrics"].get(c) is not None]
            stats[c] = (float(np.mean(vals)) if vals else None,
                        float(np.std(vals, ddof=1)) if len(vals) > 1 else None, len(vals))
        out.append({"flags": members[0]["flags"], "stats": stats, "n": len(members),
                    "names": [m["name"] for m in members], "seeds": [m["seed"] for m in members],
                    "complete": members[0]["complete"]})
    return out


def varied_flags(groups: list[dict]) -> list[str]:
    """Flags (in first-seen order) whose values differ across groups."""
    names: list[str] = []
    for g in groups:
        names += [k for k in g["flags"] if k not in names and k not in IGNORED]
    return [k for k in names if len({key_of(g["flags"].get(k)) for g in groups}) > 1]


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


def build_table(collection: Collection) -> tuple[list[str], list[dict], list[str]]:
    """Header, rows (column → value; metrics as (mean, std, count)) and the varied flags."""
    groups = group_rows(collection.rows)
    flags = varied_flags(groups)
    groups.sort(key=lambda g: [sort_key(g["flags"].get(k)) for k in flags] + [sort_key(g["names"][0])])
    names = [n for g in groups for n in g["names"]]
    prefix = os.path.commonprefix(names)[:os.path.commonprefix(names).rfind("/") + 1]  # the ablation folder
    metric_cols = [f"{label} R@{n}" for label in collection.labels for n in RECALLS] + list(RUN_METRICS)
    multi_seed = len({s for g in groups for s in g["seeds"]}) > 1
    header = ["run"] + (["seeds"] if multi_seed else []) + flags + metric_cols + ["runs"]
    table = []
    for g in groups:
        row = {"run": ", ".join(n[len(prefix):] for n in g["names"]) + ("" if g["complete"] else " (incomplete)"),
               "seeds": " ".join(str(s) for s in g["seeds"]), "runs": g["n"]}
        row.update({k: g["flags"].get(k) for k in flags})
        row.update({c: g["stats"].get(c, (None, None, 0)) for c in metric_cols})
        table.append(row)
    return header, table, flags


def write_csv(path: Path, header: list[str], table: list[dict]) -> None:
    """Plain numbers: a metric's mean, and a '<metric> std' column when some row merges several seeds."""
    metric_cols = [c for c in header if table and isinstance(table[0].get(c), tuple)]
    with_std = [c for c in metric_cols if any(r[c][1] is not None for r in table)]
    cols = [x for c in header for x in ([c, f"{c} std"] if c in with_std else [c])]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in table:
            cells = {c: format_cell(r.get(c)) for c in header if c not in metric_cols}
            cells.update({c: "" if r[c][0] is None else repr(r[c][0]) for c in metric_cols})
            cells.update({f"{c} std": "" if r[c][1] is None else repr(r[c][1]) for c in with_std})
            w.writerow([cells[c] for c in cols])


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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for f in flags:
        ticks = sorted({key_of(r[f]): r[f] for r in table}.values(), key=sort_key)
        numeric = all(sort_key(v)[0] == 0 for v in ticks)
        order = [key_of(v) for v in ticks]
        # flags whose value follows from f (e.g. test_resize = resize) do not split lines
        others = [k for k in flags if k != f and len({(key_of(r[f]), key_of(r[k])) for r in table}) > len(ticks)]
        fig, axes = plt.subplots(len(labels), 1, figsize=(5, 4 * len(labels)), squeeze=False)
        for ax, label in zip(axes[:, 0], labels):
            plot_flag(ax, table, f, others, label, lambda v: float(v) if numeric else order.index(key_of(v)))
            if not numeric:
                ax.set_xticks(range(len(ticks)), [format_cell(v) or "default" for v in ticks], rotation=30)
        fig.tight_layout()
        paths.append(out / f"recall_vs_{f}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    """Scan the run folders, write results.csv/.md/.tex and recall_vs_<flag>.png into --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", type=Path, help="folders holding run folders, e.g. logs/ or logs/<save_dir>")
    p.add_argument("--out", type=Path, required=True, help="output folder of the tables and plots")
    p.add_argument("--no_plots", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for root in a.roots:
        if not root.is_dir():
            raise UserError(f"{root} is not a folder; pass the logs folder of the runs, e.g. logs/<save_dir>")
    collection = Collection(a.roots)
    if not collection.rows:
        raise UserError(f"no run folders (with results.json or args.json) under {', '.join(map(str, a.roots))}; "
                        f"pass the folder train.py/eval.py wrote to (logs/<save_dir>)")
    header, table, flags = build_table(collection)
    a.out.mkdir(parents=True, exist_ok=True)
    write_csv(a.out / "results.csv", header, table)
    (a.out / "results.md").write_text(to_markdown(header, table))
    (a.out / "results.tex").write_text(to_latex(header, table))
    plots = [] if a.no_plots else plot_ablations(table, flags, collection.labels, a.out)
    print(f"{len(table)} rows from {len(collection.rows)} runs -> {a.out}/results.{{csv,md,tex}}, {len(plots)} plots")
    return {"header": header, "rows": table, "varied": flags, "plots": plots}


if __name__ == "__main__":
    run_cli(main)
