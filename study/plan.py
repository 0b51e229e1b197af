"""The study plan: study/plan.toml (experiments as data) resolved into STUDY/plan.json.

Contract between study.py (writes) and report.py (reads); report.py reads nothing outside the study folder.

A study folder STUDY (default `logs/study`) holds everything:

    STUDY/
      plan.json        the resolved plan, written by study.py at start (schema below)
      status.json      {"runs": {"<experiment>/<run_key>": {"state": "done"|"failed"|"pending"|"running",
                                  "folder": "<path relative to STUDY>", "seconds": float|null, "error": str|null}},
                        "machine": {"cpu": str, "cores": int, "torch": str, "cpu_capability": str, "gpu": str|null},
                        "started": ISO time, "finished": ISO time|null, "compute_seconds": float}
                       added: per run "kind" (train|eval|reference) and "cpu_seconds"; "steps": {"world/<name>",
                       "analysis/<name>", "summary/<experiment>", "scale": {"seconds", "cpu_seconds", "error"}}
      worlds/<dataset_name>/   generated datasets (datasets_vg layout) when no --datasets_folder is given:
                               "synthetic" (training world) and "synthetic_transfer" (other style; test/ only)
      analysis/<dataset_name>/ analyze_dataset.py output (summary.json + PNGs), training and transfer dataset
      runs/<experiment>/<run_key>/<timestamp>/            train.py run folder (args.json, results.json,
                                                          best_model.pth, info.log)
      evals/<experiment>/<run_key>/<eval_id>/<timestamp>/  eval.py run folders (results.json, recall plots,
                                                          predictions/)
      summary/<experiment>/results.csv|md|tex + recall_vs_<flag>.png   collect_results.py over runs/<experiment>,
                               evals/<experiment>, the training runs the experiment evaluates, and those it
                               references with their evals of the experiment's eval ids (the CSV is the single
                               source of the numbers in the report)
      scale/results.json       recall-scalability measurements (study/scale.py): {"sizes": [int], "queries": int,
                               "machine": {...}, "reference": str, "notes": [str], "rows": [{"name", "label", "dim",
                               "index", "bytes_per_image", "memory_mb": {size: float}, "search_ms_per_query":
                               {size: float}, "study_recall": {"R@1", "R@5"}, "recall_change_vs_netvlad": {"R@1",
                               "R@5"}, "study_seeds", "study_dim", optional "synthetic_r1_lost_vs_flat"}]}
      logs/<experiment>/<run_key>/{train,eval_<id>}.log   stdout and stderr of every run (appended)

plan.json:

    {"datasets_folder": str, "train_dataset": str, "transfer_dataset": str, "seeds": [int], "embedded": bool,
     "recipe": str, "scale_sizes": [int] (database sizes of study/scale.py; empty: its defaults),
     "experiments": [{"name": str (folder-safe), "title": str, "part": "baseline"|"ablation"|"variation",
                      "question": str (one sentence: what it varies and why), "varies": [flag names],
                      "measure_scale": bool,
                      "runs": [{"key": str (folder-safe, includes the seed), "label": str, "seed": int,
                                "train_flags": [str] | null (null: eval-only run reusing other checkpoints),
                                "checkpoint_of": "<experiment>/<run_key>" | null,
                                "checkpoints": ["<experiment>/<run_key>", ...] (every checkpoint evaluated),
                                "reference": bool (true: nothing to run; the summary shows the training run of
                                              checkpoint_of with its evals of this experiment's eval ids),
                                "variant": str, "variant_flags": [str] (the flags of the variant alone),
                                "evals": [{"id": str, "flags": [str]}]}]}]}

train_flags and the eval flags lack --datasets_folder, --save_dir and --resume, which the runner adds.

plan.toml: `[recipes.<name>]` give train_dataset, transfer_dataset, the train / eval flags of every run, `values`
for the {placeholders} of the experiments, `worlds` (train, transfer: style, seed, image_size, optional
map_size, and (database, queries) per split) for the generated datasets, and optional scale_sizes. Each
`[[experiment]]` has name, part, title, question, varies, optional eval = [{id, flags, recipes}] for every
variant and optional measure_scale;
each of its variants has key, label and one of train (flags), checkpoints (["experiment/variant", ...]: evaluated
by this experiment's evals) or reference ("experiment/variant"), plus optional eval and recipes (the recipes it
belongs to; default all).
"""
from __future__ import annotations

import re
import shlex
import string
import tomllib
from pathlib import Path

from commons import UserError

PLAN_FILE = Path(__file__).with_name("plan.toml")
PARTS = ("baseline", "ablation", "variation")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def load_plan(path: str | Path = PLAN_FILE) -> dict:
    """The raw plan file (TOML) as a dict; its recipes and experiments are checked by resolve_plan."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read the plan {path} ({e.strerror}); check --plan") from e
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"plan {path} is not valid TOML ({e}); fix the file") from e
    if not raw.get("recipes") or not raw.get("experiment"):
        raise UserError(f"plan {path} needs [recipes.<name>] tables and [[experiment]] blocks; see study/plan.toml")
    return raw


def _fill(text: str, values: dict[str, str], where: str) -> str:
    """text with every {name} replaced by values[name]."""
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None and name not in values:
            raise UserError(f"plan: unknown placeholder {{{name}}} in {where}; define it in the recipe's values")
    return text.format_map(values)


def _flags(text: str, values: dict[str, str], where: str) -> list[str]:
    return shlex.split(_fill(text, values, where))


def _in_recipe(entry: dict, recipe: str) -> bool:
    return recipe in entry.get("recipes", [recipe])


def _require(entry: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise UserError(f"plan: {where} lacks {', '.join(missing)}; add them (see study/plan.toml)")
    for k in ("name", "key", "id"):
        if k in entry and not SAFE_NAME.match(str(entry[k])):
            raise UserError(f"plan: {where} has {k} {entry[k]!r}; use letters, digits, '_', '-' or '.'")


def _evals(entries: list[dict], values: dict, recipe: str, seed: int, base: list[str], where: str) -> list[dict]:
    """The eval.py runs of one variant and seed: id and full flags."""
    out = []
    for e in entries:
        _require(e, ("id", "flags"), f"an eval of {where}")
        if _in_recipe(e, recipe):
            out.append({"id": e["id"], "flags": base + _flags(e["flags"], values, f"eval {e['id']} of {where}")
                        + ["--seed", str(seed)]})
    if len({e["id"] for e in out}) != len(out):
        raise UserError(f"plan: {where} has two evals with the same id; make the ids unique")
    return out


def _variant_runs(exp: dict, variant: dict, ctx: dict) -> list[dict]:
    """The runs of one variant, one per seed."""
    where = f"variant {variant.get('key')} of experiment {exp['name']}"
    _require(variant, ("key", "label"), where)
    if sum(k in variant for k in ("train", "checkpoints", "reference")) != 1:
        raise UserError(f"plan: {where} needs one of train (flags), checkpoints (['experiment/variant']) "
                        f"or reference ('experiment/variant')")
    values, recipe = ctx["values"], ctx["recipe"]
    own = _flags(variant.get("train", ""), values, where)
    dataset = ["--dataset_name", ctx["train_dataset"]]
    runs = []
    for seed in ctx["seeds"]:
        refs = [variant["reference"]] if "reference" in variant else variant.get("checkpoints", [])
        checkpoints = [f"{ref}_s{seed}" for ref in refs]
        runs.append({"key": f"{variant['key']}_s{seed}", "label": _fill(variant["label"], values, where),
                     "seed": seed, "variant": variant["key"], "variant_flags": own,
                     "train_flags": dataset + ctx["train"] + own + ["--seed", str(seed)] if "train" in variant
                     else None,
                     "checkpoint_of": checkpoints[0] if checkpoints else None, "checkpoints": checkpoints,
                     "reference": "reference" in variant,
                     "evals": [] if "reference" in variant else
                     _evals(exp.get("eval", []) + variant.get("eval", []), values, recipe, seed,
                            dataset + ctx["eval"], where)})
    return runs


def _experiment(exp: dict, ctx: dict) -> dict:
    """One resolved experiment of plan.json."""
    _require(exp, ("name", "part", "title", "question", "varies", "variant"), f"experiment {exp.get('name')}")
    if exp["part"] not in PARTS:
        raise UserError(f"plan: experiment {exp['name']} has part {exp['part']!r}; use one of {', '.join(PARTS)}")
    where = f"experiment {exp['name']}"
    runs = [r for v in exp["variant"] if _in_recipe(v, ctx["recipe"]) for r in _variant_runs(exp, v, ctx)]
    return {"name": exp["name"], "title": _fill(exp["title"], ctx["values"], where), "part": exp["part"],
            "question": _fill(exp["question"], ctx["values"], where), "varies": list(exp["varies"]),
            "measure_scale": bool(exp.get("measure_scale", False)), "runs": runs}


def _check_references(experiments: list[dict]) -> None:
    """Every checkpoint reference names a training run of the plan; names are unique."""
    names = [e["name"] for e in experiments]
    if len(set(names)) != len(names):
        raise UserError(f"plan: experiment names must be unique, got {', '.join(names)}")
    trained = {f"{e['name']}/{r['key']}" for e in experiments for r in e["runs"] if r["train_flags"] is not None}
    for e in experiments:
        keys = [r["key"] for r in e["runs"]]
        if len(set(keys)) != len(keys):
            raise UserError(f"plan: experiment {e['name']} has two variants with the same key; make them unique")
        for r in e["runs"]:
            for ref in r["checkpoints"]:
                if ref not in trained:
                    raise UserError(f"plan: {e['name']}/{r['key']} evaluates {ref}, which is not a training run "
                                    f"of this recipe; name an 'experiment/variant' that has train flags")


def resolve_plan(raw: dict, recipe: str, seeds: list[int], datasets_folder: str, embedded: bool,
                 train_dataset: str | None = None, transfer_dataset: str | None = None) -> dict:
    """plan.json (see the module docstring) for one recipe, seeds and datasets."""
    if recipe not in raw["recipes"]:
        raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(raw['recipes'])} (--recipe)")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds must be distinct non-negative integers, got {seeds}")
    r = raw["recipes"][recipe]
    _require(r, ("train_dataset", "transfer_dataset", "train", "eval"), f"recipe {recipe}")
    train_dataset = train_dataset or r["train_dataset"]
    transfer_dataset = transfer_dataset or r["transfer_dataset"]
    values = {**{k: str(v) for k, v in r.get("values", {}).items()},
              "train_dataset": train_dataset, "transfer_dataset": transfer_dataset}
    where = f"recipe {recipe}"
    ctx = {"recipe": recipe, "seeds": list(seeds), "values": values, "train_dataset": train_dataset,
           "train": _flags(r["train"], values, where), "eval": _flags(r["eval"], values, where)}
    experiments = [_experiment(e, ctx) for e in raw["experiment"]]
    _check_references(experiments)
    return {"datasets_folder": str(datasets_folder), "train_dataset": train_dataset,
            "transfer_dataset": transfer_dataset, "seeds": list(seeds), "embedded": embedded, "recipe": recipe,
            "scale_sizes": list(r.get("scale_sizes", [])), "experiments": experiments}


def run_index(plan: dict) -> dict[str, tuple[dict, dict]]:
    """'<experiment>/<run_key>' -> (experiment, run), in plan order."""
    return {f"{e['name']}/{r['key']}": (e, r) for e in plan["experiments"] for r in e["runs"]}


def select_runs(plan: dict, only: list[str] | None) -> list[str]:
    """Run ids to execute: those of the --only experiments (default: all), each preceded by the training
    runs whose checkpoints it evaluates."""
    names = [e["name"] for e in plan["experiments"]]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise UserError(f"--only: unknown experiment {', '.join(unknown)}; choose from {', '.join(names)}")
    index = run_index(plan)
    order: list[str] = []
    for run_id, (exp, run) in index.items():
        if only and exp["name"] not in only:
            continue
        order += [ref for ref in run["checkpoints"] if ref not in order]
        if run_id not in order:
            order.append(run_id)
    return order
