"""The database index folder: encoded once, reused, and updated incrementally when the database changes.

Folder content (INDEX_FORMAT 1):
  * descriptors.npy - N×D float16 descriptors (np.lib.format, memory-mapped when read);
  * index.faiss     - the faiss index of `indexing.build_index` (--index flat|ivfpq|hnsw), row i = descriptor i;
  * files.json      - N rows [path relative to the database folder, size in bytes, mtime in ns];
  * positions.npy   - N×2 float64 UTM easting, northing of the rows (from the file names);
  * meta.json       - checkpoint path and sha256, image size, descriptor size, index kind, count; written last,
                      and removed first when the folder changes, so a crash mid-update leaves no valid-looking index.

An update encodes only the database files that are new or changed (size or mtime); removed files are dropped.
With only additions, the new vectors are added to the stored faiss index; after a removal or with another
--index kind it is rebuilt from the stored descriptors (no encoding). Another checkpoint (by content hash) or
image size rebuilds everything, with one line saying why.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# retrieval.indexing first: it sets faiss's OpenMP policy
from retrieval.indexing import CHUNK_ROWS, DescriptorWriter, build_index, open_descriptors
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from runs.atomic_files import atomic_write
from commons import UserError  # noqa: E402
from datasets_ws import drop_unreadable, list_images  # noqa: E402
from localization.geo import Positions, positions_of  # noqa: E402
from localization.photos import Encoder  # noqa: E402

INDEX_FORMAT = 1
META, FILES, DESCRIPTORS, FAISS, POSITIONS = "meta.json", "files.json", "descriptors.npy", "index.faiss", \
    "positions.npy"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class IndexKey:
    """What the stored descriptors depend on: the checkpoint (by content) and the image size."""
    checkpoint: str
    sha256: str
    image_size: tuple[int, int]


@dataclass
class DatabaseIndex:
    """A ready database: row i is file files[i] (relative to root) at positions row i, descriptor row i."""
    folder: Path
    root: Path
    files: list[str]
    positions: Positions
    descriptors: np.ndarray  # N×D float16, memory-mapped
    index: faiss.Index
    encoded: int  # database images encoded by this call
    seconds: float  # time this call spent updating the folder (0 when reused as is)

    def paths(self, rows: np.ndarray) -> list[Path]:
        """Absolute paths of the given rows."""
        return [self.root / self.files[i] for i in rows]


def scan_database(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of the database images, sorted; UserError when there are none."""
    if not root.is_dir():
        raise UserError(f"database folder {root} does not exist; pass --database <folder of geo-tagged images>")
    stamps = {}
    for p in list_images(root):
        st = p.stat()
        stamps[p.relative_to(root).as_posix()] = (int(st.st_size), int(st.st_mtime_ns))
    if not stamps:
        raise UserError(f"database folder {root} holds no .jpg/.jpeg/.png images; pass --database <folder of "
                        f"images named '@<easting>@<northing>@...@.jpg'>")
    return stamps


@dataclass
class _Stored:
    meta: dict
    files: list[list]  # [relative path, size, mtime_ns]
    descriptors: np.ndarray  # N×D float16 memmap
    index: faiss.Index | None  # None when --index asks for another kind


def _read_stored(folder: Path, key: IndexKey, kind: str) -> tuple[_Stored | None, str]:
    """The stored index, or None and the one-line reason why it cannot be used."""
    if not (folder / META).is_file():
        return None, f"no index in {folder} yet: building it"
    try:
        meta = json.loads((folder / META).read_text())
        files = json.loads((folder / FILES).read_text())
        stored_size = tuple(meta["image_size"])
        if meta["format"] != INDEX_FORMAT:
            return None, f"index {folder} has format {meta['format']}, not {INDEX_FORMAT}; rebuilding it"
        if meta["checkpoint_sha256"] != key.sha256:
            return None, (f"index {folder} was built with another model ({meta['checkpoint']}, sha256 "
                          f"{meta['checkpoint_sha256'][:12]}) than {key.checkpoint} ({key.sha256[:12]}); rebuilding it")
        if stored_size != key.image_size:
            return None, (f"index {folder} was built at {stored_size[0]}×{stored_size[1]} px, not "
                          f"{key.image_size[0]}×{key.image_size[1]}; rebuilding it")
        descriptors = open_descriptors(folder / DESCRIPTORS)
        index = faiss.read_index(str(folder / FAISS)) if meta["index"] == kind else None
        counts = {len(files), len(descriptors), meta["count"], *([index.ntotal] if index is not None else [])}
        if len(counts) != 1:
            return None, f"index {folder} is inconsistent (row counts {sorted(counts)}); rebuilding it"
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, UserError) as e:
        return None, f"index {folder} is unreadable ({type(e).__name__}: {str(e)[:80]}); rebuilding it"
    return _Stored(meta, files, descriptors, index), ""


def open_index(folder: Path, root: Path, key: IndexKey, kind: str, encoder: Encoder,
               default_zone: tuple[int, str] | None, skip_corrupt: bool) -> DatabaseIndex:
    """The up-to-date index of database folder `root` in `folder`: reused, updated or (re)built as needed."""
    current = scan_database(root)
    stored, reason = _read_stored(folder, key, kind)
    if stored is None:
        (logging.info if reason.startswith("no index") else logging.warning)(reason)
    old = stored.files if stored else []
    keep = np.array([i for i, (rel, size, mtime) in enumerate(old) if current.get(rel) == (size, mtime)],
                    dtype=np.int64)
    kept = {old[i][0] for i in keep}
    new = [rel for rel in current if rel not in kept]
    if new:
        (readable,) = drop_unreadable([[root / rel for rel in new]], root, skip_corrupt)
        new = [p.relative_to(root).as_posix() for p in readable]
    files = [old[i][0] for i in keep] + new
    if not files:
        raise UserError(f"no readable image in database folder {root}; replace the unreadable files")
    positions = positions_of([root / rel for rel in files], default_zone)  # UserError: names without UTM
    if stored is not None and not new and len(keep) == len(old) and stored.index is not None:
        logging.info(f"index {folder}: {len(files)} database images, up to date (nothing to encode)")
        return DatabaseIndex(folder, root, files, positions, stored.descriptors, stored.index, 0, 0.0)
    if stored is not None and stored.index is None:
        logging.info(f"index {folder} holds a {stored.meta['index']} faiss index, not {kind}: rebuilding it from the "
                     f"stored descriptors")
    if stored is not None:
        logging.info(f"index {folder}: {len(keep)} database images kept, {len(old) - len(keep)} removed or "
                     f"changed, {len(new)} to encode")
    start, start_cpu, before = time.perf_counter(), time.process_time(), encoder.encoded
    index = _write(folder, stored, keep, [root / rel for rel in new], encoder, kind)
    stamps = [[rel, *current[rel]] for rel in files]
    _finish(folder, stamps, positions, key, kind, index, encoder.cfg.precision, root)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    encoded = encoder.encoded - before
    logging.info(f"index {folder}: {len(files)} database images; encoded {encoded} in {seconds:.1f} s ({cpu:.1f} s "
                 f"of CPU)" + (f": {encoded / seconds:.1f} images/s, index writing included" if encoded else ""))
    return DatabaseIndex(folder, root, files, positions, open_descriptors(folder / DESCRIPTORS), index, encoded,
                         seconds)


def _kept_blocks(stored: _Stored | None, keep: np.ndarray) -> Iterator[np.ndarray]:
    """The kept stored descriptors, ≤ CHUNK_ROWS × D float16 at a time."""
    for start in range(0, len(keep), CHUNK_ROWS):
        yield np.asarray(stored.descriptors[keep[start:start + CHUNK_ROWS]])


def _write(folder: Path, stored: _Stored | None, keep: np.ndarray, new_paths: list[Path], encoder: Encoder,
           kind: str) -> faiss.Index:
    """Write descriptors (kept rows, then the new ones encoded) and return the faiss index over them.

    Appending (nothing removed, same kind) adds the new float32 descriptors to the stored faiss index. Otherwise a
    new flat/hnsw index gets the kept rows and the new float32 ones as they come; ivfpq is trained at the end on
    the written file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)  # invalid until meta.json is written again
    append = stored is not None and stored.index is not None and len(keep) == len(stored.files)
    chunks = encoder.chunks(new_paths, "index: encoding database")
    first = next(chunks, None)
    dim = stored.descriptors.shape[1] if stored is not None else first.shape[1]
    tmp = folder / f".{DESCRIPTORS}.tmp.npy"
    index = stored.index if append else None
    with DescriptorWriter(tmp, len(keep) + len(new_paths), dim, "float16") as writer:
        for block in _kept_blocks(stored, keep):
            writer.write(block)
            if not append and kind != "ivfpq":
                index = _add(index, block, kind)
        for feats in itertools.chain([first] if first is not None else [], chunks):
            writer.write(feats)
            if append or kind != "ivfpq":
                index = _add(index, feats, kind)
    if index is None:  # ivfpq, rebuilt: trained on all the descriptors
        index = build_index(open_descriptors(tmp), kind)
    os.replace(tmp, folder / DESCRIPTORS)
    return index


def _add(index: faiss.Index | None, block: np.ndarray, kind: str) -> faiss.Index:
    """block (B×D) added to index; a new index of `kind` over block when index is None."""
    if index is None:
        return build_index(block, kind)
    index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def _replace_text(path: Path, text: str) -> None:
    """Write text to path whole or not at all."""
    atomic_write(path, lambda f: f.write(text.encode()))


def _finish(folder: Path, stamps: list[list], positions: Positions, key: IndexKey, kind: str, index: faiss.Index,
            precision: str, root: Path) -> None:
    """Write the faiss index, files and positions, then meta.json last."""
    tmp = folder / f".{FAISS}.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, folder / FAISS)
    _replace_text(folder / FILES, json.dumps(stamps))
    atomic_write(folder / POSITIONS, lambda f: np.save(f, positions.utm))
    meta = {"format": INDEX_FORMAT, "checkpoint": key.checkpoint, "checkpoint_sha256": key.sha256,
            "image_size": list(key.image_size), "dim": int(index.d), "index": kind, "count": len(stamps),
            "precision": precision, "database": str(root.resolve()), "descriptors_dtype": "float16",
            "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
    _replace_text(folder / META, json.dumps(meta, indent=2))
