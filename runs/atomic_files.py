"""Files written whole or not at all: atomic writes that respect the umask, and atomic checkpoint saves.

Every output of the toolkit (checkpoints, JSON, tables, figures, pictures) goes through atomic_write, so a full disk,
Ctrl-C or SIGTERM never leaves a truncated file or a stray temporary one behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from commons import UserError


class _RecordingWriter:
    """A binary file whose write errors are kept: torch.save reports a failed write (disk full) as an opaque
    '[enforce fail at inline_container.cc]', and PIL/matplotlib may wrap it too; the kept error says why."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.error = raw, None

    def write(self, data: bytes) -> int:
        try:
            return self.raw.write(data)
        except BaseException as e:  # OSError (disk full), KeyboardInterrupt or Terminated inside the writer
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        if name == "fileno":  # hidden: PIL would write to the descriptor itself and lose the OS error
            raise AttributeError(name)
        return getattr(self.raw, name)


def file_mode() -> int:
    """Mode of a newly created file under the current umask (0o666 & ~umask), e.g. 0o644."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], durable: bool = False) -> None:
    """Write path through write(f) into a temporary file of the same folder, renamed over path once complete.

    Nothing partial is ever left: on any failure (disk full, Ctrl-C, SIGTERM) the temporary file is removed, an
    existing file at path is untouched, and the OS error behind a wrapped one (torch, PIL) is raised. The file gets
    the mode of a normally created one (tempfile.mkstemp alone would make it 0o600). An OSError names path.
    durable: fsync the file and the folder, so that a power loss leaves the old or the new file (checkpoints).
    """
    path, prefix = Path(path), f".{Path(path).name}."
    tmp = f = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        with os.fdopen(fd, "wb") as raw:
            f = _RecordingWriter(raw)
            write(f)
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        error = f.error if f is not None and f.error is not None else e
        ours = isinstance(error, OSError) and (error.filename is None or
                                               os.path.basename(error.filename).startswith(prefix))
        if ours:  # name the file asked for, not the temporary one
            raise OSError(error.errno, error.strerror, str(path)) from None
        if error is not e:
            raise error from None
        raise
    if durable:
        _fsync_dir(path.parent)  # make the rename itself durable (power loss)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over path (atomic_write).

    A crash at any moment leaves either the old or the new file, never a partial one.
    """
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save(obj, f), durable=True)
    except (OSError, RuntimeError) as e:  # RuntimeError: torch's zip writer failing without an OS error
        raise UserError(f"could not write {path} ({getattr(e, 'strerror', None) or e}); free disk space or "
                        f"choose another --save_dir; the previous {path.name}, if any, is intact") from e


def _fsync_dir(folder: Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
