"""Checkpoints, run folders and result files."""
from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import pickle
import platform
import shlex
import shutil
import signal
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from runs.atomic_files import atomic_save, atomic_write
from commons import UserError
from cli.arch import ARCH_DEFAULTS

RESUME_SAFE_KEYS = ("epochs_num", "num_workers", "device", "infer_batch_size", "save_dir", "resume",  # may change
                    "patience", "datasets_folder", "skip_corrupt", "log_level", "init_from", "precision_requested",
                    "pixel_cache")

CHECKPOINT_KEYS = ("model_state_dict", "args")
LAST, BEST = "last_model.pth", "best_model.pth"


class NonFiniteError(UserError):
    """The loss or the weights became NaN/inf: resuming would repeat the same steps, so the stop hint says how to
    start again from the last good weights instead."""


def new_run_folder(save_dir: str, root: str = "logs") -> Path:
    """Create and return logs/<save_dir>/<timestamp>/ (suffixed if it already exists).

    Call it once the inputs are valid: a failed invocation leaves no folder behind.
    """
    base = Path(root) / save_dir / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    folder, i = base, 1
    try:
        while True:
            try:
                folder.mkdir(parents=True)
                return folder
            except FileExistsError:
                if not folder.parent.is_dir():
                    raise
                folder, i = Path(f"{base}_{i}"), i + 1
    except OSError as e:
        raise UserError(f"cannot create the run folder {folder} ({e.strerror}); choose another --save_dir "
                        f"(runs go to {root}/<save_dir>/<timestamp>/) or make {root}/ writable") from None


def save_checkpoint(state: dict, folder: Path, is_best: bool) -> None:
    """Write last_model.pth (and best_model.pth first when is_best), each atomically.

    Order matters for resuming: best is written before last, so a crash between the two leaves a last_model.pth
    from before this validation; resuming from it repeats the validation and rewrites the same best_model.pth.
    """
    if is_best:
        atomic_save(state, folder / BEST)
        _kill_hook()
    atomic_save(state, folder / LAST)
    _kill_hook()


KILL_HOOK_ENV, KILL_SIGNAL_ENV = "VG_KILL_AFTER_CHECKPOINTS", "VG_KILL_SIGNAL"  # testing hook: README, Reliability
_checkpoint_writes = 0


def _kill_hook() -> None:
    """Testing hook: with $VG_KILL_AFTER_CHECKPOINTS=N, send this process SIGKILL (or $VG_KILL_SIGNAL, e.g. TERM) right
    after its N-th checkpoint file (best_model.pth and last_model.pth writes both count), to test crash recovery and
    pre-emption without sleeps."""
    global _checkpoint_writes
    _checkpoint_writes += 1
    limit = os.environ.get(KILL_HOOK_ENV)
    if limit and _checkpoint_writes >= int(limit):
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get(KILL_SIGNAL_ENV, 'KILL')}", signal.SIGTERM))


def check_resumable(path: str | Path | None) -> None:
    """Refuse to continue a run from its best_model.pth (--resume path): that would rewind it to the best epoch and
    overwrite the newer last_model.pth of the run."""
    p = Path(path or "")
    if p.name == BEST:
        raise UserError(f"{p} is the best model, not the state to continue from: resuming it would rewind the run "
                        f"to that epoch; pass {p.with_name(LAST)}, or start a new run from its weights with "
                        f"--init_from {p}")


def resume_folder(checkpoint: str | Path) -> Path | None:
    """The run folder a --resume checkpoint continues in: its own folder when it is the last_model.pth of a
    train.py run folder (args.json beside it); None for a checkpoint copied elsewhere, which gets a new folder."""
    path = Path(checkpoint)
    return path.parent if path.name == LAST and (path.parent / "args.json").is_file() else None


def remove_orphan_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes cut short by SIGKILL (.last_model.pth.*.tmp)."""
    orphans = [p for name in (LAST, BEST) for p in folder.glob(f".{name}.*.tmp")]
    for p in orphans:
        p.unlink(missing_ok=True)
    if orphans:
        logging.info(f"removed {len(orphans)} temporary files of interrupted checkpoint writes in {folder}")
    return orphans


def continue_from(checkpoint: Path, folder: Path, best_recall: float) -> None:
    """Resuming `checkpoint` in the run folder `folder`: remove the temporary files that a killed run left beside the
    checkpoint; a checkpoint copied out of its run folder (folder is a new one) brings the best_model.pth beside it
    when that is the run's best (same best R@5), so that the final test finds it."""
    remove_orphan_temporaries(checkpoint.parent)
    best = checkpoint.with_name(BEST)
    if folder == checkpoint.parent or best_recall < 0 or not best.is_file():
        return
    if load_checkpoint(best).get("train_state", {}).get("best_recall") == best_recall:
        with open(best, "rb") as src:
            atomic_write(folder / BEST, lambda f: shutil.copyfileobj(src, f), durable=True)
        logging.info(f"copied {best}, the best model of the run so far, to {folder}")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """Load a checkpoint with weights_only=True (no code execution), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass the path of a last_model.pth or best_model.pth")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} was refused by the safe loader ({_refusal_reason(e)}); it is not a checkpoint "
                        f"of this toolkit or holds code; load only last_model.pth/best_model.pth files") from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, KeyError...: not a (complete) torch file
        raise UserError(f"{path} is not a readable checkpoint, maybe truncated ({type(e).__name__}); "
                        f"use another checkpoint, e.g. best_model.pth or last_model.pth of the run") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise UserError(f"{path} is not a checkpoint of this toolkit (missing model_state_dict/args); "
                        f"pass a last_model.pth or best_model.pth written by train.py")
    return ckpt


def _refusal_reason(e: Exception) -> str:
    """The informative line of torch's weights_only refusal (e.g. 'unsupported GLOBAL posix.system')."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    return (lines[0] if lines else type(e).__name__)[:120]


def check_resume_compatible(stored: dict, current: dict) -> None:
    """Refuse to resume when flags that define the run differ from the stored ones."""
    differ = sorted(k for k in current if k not in RESUME_SAFE_KEYS and k in stored and stored[k] != current[k])
    if differ:
        desc = ", ".join(f"--{k} {stored[k]!r} (stored) vs {current[k]!r}" for k in differ[:4])
        raise UserError(f"cannot resume: flags differ from the stored run: {desc}; drop them or start a new run")


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (never a truncated file), fsynced; an OSError names path (commons.run_cli's line)."""
    text = json.dumps(obj, indent=2, default=str).encode()
    atomic_write(path, lambda f: f.write(text), durable=True)


LOGGED_PACKAGES = ("torch", "torchvision", "numpy", "faiss-cpu", "Pillow", "scikit-learn")  # results depend on them


def library_versions() -> dict[str, str]:
    """Python's and the installed versions of the packages a run's numbers depend on (exact resume needs the same)."""
    versions = {"python": platform.python_version()}
    for name in LOGGED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def log_args(args: Any, folder: Path) -> None:
    """Log the arguments and the library versions (info.log), and store the arguments as args.json."""
    logging.info("arguments: " + " ".join(f"--{k} {v}" for k, v in sorted(vars(args).items())))
    logging.info("versions: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()))
    write_json(folder / "args.json", vars(args))


def arch_summary(args: dict) -> str:
    """One-line description of the architecture stored in args."""
    return ", ".join(f"{k}={args.get(k)}" for k in ARCH_DEFAULTS)


def check_finite_radii(**radii: float | Sequence[float] | None) -> None:
    """Refuse success radii (metres) that are not finite: every retrieved image would count as correct."""
    for flag, values in radii.items():
        for v in [] if values is None else values if isinstance(values, (list, tuple)) else [values]:
            if not math.isfinite(v):
                raise UserError(f"--{flag} {v} counts every retrieved image as correct, so every recall would be "
                                f"100; give a finite radius in metres, e.g. 25")


def check_recall_values(recall_values: Sequence[int], datasets: Sequence[Any]) -> None:
    """Refuse an N of recall@N above a database size: every query with a positive would count as found."""
    for ds in datasets:
        above = sorted(n for n in recall_values if n > ds.database_num)
        if above:
            raise UserError(f"--recall_values {above[0]} exceeds the {ds.database_num} database images of "
                            f"{ds.dataset_name} {ds.split}: recall@{above[0]} would count every query with a positive "
                            f"as found; use values up to {ds.database_num}")


def flags_command(launcher: str, args: dict, defaults: dict, **changes: Any) -> str:
    """launcher followed by the flags of args (those of the parser: keys of defaults) that differ from defaults, then
    changes (None drops a flag)."""
    tokens = []
    for k, v in {**{k: v for k, v in args.items() if k in defaults and defaults[k] != v}, **changes}.items():
        if v is None or v is False:
            continue
        tokens.append(f"--{k}")
        if v is not True:
            tokens += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
    return f"{launcher} {shlex.join(tokens)}"


def train_stop_hint(folder: Path, args: Any, argv: list[str], world_size: int | None,
                    defaults: dict) -> Callable[[BaseException], str]:
    """The second line of every early stop of train.py (error, Ctrl-C, SIGTERM, non-finite loss): the run folder
    and the exact command that continues the run, or, when there is nothing to continue, what to run instead.

    argv: the arguments this process was started with; world_size: the number of processes under torchrun;
    defaults: train.py's defaults (flags equal to them are left out of the suggested command).
    """
    launcher = f"torchrun --nproc_per_node {world_size} train.py" if world_size else "python train.py"
    command, last = f"{launcher} {shlex.join(argv)}", folder / LAST

    def hint(exc: BaseException) -> str:
        where = f"run folder: {folder}; "
        if isinstance(exc, NonFiniteError):
            lower = flags_command(launcher, vars(args), defaults, resume=None,
                                  lr=f"{args.lr / 10:g}", init_from=str(last) if last.is_file() else args.init_from)
            kept = f"{last} holds the last good weights; " if last.is_file() else "no checkpoint was written; "
            return f"{where}{kept}resuming would repeat the same steps; start anew with a lower --lr: {lower}"
        if last.is_file():
            return f"{where}its {LAST} is intact; continue with: {launcher} --resume {shlex.quote(str(last))}"
        if args.resume:
            return (f"{where}no checkpoint written in it yet; continue from the one resumed: "
                    f"{launcher} --resume {shlex.quote(args.resume)}")
        return (f"{where}no checkpoint yet (the first is written after the first cache refresh), nothing to "
                f"resume; start again with: {command}")
    return hint
