"""Checkpoints, run folders and result files."""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from commons import UserError, atomic_save
from parser import ARCH_KEYS, RESUME_SAFE_KEYS

CHECKPOINT_KEYS = ("model_state_dict", "args")


def new_run_folder(save_dir: str, root: str = "logs") -> Path:
    """Create and return logs/<save_dir>/<timestamp>/ (suffixed if it already exists)."""
    base = Path(root) / save_dir / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    folder, i = base, 1
    while folder.exists():
        folder, i = Path(f"{base}_{i}"), i + 1
    folder.mkdir(parents=True)
    return folder


def save_checkpoint(state: dict, folder: Path, is_best: bool) -> None:
    """Write last_model.pth (and best_model.pth first when is_best), each atomically.

    Order matters for resuming: best is written before last, so a crash between the two leaves a last_model.pth
    from before this validation; resuming from it repeats the validation and rewrites the same best_model.pth.
    """
    if is_best:
        atomic_save(state, folder / "best_model.pth")
        _kill_hook()
    atomic_save(state, folder / "last_model.pth")
    _kill_hook()


KILL_HOOK_ENV = "VG_KILL_AFTER_CHECKPOINTS"  # testing hook only: see README, Reliability
_checkpoint_writes = 0


def _kill_hook() -> None:
    """Testing hook: with $VG_KILL_AFTER_CHECKPOINTS=N, SIGKILL this process right after its N-th checkpoint file
    (best_model.pth and last_model.pth writes both count), to test crash recovery without sleeps."""
    global _checkpoint_writes
    _checkpoint_writes += 1
    limit = os.environ.get(KILL_HOOK_ENV)
    if limit and _checkpoint_writes >= int(limit):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


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
    """Write JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({e.strerror or e}); free disk space or choose another "
                        f"--save_dir; the checkpoints of the run are intact") from e


def log_args(args: Any, folder: Path) -> None:
    """Log the arguments and store them as args.json in the run folder."""
    logging.info("arguments: " + " ".join(f"--{k} {v}" for k, v in sorted(vars(args).items())))
    write_json(folder / "args.json", vars(args))


def arch_summary(args: dict) -> str:
    """One-line description of the architecture stored in args."""
    return ", ".join(f"{k}={args.get(k)}" for k in ARCH_KEYS)
