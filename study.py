"""Run the whole study (baselines, ablations, variations, over --seeds) from the plan in study/plan.toml.

Example: python study.py                       # embedded synthetic worlds, into logs/study
         python study.py --datasets_folder /data/datasets_vg    # Pitts30k -> St Lucia, the benchmark's defaults
         python study.py --only baselines transfer --seeds 0 --dry_run
Run it again to continue an interrupted study: finished runs are kept, interrupted ones resume from their
checkpoint, failed ones are tried again. The study folder layout is described in study/plan.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from commons import UserError, run_cli, setup_logging
from study.plan import PLAN_FILE, load_plan, resolve_plan, run_index, select_runs
from study.runner import Context, run_all, run_is_done, sync_states
from study.status import FolderLock, Status, format_seconds, write_json_atomic
from study.steps import analyze_datasets, measure_scale, prepare_worlds, summarize

DEFAULT_SEEDS = [0, 1, 2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options of study.py."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("logs/study"), help="the study folder")
    p.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="every experiment runs once per seed")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments (and the trainings "
                                                             "whose checkpoints they evaluate)")
    p.add_argument("--datasets_folder", default=os.environ.get("DATASETS_FOLDER"),
                   help="datasets_vg folder with the real datasets; without it, synthetic worlds are generated")
    p.add_argument("--train_dataset", default=None, help="default: the recipe's (pitts30k, or synthetic)")
    p.add_argument("--transfer_dataset", default=None, help="default: the recipe's (st_lucia, or synthetic_transfer)")
    p.add_argument("--recipe", default=None, help="recipe of study/plan.toml; default: embedded without "
                                                  "--datasets_folder, real with it (tiny: seconds per run, for tests)")
    p.add_argument("--plan", type=Path, default=PLAN_FILE, help="the plan file")
    p.add_argument("--dry_run", action="store_true", help="list the runs and their state, run nothing")
    p.add_argument("--max_runs", type=int, default=None, metavar="K", help="stop after K runs (continue later)")
    return p.parse_args(argv)


def build_context(args: argparse.Namespace) -> tuple[Context, dict]:
    """Resolve the plan for the options; returns the context and the recipe's worlds (empty for real data)."""
    raw = load_plan(args.plan)
    embedded = args.datasets_folder is None
    recipe = args.recipe or ("embedded" if embedded else "real")
    worlds = raw["recipes"].get(recipe, {}).get("worlds", {})
    if embedded and not worlds:
        raise UserError(f"recipe {recipe} has no synthetic worlds; pass --datasets_folder (or DATASETS_FOLDER) "
                        f"holding the real datasets, or choose another --recipe")
    study = args.out.resolve()
    datasets = study / "worlds" if embedded else Path(args.datasets_folder).resolve()
    plan = resolve_plan(raw, recipe, args.seeds, str(datasets), embedded, args.train_dataset, args.transfer_dataset)
    if not embedded:
        for name in (plan["train_dataset"], plan["transfer_dataset"]):
            if not (datasets / name / "images").is_dir():
                raise UserError(f"dataset {name} not found in {datasets} (expected {datasets / name / 'images'}); "
                                f"check --datasets_folder, --train_dataset and --transfer_dataset")
    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max_runs must be >= 1, got {args.max_runs}")
    return Context(study, plan, datasets, Status(study)), (worlds if embedded else {})


def check_same_study(study: Path, plan: dict) -> None:
    """Refuse to mix two different studies in one folder (other recipe or datasets)."""
    path = study / "plan.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    keys = ["recipe", "embedded", "train_dataset", "transfer_dataset"]
    if not plan["embedded"]:  # generated worlds move with the study folder; real datasets must stay the same
        keys.append("datasets_folder")
    for key in keys:
        if old.get(key) != plan[key]:
            raise UserError(f"{study} holds a study with {key} {old.get(key)!r}, not {plan[key]!r}; "
                            f"choose another --out or pass the same options")


def dry_run(ctx: Context, order: list[str]) -> None:
    """Print every run to execute, its state on disk and what it would run."""
    index = run_index(ctx.plan)
    states = {r: "done" if run_is_done(ctx, index[r][0]["name"], index[r][1]) else
              ctx.status.runs.get(r, {}).get("state", "pending") for r in order}
    for run_id in order:
        _, run = index[run_id]
        state = states[run_id]
        train = "train " + " ".join(run["variant_flags"] or ["(recipe)"]) if run["train_flags"] is not None \
            else ("reference to " if run["reference"] else "eval of ") + ", ".join(run["checkpoints"])
        evals = "; ".join(f"{ev['id']}" for ev in run["evals"])
        print(f"{state:8} {run_id:40} {train}" + (f" | evals: {evals}" if evals else ""))
    left = [r for r in order if states[r] != "done"]
    trainings = sum(index[r][1]["train_flags"] is not None for r in order)
    print(f"{len(order)} runs ({trainings} trainings, {sum(len(index[r][1]['evals']) for r in order)} evaluations), "
          f"{len(left)} left; recipe {ctx.plan['recipe']}, seeds {' '.join(map(str, ctx.plan['seeds']))}, "
          f"datasets {ctx.plan['train_dataset']} -> {ctx.plan['transfer_dataset']} in {ctx.datasets_folder}")


def execute(ctx: Context, worlds: dict, order: list[str], only: list[str] | None, max_runs: int | None) -> int:
    """Data, runs, summaries, scale; returns the number of failed runs among `order`."""
    check_same_study(ctx.study, ctx.plan)
    write_json_atomic(ctx.study / "plan.json", ctx.plan)
    sync_states(ctx, order)
    if worlds:
        prepare_worlds(ctx, worlds)
    analyze_datasets(ctx)
    run_all(ctx, order, max_runs)
    names = [e["name"] for e in ctx.plan["experiments"] if not only or e["name"] in only]
    summarize(ctx, names)
    if any(e["measure_scale"] for e in ctx.plan["experiments"] if e["name"] in names):
        measure_scale(ctx)
    states = {r: ctx.status.runs[r]["state"] for r in run_index(ctx.plan)}
    ctx.status.finish(all(s in ("done", "failed") for s in states.values()))
    failed = [r for r in order if states[r] == "failed"]
    logging.info(f"study: {sum(s == 'done' for s in states.values())} of {len(states)} runs done, "
                 f"{len(failed)} failed; compute time so far {format_seconds(ctx.status.data['compute_seconds'])}; "
                 f"results in {ctx.study}")
    for r in failed:
        logging.info(f"  failed: {r}: {ctx.status.runs[r]['error']}")
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    """Run (or list, with --dry_run) the study; exit code 1 when a run failed."""
    args = parse_args(argv)
    ctx, worlds = build_context(args)
    order = select_runs(ctx.plan, args.only)
    if args.dry_run:
        dry_run(ctx, order)
        return 0
    with FolderLock(ctx.study):
        setup_logging(ctx.study)
        try:
            failed = execute(ctx, worlds, order, args.only, args.max_runs)
        except KeyboardInterrupt:
            ctx.status.save()
            print("interrupted: finished runs are kept; run the same command again to continue", file=sys.stderr)
            sys.exit(130)
    if failed:
        print(f"error: {failed} runs failed (see {ctx.study / 'status.json'} and {ctx.study / 'logs'}); "
              f"run the same command again to retry them", file=sys.stderr)
        sys.exit(1)
    return 0


if __name__ == "__main__":
    run_cli(main)
