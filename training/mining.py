"""Triplet mining methods. Each miner returns triplets T×(2+K): (query, positive, K negatives).

Query indices are within the training queries, positive/negative indices within the database.
Add a miner with one function decorated by @register_miner(name).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from commons import Registry, UserError
from runs import profile

MINERS = Registry("miner")  # fn(ctx: MiningContext, query_ids) -> triplets Q×(2+K), by name (--mining)
register_miner = MINERS.register
MAX_CHUNK_ELEMENTS = 1 << 26  # bound on the size of a query-chunk × database similarity block
DENSE_FACTOR = 16  # a CPU matmul does >16× the multiply-adds per second of a row gather + dot product


@dataclass(frozen=True)
class MiningSettings:
    """The flags miners read: --mining, --negs_num_per_query, --neg_samples_num, --rolling_period."""
    miner: str
    negs_num_per_query: int
    neg_samples_num: int
    rolling_period: int = 4

    @classmethod
    def from_args(cls, args) -> MiningSettings:
        return cls(args.mining, args.negs_num_per_query, args.neg_samples_num, args.rolling_period)


@dataclass
class MiningContext:
    """What miners need, built once by `MiningContext.create`: the encoder, the training dataset, the settings, the
    persistent negative cache (Q×K, -1 = empty, updated in place), and what the chosen miner keeps across refreshes."""
    encode: Callable[[np.ndarray, str], np.ndarray]  # encode(indices, desc) -> N×D, database-then-queries numbering
    dataset: object  # datasets_ws.TripletsDataset
    settings: MiningSettings
    neg_cache: np.ndarray
    soft_keys: np.ndarray  # see soft_positive_keys
    positives: np.ndarray  # Q×P train positives, -1 padded
    rolling_cache: RollingDatabaseCache | None  # miner "rolling" only
    msls_weights: np.ndarray | None  # miner "msls_weighted" only

    @classmethod
    def create(cls, encode: Callable[[np.ndarray, str], np.ndarray], dataset, settings: MiningSettings,
               neg_cache: np.ndarray) -> MiningContext:
        """The complete context; encode is evaluation.encoder (one process) or distributed.sharded_encoder."""
        rolling = (RollingDatabaseCache(dataset.database_num, settings.rolling_period)
                   if settings.miner == "rolling" else None)
        weights = msls_query_weights(dataset.queries_paths) if settings.miner == "msls_weighted" else None
        return cls(encode, dataset, settings, neg_cache, soft_positive_keys(dataset),
                   pad_ragged(dataset.positives_per_query), rolling, weights)

    def features(self, indices: np.ndarray, desc: str) -> torch.Tensor:
        """Descriptors N×D of dataset items (database-then-queries numbering)."""
        return torch.from_numpy(self.encode(indices, desc))

    def mine(self, query_ids: np.ndarray) -> np.ndarray:
        """Triplets T×(2+K) of the chosen miner for these training queries."""
        return MINERS[self.settings.miner](self, query_ids)


def soft_positive_keys(dataset) -> np.ndarray:
    """Sorted int64 keys q·N_db + d of all (query, soft positive) pairs, for vectorized membership tests."""
    n_db = dataset.database_num
    keys = [q * n_db + np.asarray(s, dtype=np.int64) for q, s in enumerate(dataset.soft_positives_per_query)]
    return np.sort(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)


def is_soft_positive(dataset, keys: np.ndarray, query_ids: np.ndarray, db_ids: np.ndarray) -> np.ndarray:
    """Boolean array shaped like db_ids (n×C): db_ids[i, j] is a soft positive of query_ids[i]."""
    return np.isin(query_ids[:, None] * dataset.database_num + db_ids, keys)


def pad_ragged(lists: list[np.ndarray]) -> np.ndarray:
    """Stack ragged int arrays into an n×P matrix padded with -1."""
    lens = np.array([len(p) for p in lists], dtype=np.int64)
    out = np.full((len(lists), max(1, int(lens.max(initial=0)))), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(lists)), lens)
    cols = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    out[rows, cols] = np.concatenate(lists) if len(lists) else []
    return out


@profile.timed("search")
def gathered_distances(q_feats: torch.Tensor, db_feats: torch.Tensor, cand: np.ndarray) -> torch.Tensor:
    """n×C squared L2 distances between each query and its candidate database rows (-1 → +inf).

    Computed as |q|² + |d|² − 2·q·d. When the candidates are a large share of the database
    (C·DENSE_FACTOR ≥ N_db) the dot products come from one matrix product against the whole database
    (compute-bound); otherwise from the gathered candidate rows (memory-bound, n·C rows only).
    """
    cand_t = torch.from_numpy(cand)
    c_all, valid = cand_t.clamp(min=0), cand_t >= 0
    q_sq, db_sq = (q_feats ** 2).sum(1), (db_feats ** 2).sum(1)  # n, N_db
    dense = cand.shape[1] * DENSE_FACTOR >= len(db_feats)
    rows = max(1, MAX_CHUNK_ELEMENTS // max(1, len(db_feats) if dense else cand.shape[1] * db_feats.shape[1]))
    out = torch.empty(cand.shape)
    for s in range(0, len(cand), rows):  # chunked only to bound memory
        c, q = c_all[s:s + rows], q_feats[s:s + rows]
        dots = (q @ db_feats.T).gather(1, c) if dense else torch.bmm(db_feats[c], q[:, :, None])[..., 0]  # rows×C
        out[s:s + rows] = q_sq[s:s + rows, None] + db_sq[c] - 2 * dots
    return out.clamp_(min=0).masked_fill_(~valid, float("inf"))


@profile.timed("select")
def choose_negatives(ctx: MiningContext, query_ids: np.ndarray, cand: np.ndarray, scores: torch.Tensor) -> np.ndarray:
    """The K lowest-score candidates per query, skipping soft positives, duplicates and -1: n×K.

    Rows left with fewer than K valid candidates are topped up with random non-positive database images.
    """
    ds, k = ctx.dataset, ctx.settings.negs_num_per_query
    order = np.argsort(cand, axis=1, kind="stable")
    sorted_c = np.take_along_axis(cand, order, 1)
    dup = np.zeros_like(cand, dtype=bool)
    np.put_along_axis(dup, order[:, 1:], sorted_c[:, 1:] == sorted_c[:, :-1], 1)
    bad = dup | (cand < 0) | is_soft_positive(ds, ctx.soft_keys, query_ids, np.maximum(cand, 0))
    scores = scores.masked_fill(torch.from_numpy(bad), float("inf"))
    top = torch.topk(scores, k, dim=1, largest=False)
    chosen = np.take_along_axis(cand, top.indices.numpy(), 1)
    short = ~torch.isfinite(top.values).all(1).numpy()
    for i in np.flatnonzero(short):  # rare: fewer than K valid candidates for this query
        chosen[i] = random_non_positives(ds, query_ids[i], k)
    return chosen


def random_non_positives(ds, q: int, k: int) -> np.ndarray:
    """k distinct random database indices outside query q's soft positives."""
    allowed = np.setdiff1d(np.arange(ds.database_num), ds.soft_positives_per_query[q])
    if len(allowed) < k:
        raise UserError(f"query {q} has only {len(allowed)} possible negatives but --negs_num_per_query is {k}; "
                        f"lower --negs_num_per_query or --val_positive_dist_threshold")
    return np.random.choice(allowed, k, replace=False)


def nearest_positive(q_feats: torch.Tensor, db_feats: torch.Tensor, pos: np.ndarray) -> np.ndarray:
    """For each query, its train positive closest in feature space (pos: n×P padded with -1)."""
    d = gathered_distances(q_feats, db_feats, pos)
    return np.take_along_axis(pos, d.argmin(1, keepdim=True).numpy(), 1)[:, 0]


def _as_triplets(query_ids: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    return np.concatenate([query_ids[:, None], positives[:, None], negatives], axis=1).astype(np.int64)


@register_miner("full")
def mine_full(ctx: MiningContext, query_ids: np.ndarray) -> np.ndarray:
    """Encode the whole database and the sampled queries; hardest negatives among --neg_samples_num random
    database images plus each query's previous hard negatives."""
    db_feats = ctx.features(np.arange(ctx.dataset.database_num), "caching database")
    return mine_hardest(ctx, query_ids, db_feats)


def mine_hardest(ctx: MiningContext, query_ids: np.ndarray, db_feats: torch.Tensor) -> np.ndarray:
    """Encode the sampled queries; nearest positive and hardest negatives against database descriptors
    db_feats (N_db×D) among --neg_samples_num random images plus each query's previous hard negatives."""
    ds, a = ctx.dataset, ctx.settings
    q_feats = ctx.features(ds.database_num + query_ids, "caching queries")
    positives = nearest_positive(q_feats, db_feats, ctx.positives[query_ids])
    rand = np.random.randint(0, ds.database_num, size=(len(query_ids), a.neg_samples_num))
    cand = np.concatenate([rand, ctx.neg_cache[query_ids]], axis=1)
    negatives = choose_negatives(ctx, query_ids, cand, gathered_distances(q_feats, db_feats, cand))
    ctx.neg_cache[query_ids] = negatives
    return _as_triplets(query_ids, positives, negatives)


@register_miner("partial")
def mine_partial(ctx: MiningContext, query_ids: np.ndarray) -> np.ndarray:
    """Encode only a shared random sample of --neg_samples_num database images (plus the positives);
    hardest negatives among that sample."""
    ds, a = ctx.dataset, ctx.settings
    sample = np.random.choice(ds.database_num, min(a.neg_samples_num, ds.database_num), replace=False)
    pos = ctx.positives[query_ids]
    needed = np.union1d(sample, pos[pos >= 0])
    feats = ctx.features(needed, "caching database sample")
    db_feats = torch.zeros(ds.database_num, feats.shape[1])
    db_feats[torch.from_numpy(needed)] = feats
    q_feats = ctx.features(ds.database_num + query_ids, "caching queries")
    positives = nearest_positive(q_feats, db_feats, pos)
    cand = np.broadcast_to(sample, (len(query_ids), len(sample))).copy()
    negatives = choose_negatives(ctx, query_ids, cand, gathered_distances(q_feats, db_feats, cand))
    return _as_triplets(query_ids, positives, negatives)


@register_miner("random")
def mine_random(ctx: MiningContext, query_ids: np.ndarray) -> np.ndarray:
    """No encoding: a random train positive and random non-positive negatives."""
    ds, a = ctx.dataset, ctx.settings
    pos = ctx.positives[query_ids]
    counts = (pos >= 0).sum(1)
    positives = pos[np.arange(len(pos)), (np.random.rand(len(pos)) * counts).astype(np.int64)]
    width = max(a.neg_samples_num, 2 * a.negs_num_per_query)
    cand = np.random.randint(0, ds.database_num, size=(len(query_ids), width))
    negatives = choose_negatives(ctx, query_ids, cand, torch.rand(cand.shape))
    return _as_triplets(query_ids, positives, negatives)


def msls_query_weights(paths: list) -> np.ndarray:
    """Sampling probabilities of the training queries for --mining msls_weighted (MSLS paper, supplementary).

    Every query weighs 1, plus Q/n_night if it was taken at night and Q/n_sideways if it looks sideways (Q queries,
    n_night and n_sideways of each kind), normalized to sum 1: rare conditions are drawn as often as the rest.
    Night/sideways come from the MSLS note of the datasets_vg file names ('@...@night_sideways@.jpg': the field
    before the extension, '<day|night>_<front|sideways>'); datasets without it are refused.
    """
    notes = [Path(p).name.split("@")[-2].split("_") for p in paths]  # string parsing: one name at a time
    bad = next((str(p) for p, n in zip(paths, notes) if len(n) < 2), None)
    night = np.array([n[0] == "night" for n in notes if len(n) >= 2], dtype=bool)
    sideways = np.array([n[1] == "sideways" for n in notes if len(n) >= 2], dtype=bool)
    if bad is not None or not night.any() or not sideways.any():
        found = (f"no such note (e.g. {Path(bad).name})" if bad is not None else
                 f"{int(night.sum())} night and {int(sideways.sum())} sideways ones")
        raise UserError(f"--mining msls_weighted oversamples night and sideways queries, read from the MSLS note of "
                        f"the file names ('@...@night_sideways@.jpg'); these training queries have {found}; it is "
                        f"for Mapillary SLS: use --mining partial (dVGL's default) or full")
    q = len(paths)
    weights = 1.0 + night * q / night.sum() + sideways * q / sideways.sum()
    return weights / weights.sum()


@register_miner("msls_weighted")
def mine_msls_weighted(ctx: MiningContext, query_ids: np.ndarray) -> np.ndarray:
    """dVGL's msls_weighted: 'partial' mining of as many queries as query_ids, drawn without replacement with
    `msls_query_weights` (night and sideways queries, rare in MSLS, are drawn more often)."""
    drawn = np.random.choice(len(ctx.msls_weights), len(query_ids), replace=False, p=ctx.msls_weights)
    return mine_partial(ctx, drawn)


class RollingDatabaseCache:
    """Database descriptors N_db×D kept across cache refreshes (miner 'rolling').

    The first update encodes the whole database; each later one re-encodes only the next ⌈N_db/period⌉ rows
    (cyclically), so every descriptor is refreshed at least once every `period` updates.
    """

    def __init__(self, database_num: int, period: int):
        self.database_num, self.period = database_num, period
        self.feats: torch.Tensor | None = None
        self.next_row = 0

    def update(self, ctx: MiningContext) -> torch.Tensor:
        """Re-encode the stale slice with the current model; returns all database descriptors N_db×D."""
        if self.feats is None:
            self.feats = ctx.features(np.arange(self.database_num), "caching database")
            return self.feats
        size = -(-self.database_num // self.period)
        rows = (self.next_row + np.arange(size)) % self.database_num
        self.feats[torch.from_numpy(rows)] = ctx.features(rows, f"refreshing 1/{self.period} of the database cache")
        self.next_row = int((self.next_row + size) % self.database_num)
        return self.feats


@register_miner("rolling")
def mine_rolling(ctx: MiningContext, query_ids: np.ndarray) -> np.ndarray:
    """As 'full' (hardest of --neg_samples_num random database images plus the query's previous hard negatives),
    but the database descriptors are reused across refreshes: each refresh re-encodes 1/--rolling_period of
    the database (all of it at the first refresh of a run or resume) and the sampled queries."""
    return mine_hardest(ctx, query_ids, ctx.rolling_cache.update(ctx))
