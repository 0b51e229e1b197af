"""Helpers shared by the tests: the repository root, tiny training flags, small images, one-line CLI errors, and a
simulated full disk (writes sent to /dev/full: ENOSPC) or read-only folder (EROFS)."""
from __future__ import annotations

import builtins
import errno
import io
import os
import tempfile
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


HEADLINES = {2: "error: ", 130: "interrupted (Ctrl-C)", 143: "terminated (SIGTERM)"}  # commons.run_cli's exit codes


def cli_stop(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture,
             code: int = 2) -> list[str]:
    """Run main through commons.run_cli, as the scripts do; it must stop with `code` (2: a user error, 130: Ctrl-C),
    without a traceback, in one line (`error: ...`, or `interrupted (Ctrl-C)`), followed, only where a training run
    has started, by a second line `run folder: ...`; returns those lines."""
    from commons import run_cli
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    out = capsys.readouterr()
    lines = [ln for ln in (line.split("\r")[-1].strip() for line in out.err.split("\n")) if ln]  # \r: progress bars
    assert stop.value.code == code and "Traceback" not in out.err + out.out and 1 <= len(lines) <= 2, out.err
    assert lines[0].startswith(HEADLINES[code]) and all(ln.startswith("run folder: ") for ln in lines[1:]), out.err
    return lines


def fill_disk(mp: pytest.MonkeyPatch, part: str) -> None:
    """Writes of files whose name contains `part` fail with ENOSPC: atomic writes (tempfile.mkstemp) and open()."""
    real_mkstemp, real_open = tempfile.mkstemp, builtins.open

    def mkstemp(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        if part in os.path.basename(tmp):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax") and part in os.path.basename(file):
            real_open(file, "wb").close()  # the file exists, as after a real open; its writer removes it on failure
            return real_open("/dev/full", mode.replace("x", "w"), *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    for module, name, fake in ((tempfile, "mkstemp", mkstemp), (builtins, "open", open_), (io, "open", open_)):
        mp.setattr(module, name, fake)


def read_only(mp: pytest.MonkeyPatch, under: str) -> None:
    """os.mkdir below `under` fails with EROFS, as on a read-only file system."""
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if os.fspath(path).startswith(under):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real(path, *args, **kwargs)
    mp.setattr(os, "mkdir", mkdir)
