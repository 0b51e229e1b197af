"""Test-time variants: model ensembles, multi-scale encoding, and the query test methods of the VG benchmark.

Everything wraps the model (nn.Modules) or the search step, so `evaluation.extract_features` and
`evaluation.evaluate_descriptors` stay the one test loop:
  * Ensemble: descriptors of several models, each L2-normalized, concatenated or averaged, then L2.
  * MultiScale: one image encoded at several scales, descriptors averaged or concatenated, then L2.
  * TEST_METHODS: how queries are processed (the database is always hard-resized). Multi-crop methods
    encode M crops per query: five_crops averages their descriptors; nearest_crop and maj_voting search
    each crop and merge the M ranked lists (batched numpy, one faiss search for all crops).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import data

from commons import UserError
from dataio.images import build_resize, normalize, open_image
from dataio.transforms import to_image
from retrieval.evaluation import EvalResult, InferenceConfig, evaluate_descriptors, extract_features, test
from retrieval.indexing import search

VOTING_DEPTHS = (1, 5, 10)  # maj_voting: votes counted among each crop's top-1, top-5 and top-10


def combine_descriptors(descs: Sequence[torch.Tensor], how: str) -> torch.Tensor:
    """Combine descriptors B×D_i ('concat' → B×ΣD_i, 'mean' → B×D, equal D_i), then L2. One input: returned as is."""
    if len(descs) == 1:
        return descs[0]
    out = torch.cat(list(descs), dim=1) if how == "concat" else torch.stack(list(descs)).mean(0)
    return F.normalize(out, p=2, dim=1)


class Ensemble(nn.Module):
    """Several models as one: images B×3×H×W → B×D, descriptors L2-normalized per model then combined."""

    def __init__(self, models: Sequence[nn.Module], combine: str = "concat"):
        super().__init__()
        dims = [int(m.out_dim) for m in models]
        if combine == "mean" and len(set(dims)) > 1:
            raise UserError(f"--ensemble mean needs models with equal descriptor sizes, got {dims}; "
                            f"use --ensemble concat")
        self.models, self.combine = nn.ModuleList(models), combine
        self.out_dim = sum(dims) if combine == "concat" else dims[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_descriptors([F.normalize(m(x).float(), p=2, dim=1) for m in self.models], self.combine)


def rescale(x: torch.Tensor, scale: float, multiple: int = 1) -> torch.Tensor:
    """Images B×3×H×W resized by `scale` (bilinear, antialiased), sides rounded to multiples of `multiple`."""
    if scale == 1:
        return x
    h, w = (max(multiple, round(v * scale / multiple) * multiple) for v in x.shape[-2:])
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


class MultiScale(nn.Module):
    """Encode each image at several scales: B×3×H×W → B×D ('mean') or B×(S·D) ('concat'), L2-normalized."""

    def __init__(self, model: nn.Module, scales: Sequence[float], combine: str = "mean"):
        super().__init__()
        self.model, self.scales, self.combine = model, [float(s) for s in scales], combine
        self.multiple = max(int(getattr(m, "input_multiple", 1)) for m in model.modules())
        self.out_dim = model.out_dim * (len(self.scales) if combine == "concat" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_descriptors([self.model(rescale(x, s, self.multiple)).float() for s in self.scales],
                                   self.combine)


class CropsEncoder(nn.Module):
    """Queries given as M crops stacked on the channel axis, B×(3·M)×H×W → B×(M·D), or B×D when averaging."""

    def __init__(self, model: nn.Module, crops: int, average: bool):
        super().__init__()
        self.model, self.crops, self.average = model, crops, average
        self.out_dim = model.out_dim * (1 if average else crops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        descs = self.model(x.reshape(b * self.crops, 3, h, w)).float().reshape(b, self.crops, -1)  # B×M×D
        return F.normalize(descs.mean(1), p=2, dim=1) if self.average else descs.flatten(1)


# ------------------------------------------------------------------------------------- query transforms
def hard_resize(size: tuple[int, int]) -> Callable:
    """PIL image → normalized 3×H×W at exactly `size` (what the database gets)."""
    to_size = build_resize(size)
    return lambda img: normalize(to_size(img))


def original_size(size: tuple[int, int]) -> Callable:
    """PIL image → normalized 3×H×W at its own size."""
    return lambda img: normalize(to_image(img))


def central_crop(size: tuple[int, int]) -> Callable:
    """Scale the image so that it covers `size`, then take the central crop of `size`."""
    import torchvision.transforms.v2.functional as TF  # lazy: start-up time (only this test method needs it)

    def fn(img) -> torch.Tensor:
        x = to_image(img)
        scale = max(size[0] / x.shape[-2], size[1] / x.shape[-1])
        x = TF.resize(x, [max(size[0], round(x.shape[-2] * scale)), max(size[1], round(x.shape[-1] * scale))],
                      antialias=True)
        return normalize(TF.center_crop(x, list(size)))
    return fn


def five_crops(size: tuple[int, int]) -> Callable:
    """Shorter side resized to S = min(size), then the four corner and the central S×S crops: (3·5)×S×S."""
    import torchvision.transforms.v2.functional as TF  # lazy: start-up time (only this test method needs it)
    side = min(size)

    def fn(img) -> torch.Tensor:
        x = normalize(TF.resize(to_image(img), [side], antialias=True))
        return torch.cat(TF.five_crop(x, [side, side]), dim=0)
    return fn


# ------------------------------------------------------------------------------------- merging crop results
def merge_nearest(distances: np.ndarray, predictions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, all crops' results (Q×N) sorted by distance, duplicates dropped (closest kept): Q×k each."""
    distances = np.where(predictions < 0, np.inf, distances)
    order = np.argsort(distances, axis=1, kind="stable")
    d, p = np.take_along_axis(distances, order, 1), np.take_along_axis(predictions, order, 1)
    by_id = np.argsort(p, axis=1, kind="stable")  # equal ids stay in distance order
    p_by_id = np.take_along_axis(p, by_id, 1)
    dup = np.zeros_like(p, dtype=bool)
    np.put_along_axis(dup, by_id[:, 1:], p_by_id[:, 1:] == p_by_id[:, :-1], 1)
    keep = np.argsort(dup, axis=1, kind="stable")[:, :k]  # first occurrences, in distance order
    return np.take_along_axis(d, keep, 1), np.take_along_axis(p, keep, 1)


def majority_voting(distances: np.ndarray, predictions: np.ndarray, weight: float) -> np.ndarray:
    """Q×M×K crop results: lower by weight·count/n the distance of every prediction that appears count > 1 times
    among the top-n of the M crops, for n in VOTING_DEPTHS (adjustments add up). Returns new distances."""
    q, m, k = predictions.shape
    out = distances.astype(np.float64, copy=True)
    for n in VOTING_DEPTHS:
        top = predictions[:, :, :min(n, k)].reshape(q, -1)  # Q×(M·n)
        counts = (top[:, :, None] == top[:, None, :]).sum(2)  # occurrences of each entry's id in its row
        out[:, :, :min(n, k)] -= np.where(counts > 1, weight * counts / n, 0.0).reshape(q, m, -1)
    return out.astype(distances.dtype)


def crops_search(crops: int, voting_weight: float | None) -> Callable:
    """search_fn for evaluate_descriptors: queries Q×(M·D) → one search of the Q·M crop descriptors, merged."""
    def fn(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = len(queries)
        depth = min(max(k, max(VOTING_DEPTHS)), index.ntotal) if voting_weight is not None else k
        distances, predictions = search(index, queries.reshape(q * crops, index.d), depth)
        distances, predictions = distances.reshape(q, crops, -1), predictions.reshape(q, crops, -1)
        if voting_weight is not None:
            distances = majority_voting(distances, predictions, voting_weight)
        return merge_nearest(distances.reshape(q, -1), predictions.reshape(q, -1), k)
    return fn


@dataclass(frozen=True)
class MethodSpec:
    """How queries are processed: their transform, crops per query, and how the crops are merged."""
    transform: Callable[[tuple[int, int]], Callable]  # (H, W) → (PIL image → (3·crops)×h×w)
    crops: int = 1
    merge: str = "none"  # 'mean' of crop descriptors, or 'nearest'/'voting' on the crops' search results
    one_by_one: bool = False  # queries of different sizes: batch size 1


TEST_METHODS: dict[str, MethodSpec] = {
    "hard_resize": MethodSpec(hard_resize),
    "single_query": MethodSpec(original_size, one_by_one=True),
    "central_crop": MethodSpec(central_crop),
    "five_crops": MethodSpec(five_crops, crops=5, merge="mean"),
    "nearest_crop": MethodSpec(five_crops, crops=5, merge="nearest"),
    "maj_voting": MethodSpec(five_crops, crops=5, merge="voting"),
}


class QueryImages(data.Dataset):
    """Queries of a BaseDataset through a test-method transform: item i = (image(s) of query i, i)."""

    def __init__(self, base, transform: Callable):
        self.base, self.transform = base, transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(open_image(self.base.queries_paths[index])), index

    def __len__(self) -> int:
        return self.base.queries_num


def run_test_method(model: nn.Module, dataset, method: str, size: tuple[int, int], recall_values: Sequence[int],
                    cfg: InferenceConfig, majority_weight: float = 0.01, max_k: int | None = None) -> EvalResult:
    """recall@N of `model` on `dataset` (database hard-resized to `size`) with queries processed by `method`."""
    if method not in TEST_METHODS:
        raise UserError(f"unknown test method {method!r}; choose one of {', '.join(TEST_METHODS)}")
    if method == "hard_resize":
        return test(model, dataset, recall_values, cfg, max_k)
    tm = TEST_METHODS[method]
    db = extract_features(model, dataset, range(dataset.database_num), cfg, desc="encoding database")
    encoder = CropsEncoder(model, tm.crops, tm.merge == "mean") if tm.crops > 1 else model
    queries = extract_features(encoder, QueryImages(dataset, tm.transform(tuple(size))), range(dataset.queries_num),
                               replace(cfg, batch_size=1) if tm.one_by_one else cfg,
                               desc=f"encoding queries ({method})")
    search_fn = search
    if tm.merge in ("nearest", "voting"):
        search_fn = crops_search(tm.crops, majority_weight if tm.merge == "voting" else None)
    result = evaluate_descriptors(db, queries, dataset, recall_values, cfg.index, max_k, search_fn=search_fn)
    result.info["test_method"] = method
    return result
