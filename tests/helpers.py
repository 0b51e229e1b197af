"""Helpers shared by the tests: the repository root, tiny training flags, small images, one-line CLI errors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def tiny_train_flags(world: Path, save_dir: str) -> list[str]:
    """train.py flags for a quick run on tiny_world (seconds on 2 cores)."""
    return ["--datasets_folder", str(world), "--dataset_name", "synthetic", "--resize", "32", "32",
            "--pretrain", "none", "--lr", "1e-3", "--train_batch_size", "4", "--negs_num_per_query", "3",
            "--neg_samples_num", "40", "--cache_refresh_rate", "20", "--queries_per_epoch", "40",
            "--epochs_num", "2", "--infer_batch_size", "32", "--num_workers", "0", "--device", "cpu",
            "--save_dir", save_dir]


def write_image(path: Path, size: int | tuple[int, int] = 16, colour: tuple[int, int, int] = (128, 128, 128)) -> None:
    """A solid RGB image of size×size (or W×H) pixels, format from the suffix; parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size) if isinstance(size, int) else size, colour).save(path)


def cli_stop(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture,
             code: int = 2) -> list[str]:
    """Run main through commons.run_cli, as the scripts do; it must stop with `code` (2: a user error), without a
    traceback, in one or two lines (the error, and where the run folder is); returns those lines."""
    from commons import run_cli
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    out = capsys.readouterr()
    lines = [ln for ln in (line.split("\r")[-1].strip() for line in out.err.split("\n")) if ln]  # \r: progress bars
    assert stop.value.code == code and "Traceback" not in out.err + out.out and 1 <= len(lines) <= 2, out.err
    return lines
