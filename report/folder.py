"""Reading a study folder: plan.json, status.json, the collector's CSVs, run and evaluation folders.

Layout (written by study.py): plan.json, status.json, runs/<experiment>/<run_key>/<timestamp>/,
evals/<experiment>/<run_key>/<eval_id>/<timestamp>/, summary/<experiment>/results.csv, analysis/<dataset>/,
scale/results.json. The CSV of collect_results.py (written by study.py, which knows which run folders each
experiment's table gathers) is the single source of an experiment's table numbers; without it the experiment is
missing.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tools import collect_results
from commons import UserError

NOT_METRICS = ("run", "seeds", "runs")


def read_json(path: Path) -> dict | None:
    """The JSON object in path, or None when the file is missing (a broken file is a UserError)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); rerun the study step that writes it or delete it") from None


def flag_value(flags: list[str], name: str, default: str) -> str:
    """The value following flag `name` in a command line (the last one wins), or default."""
    values = [flags[i + 1] for i, f in enumerate(flags[:-1]) if f == name]
    return values[-1] if values else default


def is_metric(column: str) -> bool:
    """Whether a collector column holds a number averaged over seeds (recall@N, training time, epochs)."""
    return " R@" in column or column in collect_results.RUN_METRICS


@dataclass
class Table:
    """One results.csv of collect_results.py: the flags that differ across rows, the metrics, the raw cells."""
    flags: list[str]
    metrics: list[str]
    rows: list[dict[str, str]]

    @property
    def datasets(self) -> list[str]:
        """Evaluated dataset labels ('<dataset>' or '<dataset>:<split>'), in column order."""
        labels = [m.rsplit(" R@", 1)[0] for m in self.metrics if " R@" in m]
        return list(dict.fromkeys(labels))

    def stat(self, row: dict[str, str], column: str) -> tuple[float | None, float | None]:
        """(mean, std) of a metric cell; None where the CSV cell is empty."""
        def num(text: str | None) -> float | None:
            return float(text) if text else None
        return num(row.get(column)), num(row.get(f"{column} std"))

    def text(self, row: dict[str, str], column: str) -> str:
        """A cell as the collector's markdown/LaTeX tables show it: 'mean ± std' with one decimal, '' when missing,
        '(n=1)' when a row merges several runs but only one has the number (the CSV then has no std)."""
        if not is_metric(column):
            return row.get(column, "")
        mean, std = self.stat(row, column)
        runs = int(row.get("runs") or 1)
        return collect_results.format_metric(column, (mean, std, runs if std is not None else 1), runs)


def read_table(path: Path) -> Table | None:
    """The Table in a collector CSV, or None when the file is missing or has no rows."""
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = [c for c in rows[0] if not c.endswith(" std")]
    return Table(flags=[c for c in columns if c not in NOT_METRICS and not is_metric(c)],
                 metrics=[c for c in columns if is_metric(c)], rows=rows)


@dataclass
class Experiment:
    """One experiment of the plan, with the states of its runs and its table (None: no results)."""
    name: str
    title: str
    part: str
    question: str
    varies: list[str]
    runs: list[dict]
    states: dict[str, dict] = field(default_factory=dict)
    table: Table | None = None

    @property
    def own_runs(self) -> list[dict]:
        """Its runs that execute something (not references to another experiment's training run)."""
        return [r for r in self.runs if not r.get("reference")]

    def state_counts(self) -> Counter:
        """How many of its own runs are done, failed, pending, running."""
        return Counter(self.states.get(r["key"], {}).get("state", "pending") for r in self.own_runs)

    def errors(self) -> list[str]:
        """The error messages of its failed runs."""
        return [s["error"] for s in self.states.values() if s.get("state") == "failed" and s.get("error")]


@dataclass
class Study:
    """Everything report.py reads, under one study folder."""
    root: Path
    plan: dict
    status: dict
    experiments: list[Experiment]

    def part(self, part: str) -> list[Experiment]:
        """Its experiments of one part (baseline, ablation, variation), in plan order."""
        return [e for e in self.experiments if e.part == part]

    def baselines(self) -> list[tuple[str, Experiment]]:
        """(aggregation, experiment) of each baseline experiment, the aggregation read from its training flags."""
        found = []
        for exp in self.part("baseline"):
            flags = next((r["train_flags"] for r in exp.runs if r.get("train_flags")), None) or []
            found.append((flag_value(flags, "--aggregation", "gem"), exp))
        return found

    def train_folders(self, exp: Experiment) -> list[Path]:
        """Training run folders of an experiment holding a best_model.pth, in run-key order."""
        base = self.root / "runs" / exp.name
        return sorted(p.parent for p in base.glob("*/*/best_model.pth")) if base.is_dir() else []

    def train_args(self, exp: Experiment) -> dict | None:
        """args.json of the experiment's first training run (None when it has none)."""
        folders = self.train_folders(exp)
        return read_json(folders[0] / "args.json") if folders else None

    def eval_results(self, exp: Experiment) -> list[tuple[Path, dict]]:
        """(folder, results.json) of every finished eval.py run of an experiment, in folder order."""
        base = self.root / "evals" / exp.name
        found = sorted(base.glob("*/*/*/results.json")) if base.is_dir() else []
        return [(p.parent, read_json(p)) for p in found]


def load_study(root: Path) -> Study:
    """Read the study folder; a folder without plan.json is a UserError."""
    plan = read_json(root / "plan.json")
    if plan is None:
        raise UserError(f"{root} has no plan.json; pass the folder that study.py wrote (default logs/study), "
                        f"or run `make study` first")
    status = read_json(root / "status.json") or {"runs": {}, "machine": {}}
    experiments = []
    for spec in plan.get("experiments", []):
        exp = Experiment(name=spec["name"], title=spec.get("title", spec["name"]), part=spec.get("part", ""),
                         question=spec.get("question", ""), varies=list(spec.get("varies", [])),
                         runs=list(spec.get("runs", [])))
        exp.states = {key.split("/", 1)[1]: s for key, s in status.get("runs", {}).items()
                      if key.split("/", 1)[0] == exp.name}
        exp.table = read_table(root / "summary" / exp.name / "results.csv")
        experiments.append(exp)
    return Study(root=root, plan=plan, status=status, experiments=experiments)
