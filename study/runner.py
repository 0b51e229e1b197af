"""Execution of the study's runs: train.py / eval.py (study/launcher.py), resumable from the run folders on disk.

A run ('<experiment>/<run_key>') is one training (or none, for an eval-only run) plus its evaluations. The
folders are the truth: a training folder with results.json is finished and never repeated; one with
last_model.pth but no results.json was interrupted and is continued with `train.py --resume`; a folder with
neither (killed before its first checkpoint) is removed and started again. The same holds for each eval.py
folder (results.json or removed). A failed run is recorded in status.json with its error line, and the study
moves on; the next `python study.py` tries it again.
"""
from __future__ import annotations

import logging
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from study.launcher import command_line, launch
from study.plan import run_index
from study.status import Status, now_iso

RUN_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(_\d+)?$")  # util.new_run_folder's names
ERROR_LINE_CHARS = 300


@dataclass
class Context:
    """What every step needs: the study folder (absolute), the resolved plan, the datasets and the status."""
    study: Path
    plan: dict
    datasets_folder: Path
    status: Status


@dataclass
class Outcome:
    """How a script ended: exit code, wall and CPU (user + system) seconds, its error line (None on success)."""
    rc: int
    seconds: float
    cpu_seconds: float
    error: str | None


@dataclass
class Spent:
    """Wall and CPU seconds of the scripts a run has executed so far."""
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def add(self, out: Outcome) -> Outcome:
        self.seconds += out.seconds
        self.cpu_seconds += out.cpu_seconds
        return out


class RunFailed(Exception):
    """A script of a run failed; the message is its error line."""


def call(script: str, argv: list[str], log: Path) -> Outcome:
    """Run `python <script>.py argv` (study/launcher.py) with its output appended to log; return how it ended.

    Ctrl-C reaches the run too: train.py then stops with its last checkpoint intact; the study waits for it
    before stopping.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n=== {now_iso()} {shlex.join(command_line(script, argv))}\n")
        offset = f.tell()
    rc, cpu = launch(script, argv, log)
    return Outcome(rc, time.monotonic() - start, cpu, None if rc == 0 else error_line(log, offset, rc))


def error_line(log: Path, offset: int, rc: int) -> str:
    """The 'error: ...' line the child printed, else how it ended."""
    with open(log, errors="replace") as f:
        f.seek(offset)
        lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][:ERROR_LINE_CHARS]
    if rc < 0:
        return f"killed by signal {-rc}"
    return f"exit code {rc}: {lines[-1] if lines else 'no output'}"[:ERROR_LINE_CHARS]


def latest_folder(parent: Path, marker: str) -> Path | None:
    """The run folder directly under parent whose `marker` file is the newest (None when there is none)."""
    found = [p for p in parent.iterdir() if (p / marker).is_file()] if parent.is_dir() else []
    return max(found, key=lambda p: (p / marker).stat().st_mtime) if found else None


def remove_dead(parent: Path) -> None:
    """Remove run folders under parent that have neither results.json nor last_model.pth (nothing to keep)."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.is_dir() and RUN_FOLDER.match(p.name) and not any((p / m).is_file()
                                                               for m in ("results.json", "last_model.pth")):
            logging.debug(f"removing {p}: the run stopped before its first checkpoint")
            shutil.rmtree(p)


def rel(ctx: Context, path: Path) -> str:
    return str(path.relative_to(ctx.study))


def train_step(ctx: Context, exp: str, run: dict, spent: Spent) -> Path:
    """Finish the training of a run: skip it when done, continue it when interrupted, else start it.

    Returns the finished run folder; adds its time to spent; raises RunFailed."""
    parent = ctx.study / "runs" / exp / run["key"]
    done = latest_folder(parent, "results.json")
    if done:
        return done
    resumable = latest_folder(parent, "last_model.pth")
    remove_dead(parent)
    if resumable:
        logging.info(f"{exp}/{run['key']}: continuing {rel(ctx, resumable)} from its last checkpoint")
        argv = ["--resume", str(resumable / "last_model.pth"), "--datasets_folder", str(ctx.datasets_folder)]
    else:
        argv = run["train_flags"] + ["--datasets_folder", str(ctx.datasets_folder), "--save_dir", str(parent)]
    out = spent.add(call("train", argv, ctx.study / "logs" / exp / run["key"] / "train.log"))
    done = latest_folder(parent, "results.json")
    if out.rc != 0 or done is None:
        raise RunFailed(out.error or "train.py wrote no results.json")
    return done


def eval_step(ctx: Context, exp: str, run: dict, ev: dict, checkpoints: list[Path], spent: Spent) -> None:
    """Run one eval.py of a run unless its folder has results.json; adds its time to spent; raises RunFailed."""
    parent = ctx.study / "evals" / exp / run["key"] / ev["id"]
    if latest_folder(parent, "results.json"):
        return
    remove_dead(parent)
    argv = [*ev["flags"], "--datasets_folder", str(ctx.datasets_folder), "--resume", *map(str, checkpoints),
            "--save_dir", str(parent)]
    out = spent.add(call("eval", argv, ctx.study / "logs" / exp / run["key"] / f"eval_{ev['id']}.log"))
    if out.rc != 0 or latest_folder(parent, "results.json") is None:
        raise RunFailed(out.error or "eval.py wrote no results.json")


def best_model_of(ctx: Context, run_id: str) -> Path:
    """best_model.pth of a finished training run of the study; RunFailed when it has not finished."""
    exp, key = run_id.split("/")
    folder = latest_folder(ctx.study / "runs" / exp / key, "results.json")
    if folder is None or not (folder / "best_model.pth").is_file():
        raise RunFailed(f"needs the checkpoint of {run_id}, which has not finished")
    return folder / "best_model.pth"


def run_is_done(ctx: Context, exp: str, run: dict) -> bool:
    """Whether the run's training (if any) and every eval have results.json."""
    if run["train_flags"] is not None and latest_folder(ctx.study / "runs" / exp / run["key"], "results.json") is None:
        return False
    return all(latest_folder(ctx.study / "evals" / exp / run["key"] / ev["id"], "results.json")
               for ev in run["evals"]) and all(_trained(ctx, ref) for ref in run["checkpoints"])


def _trained(ctx: Context, run_id: str) -> bool:
    exp, key = run_id.split("/")
    return latest_folder(ctx.study / "runs" / exp / key, "results.json") is not None


def run_one(ctx: Context, run_id: str) -> bool:
    """Execute what is left of one run; record its state in status.json; True when it finished."""
    exp, run = run_index(ctx.plan)[run_id]
    folder = ctx.study / run_folder(exp["name"], run)
    ctx.status.set_run(run_id, "running", rel(ctx, folder))
    spent = Spent()
    try:
        if run["train_flags"] is not None:
            folder = train_step(ctx, exp["name"], run, spent)
            checkpoints = [folder / "best_model.pth"]
        else:
            checkpoints = [best_model_of(ctx, ref) for ref in run["checkpoints"]]
        for ev in run["evals"]:
            eval_step(ctx, exp["name"], run, ev, checkpoints, spent)
    except RunFailed as e:
        ctx.status.set_run(run_id, "failed", rel(ctx, folder), spent.seconds, str(e), spent.cpu_seconds)
        logging.warning(f"{run_id} failed: {e} (log: {rel(ctx, ctx.study / 'logs' / exp['name'] / run['key'])})")
        return False
    except KeyboardInterrupt:
        ctx.status.set_run(run_id, "pending", rel(ctx, folder), spent.seconds, cpu=spent.cpu_seconds)
        raise
    ctx.status.set_run(run_id, "done", rel(ctx, folder), spent.seconds, cpu=spent.cpu_seconds)
    return True


def sync_states(ctx: Context, order: list[str]) -> None:
    """Set every run's state from the folders on disk (done, or pending for anything left to do)."""
    for run_id, (exp, run) in run_index(ctx.plan).items():
        ctx.status.set_kind(run_id, run_kind(run))
        entry = ctx.status.runs[run_id]
        if run_is_done(ctx, exp["name"], run):
            entry["state"] = "done"
        elif entry["state"] != "failed" or run_id in order:
            entry["state"] = "pending"
        entry["folder"] = entry.get("folder") or run_folder(exp["name"], run)
    ctx.status.save()


def run_folder(exp: str, run: dict) -> str:
    """Where a run's results are, relative to the study: its training runs, its evaluations, or (for a reference)
    the referenced training runs."""
    if run["reference"]:
        return f"runs/{run['checkpoint_of']}"
    return f"{'runs' if run['train_flags'] is not None else 'evals'}/{exp}/{run['key']}"


def run_kind(run: dict) -> str:
    """'train', 'eval' (eval-only) or 'reference' (neither: it only names checkpoints for a summary)."""
    return "train" if run["train_flags"] is not None else ("eval" if run["evals"] else "reference")


def run_all(ctx: Context, order: list[str], max_runs: int | None) -> int:
    """Run the runs of `order` that are not done, with a progress line before each; returns how many ran."""
    executed = 0
    for run_id in order:
        if ctx.status.runs[run_id]["state"] == "done":
            continue
        if max_runs is not None and executed >= max_runs:
            logging.info(f"stopping after --max_runs {max_runs}; run the same command again to continue")
            break
        run = run_index(ctx.plan)[run_id][1]
        if run["train_flags"] is None and not run["evals"]:  # a reference: done once its checkpoints are
            run_one(ctx, run_id)
            continue
        evals = ", ".join(ev["id"] for ev in run["evals"])
        what = ("train" + (f", then evaluate: {evals}" if evals else "")) if run["train_flags"] is not None \
            else f"evaluate: {evals}"
        logging.info(ctx.status.progress(order, run_id, what))
        run_one(ctx, run_id)
        executed += 1
    return executed
