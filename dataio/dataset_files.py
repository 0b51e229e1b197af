"""The image files of a dataset folder: listing (symbolic links followed), start-up check, duplicates.

Nothing is dropped without a word: files that are not images are counted in the log, unreadable images stop the run
(or are skipped with --skip_corrupt, listed on the console), and duplicate images are reported.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

from commons import UserError
from dataio.images import OVERSIZE, image_problem, oversize_advice

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
MAX_LISTED = 20  # unreadable files named in the error message (all of them are in debug.log)
CONSOLE_LISTED = 10  # unreadable files listed on the console with --skip_corrupt, and duplicate groups
HEAD_BYTES = 1 << 16  # bytes hashed first when looking for identical files (full hash only on a match)
CHECK_THREADS = 8  # file checks are file-system latency bound (network drives)


def _walk_files(folder: Path) -> Iterator[Path]:
    """Every file below folder, following symbolic links to folders; each real folder is entered once, so a link
    loop (or a second link to the same data) is not followed again."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            logging.info(f"{root} leads to {real}, already listed: not listed again")
            dirs[:] = []
            continue
        seen.add(real)
        yield from (Path(root) / name for name in files)


def list_images(folder: Path) -> list[Path]:
    """Sorted image files below folder (recursively, symbolic links followed); other files are counted in the log."""
    images, ignored = [], Counter()
    for p in _walk_files(Path(folder)):
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file():
            images.append(p)
        else:
            kind = "hidden" if p.name.startswith(".") else "broken link" if not p.exists() else suffix or "no suffix"
            ignored[kind] += 1
    if ignored:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(ignored.items(), key=lambda kn: (-kn[1], kn[0])))
        logging.info(f"{folder}: ignored {sum(ignored.values())} files that are not images ({kinds}); images are "
                     f"{'/'.join(IMAGE_EXTENSIONS)}")
    return sorted(images)


def _digest(path: Path, limit: int | None) -> str:
    """blake2b of the first `limit` bytes of path (all of it when limit is None)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if limit is not None:
            h.update(f.read(limit))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _groups(paths: Sequence[Path], key: Callable[[Path], object], pool: ThreadPoolExecutor) -> list[list[Path]]:
    """Groups (more than one member) of paths with equal key(path), computed in the pool."""
    found: dict[object, list[Path]] = defaultdict(list)
    for p, k in zip(paths, pool.map(key, paths)):
        found[k].append(p)
    return [g for g in found.values() if len(g) > 1]


def find_duplicates(paths: Sequence[Path]) -> dict[str, list[list[Path]]]:
    """Groups of files with the same name in different folders, and of files with identical bytes.

    Identical bytes: equal sizes first, then equal hashes of the first HEAD_BYTES, then of the whole files; so
    only files that share a size are read.
    """
    names: dict[str, list[Path]] = defaultdict(list)
    for p in paths:
        names[p.name].append(p)
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        same = _groups(paths, lambda p: p.stat().st_size, pool)
        for limit in (HEAD_BYTES, None):
            same = [g2 for g in same for g2 in _groups(g, functools.partial(_digest, limit=limit), pool)]
    return {"same file name in two folders": [g for g in names.values() if len({p.parent for p in g}) > 1],
            "identical bytes": same}


def report_duplicates(paths: Sequence[Path], folder: Path) -> dict[str, list[list[Path]]]:
    """Warn about duplicate images below folder (they are all kept); returns find_duplicates' groups."""
    found = find_duplicates(paths)
    parts = [f"{kind}: {len(groups)} groups, e.g. {' = '.join(map(str, groups[0]))}"
             for kind, groups in found.items() if groups]
    if parts:
        logging.warning(f"duplicate images in {folder}: {'; '.join(parts)}; all are used: remove the copies if "
                        f"they are unintended")
        for kind, groups in found.items():
            for g in groups:
                logging.debug(f"duplicate ({kind}): {' = '.join(map(str, g))}")
    return found


def drop_unreadable(groups: list[list[Path]], folder: Path, skip_corrupt: bool) -> list[list[Path]]:
    """Check every image once; UserError naming the unreadable ones, or (skip_corrupt) drop them with a warning that
    lists them on the console (the first CONSOLE_LISTED; all in debug.log)."""
    paths = [p for g in groups for p in g]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        problems = dict(zip(paths, pool.map(image_problem, paths)))
    bad = {p: why for p, why in problems.items() if why is not None}
    if not bad:
        return groups
    for p, why in bad.items():
        logging.debug(f"unreadable image {p} ({why})")
    if not skip_corrupt:
        raise UnreadableImagesError(bad)
    listed = "".join(f"\n  {p} ({why})" for p, why in list(bad.items())[:CONSOLE_LISTED])
    more = f"\n  ... and {len(bad) - CONSOLE_LISTED} more (all in debug.log)" if len(bad) > CONSOLE_LISTED else ""
    logging.warning(f"--skip_corrupt: skipping {len(bad)} unreadable images of {folder}:{listed}{more}")
    return [[p for p in g if p not in bad] for g in groups]


class UnreadableImagesError(UserError):
    """Unreadable image files (path → problem); the message names up to MAX_LISTED of each kind and the fix."""

    def __init__(self, problems: dict[Path, str]):
        self.problems = dict(problems)
        self.paths = list(problems)
        big = [p for p, why in problems.items() if why.startswith(OVERSIZE)]
        corrupt = [p for p in problems if p not in set(big)]
        parts = []
        if corrupt:
            parts.append(f"{len(corrupt)} corrupt or unreadable images: {_names(corrupt)}; replace or delete them, "
                         f"or pass --skip_corrupt to skip them")
        if big:
            parts.append(f"{len(big)} images {OVERSIZE} ({problems[big[0]][len(OVERSIZE) + 2:]}): {_names(big)}; "
                         f"{oversize_advice([problems[p] for p in big])}, or pass --skip_corrupt to skip them")
        super().__init__("; ".join(parts))


def _names(paths: list[Path]) -> str:
    more = f" and {len(paths) - MAX_LISTED} more (all in debug.log)" if len(paths) > MAX_LISTED else ""
    return ", ".join(map(str, paths[:MAX_LISTED])) + more


def build_all(*factories: Callable[[], object]) -> list:
    """Call each dataset factory; the unreadable images of all of them are reported in one error."""
    built, bad = [], {}
    for make in factories:
        try:
            built.append(make())
        except UnreadableImagesError as e:
            bad.update(e.problems)
    if bad:
        raise UnreadableImagesError(bad)
    return built
