"""Checkpoints, run folders and result files."""
from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
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
    """Write last_model.pth (and best_model.pth first when is_best), each atomically."""
    if is_best:
        atomic_save(state, folder / "best_model.pth")
    atomic_save(state, folder / "last_model.pth")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """Load a checkpoint with weights_only=True (no code execution), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass the path of a last_model.pth or best_model.pth")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} was refused by the safe loader ({str(e).splitlines()[0][:120]}); "
                        f"only checkpoints written by this toolkit can be loaded") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is not a readable checkpoint, maybe truncated ({type(e).__name__}); "
                        f"use another checkpoint, e.g. best_model.pth or last_model.pth of the run") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise UserError(f"{path} is not a checkpoint of this toolkit (missing model_state_dict/args)")
    return ckpt


def check_resume_compatible(stored: dict, current: dict) -> None:
    """Refuse to resume when flags that define the run differ from the stored ones."""
    differ = sorted(k for k in current if k not in RESUME_SAFE_KEYS and k in stored and stored[k] != current[k])
    if differ:
        desc = ", ".join(f"--{k} {stored[k]!r} (stored) vs {current[k]!r}" for k in differ[:4])
        raise UserError(f"cannot resume: flags differ from the stored run: {desc}; drop them or start a new run")


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log_args(args: Any, folder: Path) -> None:
    """Log the arguments and store them as args.json in the run folder."""
    logging.info("arguments: " + " ".join(f"--{k} {v}" for k, v in sorted(vars(args).items())))
    write_json(folder / "args.json", vars(args))


def arch_summary(args: dict) -> str:
    """One-line description of the architecture stored in args."""
    return ", ".join(f"{k}={args.get(k)}" for k in ARCH_KEYS)
