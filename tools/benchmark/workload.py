"""Workloads of benchmark.py without a model: a JPEG world, in-memory triplets, mining and faiss search on
random descriptors."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tools.benchmark.limits import timed
from datasets_ws import radius_neighbors
from retrieval.indexing import build_index, search
from training.mining import MiningContext, MiningSettings, mine_full

SEARCH_K = 20
SPACING_M = 30.0  # metres between the benchmark's database images: each query has exactly one positive


def write_world(root: Path, n_db: int, n_q: int, resize: tuple[int, int], splits: tuple[str, ...] = ("train",)) -> None:
    """Dataset 'bench' (datasets_vg layout, the given splits) of JPEGs at resize: crops of a synthetic map; query i
    lies 1 m from database image i, SPACING_M from the others."""
    from tools.synthetic_world import make_map, to_uint8
    h, w = resize
    world = to_uint8(make_map(2 * max(h, w), seed=0)[None])[0].numpy()  # M×M×3 uint8
    rng = np.random.default_rng(0)
    for split, kind, n, offset in ((sp, *k) for sp in splits for k in (("database", n_db, 0.0), ("queries", n_q, 1.0))):
        folder = root / "bench" / "images" / split / kind
        folder.mkdir(parents=True)
        for i in range(n):
            y, x = rng.integers(0, world.shape[0] - h + 1), rng.integers(0, world.shape[1] - w + 1)
            name = f"@{500000 + SPACING_M * i + offset:.2f}@{4400000:.2f}@bench@{kind}@{i:05d}@.jpg"
            Image.fromarray(world[y:y + h, x:x + w]).save(folder / name, quality=90)


class TensorTriplets(Dataset):
    """Stand-in for TripletsDataset without files: every item is the same in-memory (2+K)×3×H×W tensor."""

    def __init__(self, images: torch.Tensor):
        self.images, self.triplets = images, np.zeros((0, 2), dtype=np.int64)

    def set_triplets(self, triplets: np.ndarray) -> None:
        self.triplets = triplets

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, torch.from_numpy(self.triplets[i])

    def __len__(self) -> int:
        return len(self.triplets)


def mining_seconds(dim: int, n_db: int, n_q: int, args) -> float:
    """Seconds of a mining.mine_full refresh minus its encoder (a timed stand-in giving random descriptors),
    n_db database images at ~20 soft positives per query; the second of two refreshes (negative cache filled)."""
    rng = np.random.default_rng(0)
    db = rng.uniform(0, np.sqrt(n_db * 100.0), (n_db, 2))
    q = db[rng.integers(0, n_db, n_q)] + rng.normal(0, 3.0, (n_q, 2))
    ds = SimpleNamespace(database_num=n_db, positives_per_query=radius_neighbors(db, q, 10.0),
                         soft_positives_per_query=radius_neighbors(db, q, 25.0))
    query_ids = np.array([i for i, p in enumerate(ds.positives_per_query) if len(p)])
    encode_s = 0.0

    def encode(indices: np.ndarray, desc: str) -> np.ndarray:
        nonlocal encode_s
        start = time.perf_counter()
        f = rng.standard_normal((len(indices), dim), dtype=np.float32)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        encode_s += time.perf_counter() - start
        return f
    ctx = MiningContext.create(encode, ds, MiningSettings.from_args(args), np.full((n_q, args.negs_num_per_query), -1))
    mine_full(ctx, query_ids)
    encode_s = 0.0
    return timed(lambda: mine_full(ctx, query_ids), "cpu") - encode_s


def search_seconds(dim: int, n_db: int, n_q: int, repeats: int) -> float:
    """Seconds per query of an exact faiss search (indexing.search, k=SEARCH_K) over n_db random descriptors."""
    rng = np.random.default_rng(1)
    index = build_index(rng.standard_normal((n_db, dim), dtype=np.float32), "flat")
    q = rng.standard_normal((n_q, dim), dtype=np.float32)
    return min(timed(lambda: search(index, q, SEARCH_K), "cpu") for _ in range(repeats)) / n_q
