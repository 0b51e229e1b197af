"""Feature extraction and recall@N: the one test loop shared by validation, testing, eval.py and mining."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from commons import autocast
from dataio.images import collate_images, to_input
from retrieval.indexing import build_index, search
from runs import profile


@dataclass(frozen=True)
class InferenceConfig:
    """How descriptors are computed and searched: what feature extraction, testing, the test methods, PCA fitting
    and the miners share (--infer_batch_size, --num_workers, the device, --precision, --index)."""
    batch_size: int = 16
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    index: str = "flat"

    @classmethod
    def from_args(cls, args, device: str) -> InferenceConfig:
        """The configuration of parsed train.py/eval.py args (num_workers already resolved for the device)."""
        return cls(args.infer_batch_size, args.num_workers, device, args.precision, args.index)


@torch.no_grad()
def extract_features(model: torch.nn.Module, dataset, indices: Sequence[int], cfg: InferenceConfig,
                     desc: str = "features") -> np.ndarray:
    """Descriptors of dataset items `indices`, in that order: N×D float32.

    dataset[i] must return (image 3×H×W, i). The model is put in eval mode. Time goes to the profile's
    "encode" phase (its "data" part: waiting for the loader, i.e. decoding with num_workers 0).
    """
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        collate_fn=collate_images,
                        pin_memory=cfg.device == "cuda", persistent_workers=False)
    out: np.ndarray | None = None
    pos = 0
    quiet = len(loader) < 2 or (torch.distributed.is_initialized() and torch.distributed.get_rank() > 0)
    with profile.phase("encode", images=len(indices)):
        for images, _ in tqdm(profile.timed_iter(loader), total=len(loader), desc=desc, ncols=100, leave=False,
                              disable=quiet):
            with profile.phase("forward"), autocast(cfg.device, cfg.precision):
                feats = model(to_input(images, cfg.device, cfg.precision)).float().cpu().numpy()  # B×D
            if out is None:
                out = np.empty((len(indices), feats.shape[1]), dtype=np.float32)
            out[pos:pos + len(feats)] = feats
            pos += len(feats)
    return out


def encoder(model: torch.nn.Module, dataset, cfg: InferenceConfig) -> Callable[[np.ndarray, str], np.ndarray]:
    """encode(indices, desc) -> N×D descriptors of dataset items (extract_features bound to model, dataset, cfg);
    the miners' encoder in one process (distributed.sharded_encoder under torchrun)."""
    return lambda indices, desc: extract_features(model, dataset, indices, cfg, desc)


def hits_matrix(predictions: np.ndarray, queries_utms: np.ndarray, database_utms: np.ndarray,
                threshold: float) -> np.ndarray:
    """Q×K boolean: prediction (q, k) lies within `threshold` metres of query q."""
    return prediction_distances(predictions, queries_utms, database_utms) <= threshold


def prediction_distances(predictions: np.ndarray, queries_utms: np.ndarray,
                         database_utms: np.ndarray) -> np.ndarray:
    """Q×K metres from query q to its prediction (q, k); predictions Q×K database indices.

    Missing results of approximate indexes (id -1) are at infinite distance, so they never count as hits.
    """
    d = np.linalg.norm(database_utms[np.maximum(predictions, 0)] - queries_utms[:, None, :], axis=2)
    return np.where(predictions < 0, np.inf, d)


def recalls_from_hits(hits: np.ndarray, recall_values: Sequence[int]) -> dict[int, float]:
    """Recall@N in percent: share of queries with a hit among their top N, for each N."""
    first_hit_cum = np.cumsum(hits, axis=1) > 0  # Q×K: any hit within the top k+1
    k = hits.shape[1]
    return {int(n): float(first_hit_cum[:, min(n, k) - 1].mean() * 100) for n in recall_values}


def recalls_by_threshold(predictions: np.ndarray, queries_utms: np.ndarray, database_utms: np.ndarray,
                         thresholds: Sequence[float], recall_values: Sequence[int]) -> dict[float, dict[int, float]]:
    """Recall@N at several success radii (metres), all from the same predictions Q×K."""
    return {float(t): recalls_from_hits(hits_matrix(predictions, queries_utms, database_utms, t), recall_values)
            for t in thresholds}


def format_recalls(recalls: dict[int, float]) -> str:
    """'R@1: 50.0, R@5: 75.0, ...'."""
    return ", ".join(f"R@{n}: {v:.1f}" for n, v in sorted(recalls.items()))


@dataclass
class EvalResult:
    """Outcome of one evaluation: recalls keyed by N, plus what is needed for plots and reports."""
    recalls: dict[int, float]
    predictions: np.ndarray  # Q×K database indices, nearest first
    distances: np.ndarray  # Q×K squared L2 feature distances
    queries_without_positives: int
    info: dict = field(default_factory=dict)


def evaluate_descriptors(db_feats: np.ndarray, q_feats: np.ndarray, dataset, recall_values: Sequence[int],
                         index_kind: str = "flat", max_k: int | None = None,
                         search_fn: Callable = search) -> EvalResult:
    """Search queries against the database with one faiss index and compute recall@N.

    search_fn(index, q_feats, k) -> (Q×k distances, Q×k predictions) replaces the plain search, e.g. to merge
    several descriptors per query (test_methods).
    """
    k = min(max(max(recall_values), max_k or 0), len(db_feats))
    with profile.phase("search"):
        index = build_index(db_feats, index_kind)
        distances, predictions = search_fn(index, q_feats, k)
    hits = hits_matrix(predictions, dataset.queries_utms, dataset.database_utms,
                       dataset.val_positive_dist_threshold)
    no_pos = int(sum(len(p) == 0 for p in dataset.soft_positives_per_query))
    if no_pos:
        logging.info(f"{no_pos} of {len(q_feats)} queries have no database image within "
                     f"{dataset.val_positive_dist_threshold} m; they count as failures")
    info = {"dataset": dataset.dataset_name, "split": dataset.split,
            "threshold": dataset.val_positive_dist_threshold, "queries_num": int(len(q_feats)),
            "database_num": int(len(db_feats)), "queries_without_positives": no_pos}
    return EvalResult(recalls_from_hits(hits, recall_values), predictions, distances, no_pos, info)


def test(model: torch.nn.Module, dataset, recall_values: Sequence[int], cfg: InferenceConfig,
         max_k: int | None = None) -> EvalResult:
    """Encode database and queries of `dataset` (a BaseDataset) and compute recall@N."""
    feats = extract_features(model, dataset, range(len(dataset)), cfg, desc=f"encoding {dataset.split}")
    db_num = dataset.database_num
    return evaluate_descriptors(feats[:db_num], feats[db_num:], dataset, recall_values, cfg.index, max_k)
