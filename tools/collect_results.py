"""Collect the results.json of train.py / eval.py runs into one table (csv, md, tex) and recall plots.

Example: python -m tools.collect_results logs/ablation_lr_optimizer --out logs/ablation_lr_optimizer/summary

One row per trained model and evaluation setting. An eval.py run is linked to its training run through the
checkpoint path; it adds columns (R@N on its dataset) to that run's row when it evaluates with the same
settings (distance threshold, test size, index, test-time variants), and otherwise gets its own row carrying
the training flags plus its evaluation flags. Runs that differ only in --seed are merged into mean ± std
(sample std). Only flags that differ across rows are shown. A number that is missing stays an empty cell.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from commons import CliParser, UserError, run_cli
from runs.results_output import (LATEX_ESCAPES, RECALLS, format_cell, format_metric, key_of,  # noqa: F401 (API)
                            plot_ablations, sort_key, to_csv, to_latex, to_markdown, write_text)

RUN_METRICS = ("train_time_s", "epochs")
# never shown as flags nor used to tell runs apart (seed: runs differing only in it are merged); the data
# (--datasets_folder, --dataset_name) are part of a run's identity: runs on other data are never merged
IGNORED = {"save_dir", "resume", "device", "num_workers", "infer_batch_size", "log_level",
           "seed", "recall_values", "skip_corrupt", "recall_thresholds", "save_predictions",
           "save_only_wrong_predictions"}
# eval.py flags that are not evaluation settings (dataset_name and split become the column label)
EVAL_NOT_SETTINGS = IGNORED | {"datasets_folder", "dataset_name", "split", "pretrain", "resize", "precision"}
SHARED_SETTINGS = ("val_positive_dist_threshold", "test_resize", "index")  # train.py flags eval.py may change


def read_json(path: Path) -> dict | None:
    """The JSON object in path, or None when there is no such file; UserError when it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); remove it or move it out of the folders collected") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not the object train.py/eval.py write; remove "
                        f"it or move it out of the folders collected")
    return obj


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


def main(argv: list[str] | None = None) -> dict:
    """Scan the run folders, write results.csv/.md/.tex and recall_vs_<flag>.png into --out."""
    p = CliParser(prog="python -m tools.collect_results", description=__doc__.splitlines()[0])
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
    if a.out.exists() and not a.out.is_dir():
        raise UserError(f"--out {a.out} is a file; name a folder for the tables and plots")
    try:
        a.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {a.out} ({e.strerror}); choose another folder") from None
    for name, text in (("csv", to_csv(header, table)), ("md", to_markdown(header, table)),
                       ("tex", to_latex(header, table))):
        write_text(a.out / f"results.{name}", text)
    plots = [] if a.no_plots else plot_ablations(table, flags, collection.labels, a.out)
    print(f"{len(table)} rows from {len(collection.rows)} runs -> {a.out}/results.{{csv,md,tex}}, {len(plots)} plots")
    return {"header": header, "rows": table, "varied": flags, "plots": plots}


if __name__ == "__main__":
    run_cli(main)
