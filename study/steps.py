"""The study's steps around the runs: generated worlds, dataset analysis, per-experiment summaries, scale."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from commons import UserError
from study.runner import Context, Outcome, call
from tools.synthetic_world import SPLITS, generate_world

PLACEHOLDER_SPLIT = (10, 5)  # database, queries of a split the transfer world does not need (removed after)


def _world_sizes(spec: dict) -> dict[str, tuple[int, int]]:
    return {s: tuple(spec.get(s, PLACEHOLDER_SPLIT)) for s in SPLITS}


def _same_world(info: dict, spec: dict) -> bool:
    """Whether world.json describes the world of spec."""
    sizes = {s: (v["database"], v["queries"]) for s, v in info["sizes"].items()}
    return (info["seed"], info["image_size"], info["map_size"], info.get("style", "city"), sizes) == \
        (spec["seed"], spec["image_size"], spec.get("map_size", 1024), spec["style"], _world_sizes(spec))


def prepare_worlds(ctx: Context, worlds: dict) -> None:
    """Generate the training and transfer worlds into STUDY/worlds unless they are there already.

    worlds: {"train": spec, "transfer": spec} of the recipe; a split missing from the spec is not kept
    (the transfer world has only test/, like St Lucia)."""
    for role, name in (("train", ctx.plan["train_dataset"]), ("transfer", ctx.plan["transfer_dataset"])):
        spec, target = worlds[role], ctx.datasets_folder / name
        if (target / "world.json").is_file():
            if not _same_world(json.loads((target / "world.json").read_text()), spec):
                raise UserError(f"{target} was generated with other settings than the recipe's; "
                                f"delete it or choose another --out")
        else:
            start, cpu = time.monotonic(), time.process_time()
            logging.info(f"generating the {role} world {name} ({spec['style']} style) in {target.parent}")
            generate_world(ctx.datasets_folder, seed=spec["seed"], name=name, image_size=spec["image_size"],
                           sizes=_world_sizes(spec), map_size=spec.get("map_size", 1024), style=spec["style"],
                           overwrite=True)
            ctx.status.add_step(f"world/{name}", Outcome(0, time.monotonic() - start, time.process_time() - cpu, None))
        for split in SPLITS:
            if split not in spec:
                shutil.rmtree(target / "images" / split, ignore_errors=True)


def analyze_datasets(ctx: Context) -> None:
    """analyze_dataset.py on the training and the transfer dataset into STUDY/analysis/<name>/."""
    for name in dict.fromkeys((ctx.plan["train_dataset"], ctx.plan["transfer_dataset"])):
        out = ctx.study / "analysis" / name
        if (out / "summary.json").is_file():
            continue
        logging.info(f"analyzing dataset {name} into {out}")
        done = call("tools.analyze_dataset", ["--datasets_folder", str(ctx.datasets_folder),
                    "--dataset_name", name, "--out", str(out)], ctx.study / "logs" / "analysis" / f"{name}.log")
        ctx.status.add_step(f"analysis/{name}", done)


def summary_roots(ctx: Context, exp: dict) -> list[Path]:
    """Folders the collector reads for one experiment: its runs and evals, the training runs it evaluates, and
    the training runs it references with their evaluations of this experiment's eval ids."""
    roots = [ctx.study / "runs" / exp["name"], ctx.study / "evals" / exp["name"]]
    eval_ids = {ev["id"] for run in exp["runs"] for ev in run["evals"]}
    for run in exp["runs"]:
        roots += [ctx.study / "runs" / ref for ref in run["checkpoints"] if len(run["checkpoints"]) == 1]
        if run["reference"]:
            roots += [ctx.study / "evals" / run["checkpoint_of"] / i for i in sorted(eval_ids)]
    unique = list(dict.fromkeys(roots))
    return [r for r in unique if r.is_dir() and any(r.rglob("results.json"))]


def _newer_than_results(path: Path, roots: list[Path]) -> bool:
    """Whether path exists and is newer than every results.json below roots."""
    newest = max((p.stat().st_mtime for r in roots for p in r.rglob("results.json")), default=0.0)
    return path.is_file() and path.stat().st_mtime > newest


def summarize(ctx: Context, names: list[str]) -> None:
    """collect_results.py for each experiment in names into STUDY/summary/<experiment>/."""
    for exp in ctx.plan["experiments"]:
        if exp["name"] not in names:
            continue
        roots = summary_roots(ctx, exp)
        if not roots:
            logging.info(f"summary of {exp['name']}: no finished run yet")
            continue
        out = ctx.study / "summary" / exp["name"]
        if _newer_than_results(out / "results.csv", roots):
            continue
        if out.is_dir():
            shutil.rmtree(out)  # rebuilt from the run folders: no stale table or plot stays
        done = call("tools.collect_results", [*map(str, roots), "--out", str(out)],
                    ctx.study / "logs" / "summary" / f"{exp['name']}.log")
        ctx.status.add_step(f"summary/{exp['name']}", done)


def measure_scale(ctx: Context) -> None:
    """study/scale.py: STUDY/scale/results.json (timings measured once, recall changes every time)."""
    ctx.status.add_step("scale", call("study.scale", [str(ctx.study)],
                                      ctx.study / "logs" / "scale.log"))
