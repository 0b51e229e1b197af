"""Decoded-pixel cache: the uint8 pixels of a list of images at one size in one memory-mapped file, built once and
reused across mining refreshes, epochs and runs, instead of decoding every JPEG each time (issue 17).

In the cache folder, per (list of paths, size):
  pixels_<H>x<W>_<key>.u8    N×H×W×3 uint8, image i as dataio.images.load_image(path i, (H, W)) gives it,
                             channels last (the memory layout of a decoded image; read(i) is its 3×H×W view)
  pixels_<H>x<W>_<key>.json  format, size, the paths and each file's (mtime_ns, bytes) when it was decoded
The cache is used only when the sidecar matches: same paths in the same order, same size, every file unchanged;
otherwise it is rebuilt. A build writes a temporary file and renames it into place, and removes the old sidecar
first and writes the new one (also by rename) last: an interrupted build never leaves a cache that looks valid.
Builds of one cache are serialized by a lock file, so concurrent processes (DDP ranks) build it once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from commons import UserError
from dataio.images import load_image

FORMAT = 1  # bump when the file layout or the decoding changes: older caches are then rebuilt


def file_stats(paths: list[Path]) -> list[list[int]]:
    """[mtime_ns, bytes] of each file: what says it changed since the cache was built."""
    return [[(st := os.stat(p)).st_mtime_ns, st.st_size] for p in paths]


def _write_atomic(path: Path, write) -> None:
    """write(file object) into a temporary file beside path, flushed to disk, then renamed over path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: no partial file stays behind
        os.unlink(tmp)
        raise


class PixelCache:
    """read(i) → uint8 3×H×W of image i of `paths` at `size` (H, W), from the cache in `folder` (built if missing
    or stale)."""

    def __init__(self, paths: list[Path], size: tuple[int, int], folder: str | Path):
        self.paths, self.size, self.folder = [Path(os.path.abspath(p)) for p in paths], tuple(size), Path(folder)
        h, w = self.size
        key = hashlib.sha256(json.dumps([FORMAT, [h, w], [str(p) for p in self.paths]]).encode()).hexdigest()[:16]
        self.data_path = self.folder / f"pixels_{h}x{w}_{key}.u8"
        self.meta_path = self.data_path.with_suffix(".json")
        self.shape = (len(self.paths), h, w, 3)
        self._pixels: np.memmap | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / f".{self.data_path.stem}.lock", "w")
        except OSError as e:
            raise UserError(f"pixel cache folder {self.folder} is not usable ({e}); choose another folder") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process building this cache: wait, then reuse it
            self.built = not self.valid()
            if self.built:
                self.build()

    def _meta(self, stats: list[list[int]]) -> dict:
        return {"format": FORMAT, "size": list(self.size), "count": len(self.paths),
                "paths": [str(p) for p in self.paths], "stats": stats}

    def valid(self) -> bool:
        """Whether the cache on disk holds exactly these files, unchanged, at this size."""
        try:
            meta = json.loads(self.meta_path.read_text())
            return (self.data_path.stat().st_size == int(np.prod(self.shape))
                    and meta == self._meta(file_stats(self.paths)))
        except (OSError, ValueError):  # missing, unreadable, not JSON: build it
            return False

    def build(self) -> None:
        """Decode every image once into the cache (the old sidecar goes first, the new one comes last)."""
        need, free = int(np.prod(self.shape)), shutil.disk_usage(self.folder).free
        if need > free:
            raise UserError(f"the pixel cache of {len(self.paths)} images at {self.size[0]}x{self.size[1]} needs "
                            f"{need / 1e9:.1f} GB in {self.folder}, which has {free / 1e9:.1f} GB free; free "
                            f"space or choose another folder")
        logging.info(f"building the pixel cache of {len(self.paths)} images at {self.size[0]}x{self.size[1]} "
                     f"({need / 1e9:.2f} GB): {self.data_path}")
        self.meta_path.unlink(missing_ok=True)
        stats: list[list[int]] = []

        def write_pixels(f) -> None:
            for p in tqdm(self.paths, desc="pixel cache", ncols=100, leave=False, disable=len(self.paths) < 100):
                stats.extend(file_stats([p]))  # before decoding: a change during the build shows later
                f.write(np.ascontiguousarray(load_image(p, self.size).permute(1, 2, 0).numpy()))
        _write_atomic(self.data_path, write_pixels)
        _write_atomic(self.meta_path, lambda f: f.write(json.dumps(self._meta(stats)).encode()))

    @property
    def pixels(self) -> np.memmap:
        if self._pixels is None:  # opened on first use, in each DataLoader worker
            self._pixels = np.memmap(self.data_path, np.uint8, "r", shape=self.shape)
        return self._pixels

    def __getstate__(self) -> dict:  # pickled to spawned workers without the mapping (np.memmap would copy it all)
        return {**self.__dict__, "_pixels": None}

    def read(self, index: int) -> torch.Tensor:
        """Image index as uint8 3×H×W (a copy: the caller may change it)."""
        return torch.from_numpy(np.array(self.pixels[index])).permute(2, 0, 1)

    def __len__(self) -> int:
        return len(self.paths)
