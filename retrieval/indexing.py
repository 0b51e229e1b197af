"""Nearest-neighbour search over large descriptor databases with faiss, and on-disk descriptor storage.

Index kinds:
  * "flat"  - exact squared-L2 search (IndexFlatL2), float32 copy of the database.
  * "ivfpq" - inverted file + 4-bit fast-scan product quantization for a shortlist, re-ranked against the
              vectors stored in float16 (IndexRefine). Approximate; ~D/8 + 2*D bytes per vector.
  * "hnsw"  - HNSW graph over float32 (or float16 for big databases) vectors. Approximate.

Distances returned by `search` are squared L2 for every kind. Descriptors are stored as .npy files
(np.lib.format), so `np.load(path, mmap_mode="r")` works and databases larger than RAM stay on disk.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

# faiss's OpenMP threads busy-wait between parallel regions by default; on a shared, oversubscribed CPU that
# slows IVF-PQ training many times over. Takes effect only if faiss is not yet imported; an explicit user setting
# wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import faiss  # noqa: E402
import numpy as np

from commons import UserError

INDEX_KINDS = ("flat", "ivfpq", "hnsw")
CHUNK_ROWS = 32768  # rows converted to float32 at a time when adding / sampling a (memmapped) database
TRAIN_SEED = 123  # seed for the IVF training sample (faiss k-means has its own fixed seed)


def default_params(kind: str, n: int, d: int) -> dict[str, Any]:
    """Defaults of `build_index` for a database of n vectors of dimension d (tuned at 1M x 256-D).

    ivfpq: nlist ~ sqrt(N) (power of two, >= 39 training points per list), PQ with D/4 4-bit sub-quantizers
    (D/8 bytes/vector, fast-scan), nprobe = nlist/8 clipped to [8, 128], shortlist of k*k_factor (k_factor
    32) re-ranked against float16 copies of the vectors. hnsw: M=32, efConstruction=40, efSearch=128
    (256 from 50k vectors on); float16 storage when the float32 vectors would exceed 1 GiB.
    """
    _check_kind(kind)
    if kind == "flat":
        return {}
    if kind == "ivfpq":
        nlist = 2 ** max(2, round(math.log2(math.sqrt(max(n, 1)))))
        while nlist > 4 and nlist * 39 > n:
            nlist //= 2
        m = d // 4 if d % 4 == 0 else d  # 4 dims per 4-bit sub-quantizer
        return {"nlist": nlist, "m": m, "nbits": 4, "nprobe": int(min(128, max(8, nlist // 8))),
                "k_factor": 32, "refine": "float16", "n_train": min(n, 64 * nlist), "seed": TRAIN_SEED}
    storage = "float16" if n * d * 4 > 2 ** 30 else "float32"
    return {"M": 32, "ef_construction": 40, "ef_search": 128 if n < 50_000 else 256, "storage": storage}


def build_index(database: np.ndarray, kind: str = "flat", **params: Any) -> faiss.Index:
    """Build a searchable index over database (N x D, float32/float16, in memory or np.memmap).

    params override `default_params(kind, N, D)`; unknown names raise UserError. The database is
    converted to float32 in chunks of CHUNK_ROWS rows, so a memmap is never copied whole into RAM
    (except into the index's own storage for "flat"/"hnsw" float32).
    """
    _check_kind(kind)
    database = _check_matrix(database, "database")
    n, d = database.shape
    p = default_params(kind, n, d)
    unknown = sorted(set(params) - set(p))
    if unknown:
        raise UserError(f"unknown {kind} index parameter(s) {unknown}; {kind} accepts {sorted(p) or 'none'}")
    p.update(params)
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivfpq":
        index = _make_ivfpq(database, p)
    else:
        index = _make_hnsw(d, p)
    for start in range(0, n, CHUNK_ROWS):
        index.add(_as_f32(database[start:start + CHUNK_ROWS]))
    return index


def _make_ivfpq(database: np.ndarray, p: dict[str, Any]) -> faiss.Index:
    """Untrained -> trained IVF-PQ(+refine) index; training rows are a fixed-seed sample of database."""
    d = database.shape[1]
    if d % int(p["m"]) != 0:
        raise UserError(f"ivfpq m={p['m']} does not divide the dimension {d}; pass m=<a divisor of {d}>")
    if int(p["nbits"]) not in (4, 8):
        raise UserError(f"ivfpq nbits={p['nbits']} is not supported; use nbits=4 (fast-scan) or nbits=8")
    pq = f"PQ{int(p['m'])}x4fs" if int(p["nbits"]) == 4 else f"PQ{int(p['m'])}x8"
    refine = {"float16": ",Refine(SQfp16)", "float32": ",RFlat", None: "", "none": ""}.get(p["refine"], "?")
    if refine == "?":
        raise UserError(f"ivfpq refine={p['refine']!r} is unknown; use 'float16', 'float32' or None")
    index = faiss.index_factory(d, f"IVF{int(p['nlist'])},{pq}{refine}", faiss.METRIC_L2)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    train = _training_sample(database, int(p["n_train"]), int(p["seed"]))
    min_rows = max(int(p["nlist"]), 2 ** int(p["nbits"]))
    if len(train) < 39 * min_rows:  # small database: k-means on few (or repeated) points, without warnings
        ivf.cp.min_points_per_centroid = ivf.pq.cp.min_points_per_centroid = 1
        train = np.tile(train, (-(-min_rows // len(train)), 1))
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # minutes of training for a code ordering nobody uses here
    # Coarse k-means (big BLAS products) on all threads; then the PQ / refine training, thousands of tiny
    # k-means steps, on one thread: with several threads on a busy CPU each step waits for a descheduled
    # thread.
    faiss.Clustering(d, int(p["nlist"]), ivf.cp).train(train, ivf.quantizer)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(train)  # the quantizer already holds nlist centroids: only the encoder is trained
    finally:
        faiss.omp_set_num_threads(threads)
    del train
    ivf.nprobe = int(min(p["nprobe"], p["nlist"]))
    if refine:
        index.k_factor = float(p["k_factor"])
    return index


def _training_sample(database: np.ndarray, n_train: int, seed: int) -> np.ndarray:
    """n_train rows (n_train x D float32) drawn without replacement with a fixed seed, read in row order."""
    n, d = database.shape
    n_train = min(n, max(1, n_train))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False))
    train = np.empty((n_train, d), dtype=np.float32)
    for start in range(0, n_train, CHUNK_ROWS):
        train[start:start + CHUNK_ROWS] = database[rows[start:start + CHUNK_ROWS]]
    return train


def _make_hnsw(d: int, p: dict[str, Any]) -> faiss.Index:
    """Empty HNSW index with float32 or float16 vector storage."""
    storage = {"float32": "", "float16": ",SQfp16"}.get(p["storage"])
    if storage is None:
        raise UserError(f"hnsw storage={p['storage']!r} is unknown; use 'float32' or 'float16'")
    index = faiss.index_factory(d, f"HNSW{int(p['M'])}{storage}", faiss.METRIC_L2)
    index.hnsw.efConstruction = int(p["ef_construction"])
    index.hnsw.efSearch = int(p["ef_search"])
    if not index.is_trained:  # SQfp16 needs no statistics; train on nothing to flip the flag
        index.train(np.zeros((1, d), dtype=np.float32))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest database vectors of each query in one batched call.

    queries: Q x D. Returns (distances Q x k' float32 squared L2, ids Q x k' int64) with
    k' = min(k, index.ntotal), nearest first. HNSW searches with efSearch >= k; IVF queries whose probed lists
    held too few vectors are searched again over all lists, so every id is a real row (never -1).
    """
    if k < 1:
        raise UserError(f"search k={k} must be at least 1; ask for k >= 1 neighbours")
    queries = _check_matrix(queries, "queries")
    if queries.shape[1] != index.d:
        raise UserError(f"queries have dimension {queries.shape[1]} but the index has {index.d}; "
                        f"encode queries and database with the same model")
    k = int(min(k, index.ntotal))
    if k == 0:
        raise UserError("the index is empty; add database descriptors before searching")
    queries = _as_f32(queries)
    hnsw = _hnsw_of(index)
    if hnsw is not None:  # HNSW returns -1 ids when k > efSearch: widen the beam for this call only
        params = faiss.SearchParametersHNSW(efSearch=max(int(hnsw.hnsw.efSearch), k))
        distances, ids = index.search(queries, k, params=params)
    else:
        distances, ids = index.search(queries, k)
    missing = np.flatnonzero((ids < 0).any(axis=1))
    ivf = faiss.try_extract_index_ivf(index)
    if len(missing) and ivf is not None:  # probed lists held < k (x k_factor) vectors: probe all lists
        params = ivf_params = faiss.SearchParametersIVF(nprobe=int(ivf.nlist))
        refine = faiss.downcast_index(index)
        if isinstance(refine, faiss.IndexRefine):
            params = faiss.IndexRefineSearchParameters(k_factor=float(refine.k_factor), base_index_params=ivf_params)
        distances[missing], ids[missing] = index.search(queries[missing], k, params=params)
    return distances, ids.astype(np.int64, copy=False)


def _hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The index itself, downcast, when it is an HNSW index; else None."""
    index = faiss.downcast_index(index)
    return index if isinstance(index, faiss.IndexHNSW) else None


def index_nbytes(index: faiss.Index) -> int:
    """Size in bytes of the serialized index (a close proxy of its RAM), counted without copying it."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer
    return total


def open_descriptors(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Open a .npy descriptor file; memory-mapped read-only (np.memmap) when mmap, else loaded in RAM."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"descriptor file {path} does not exist; compute the descriptors first or fix the path")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise UserError(f"{path} is not a valid .npy descriptor file ({e}); recompute the descriptors") from e


class DescriptorWriter:
    """Fill an on-disk N x D .npy memmap chunk by chunk (rows in order, or at explicit offsets).

    with DescriptorWriter("db.npy", n, dim, "float16") as w:
        for batch in batches: w.write(batch)
    """

    def __init__(self, path: str | Path, n: int, dim: int, dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise UserError(f"descriptor dtype {dtype!r} is not supported; use 'float16' or 'float32'")
        self.path, self.n, self.dim, self.position = Path(path), int(n), int(dim), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=(self.n, self.dim))

    def write(self, chunk: np.ndarray, start: int | None = None) -> None:
        """Write chunk (B x D) at row start (default: right after the previous chunk)."""
        start = self.position if start is None else int(start)
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != self.dim or start < 0 or start + len(chunk) > self.n:
            raise UserError(f"chunk of shape {chunk.shape} at row {start} does not fit a {self.n} x {self.dim} "
                            f"descriptor file; write B x {self.dim} chunks within the {self.n} rows")
        self.array[start:start + len(chunk)] = chunk
        self.position = start + len(chunk)

    def close(self) -> None:
        """Flush to disk and release the memmap."""
        if self.array is not None:
            self.array.flush()
            self.array = None

    def __enter__(self) -> "DescriptorWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise UserError(f"unknown index kind {kind!r}; use one of {', '.join(INDEX_KINDS)}")


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """Validate a 2-D floating matrix without copying it (memmaps stay memmaps)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise UserError(f"{name} must be a 2-D N x D array, got shape {x.shape}; stack the descriptors first")
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{name} has dtype {x.dtype}; pass float32 or float16 descriptors")
    return x


def _as_f32(x: np.ndarray) -> np.ndarray:
    """C-contiguous float32 view/copy of a chunk (a copy only when needed)."""
    return np.ascontiguousarray(x, dtype=np.float32)
