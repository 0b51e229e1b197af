"""Tests of training/mining.py against brute-force per-query references, with stub descriptors on tiny_world."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets_ws import TripletsDataset
from retrieval.evaluation import InferenceConfig, encoder, extract_features
from training.mining import MINERS, MiningContext, MiningSettings, pad_ragged
from network import build_model

K = 4
ALL_CANDIDATES = 4000  # random draws from a 160-image database: every image is drawn (miss chance ~1e-9)


@pytest.fixture(scope="module")
def train_ds(tiny_world: Path) -> TripletsDataset:
    return TripletsDataset(tiny_world, "synthetic", "train", resize=(32, 32))


@pytest.fixture(scope="module")
def feats(train_ds: TripletsDataset) -> np.ndarray:
    """Stub descriptors (database then queries), N×16 float32. Each query sits near the mean of its soft
    positives, so a miner that forgot to exclude them would pick them as 'hardest negatives'."""
    rng = np.random.default_rng(0)
    db = rng.normal(size=(train_ds.database_num, 16))
    q = np.stack([db[s].mean(0) for s in train_ds.soft_positives_per_query])
    q += 0.3 * rng.normal(size=q.shape)
    return np.concatenate([db, q]).astype(np.float32)


def make_ctx(ds: TripletsDataset, feats: np.ndarray | None, neg_samples_num: int = ALL_CANDIDATES,
             model=None) -> MiningContext:
    cache = np.full((len(ds.queries_paths), K), -1, dtype=np.int64)
    encode = (encoder(model, ds.as_images(), InferenceConfig(64)) if feats is None
              else (lambda idx, desc: feats[np.asarray(idx)]))
    return MiningContext.create(encode, ds, MiningSettings("full", K, neg_samples_num), cache)


def reference(ds: TripletsDataset, feats: np.ndarray, q: int) -> tuple[int, set[int]]:
    """Brute force for query q: nearest train positive in feature space, and the K nearest database
    images outside the soft-positive radius."""
    d = ((feats[:ds.database_num] - feats[ds.database_num + q]) ** 2).sum(1).astype(np.float64)
    pos = ds.positives_per_query[q]
    nearest_pos = int(pos[np.argmin(d[pos])])
    d[ds.soft_positives_per_query[q]] = np.inf
    return nearest_pos, set(np.argsort(d, kind="stable")[:K].tolist())


def check_constraints(ds: TripletsDataset, triplets: np.ndarray, query_ids: np.ndarray) -> None:
    """Shape, positives within 10 m, negatives beyond 25 m (checked on UTMs), negatives unique per query."""
    assert triplets.shape == (len(query_ids), 2 + K) and triplets.dtype == np.int64
    np.testing.assert_array_equal(triplets[:, 0], query_ids)
    q_utm = ds.queries_utms[query_ids]
    pos_dist = np.linalg.norm(ds.database_utms[triplets[:, 1]] - q_utm, axis=1)
    assert (pos_dist <= 10.0).all()
    negs = triplets[:, 2:]
    assert (negs >= 0).all() and (negs < ds.database_num).all()
    neg_dist = np.linalg.norm(ds.database_utms[negs] - q_utm[:, None, :], axis=2)
    assert (neg_dist > 25.0).all()
    assert all(len(set(row)) == K for row in negs.tolist())


@pytest.mark.parametrize("miner", ["full", "partial"])
def test_hardest_positive_and_negatives_match_brute_force(train_ds, feats, miner: str) -> None:
    np.random.seed(0)
    ctx = make_ctx(train_ds, feats)
    query_ids = np.random.permutation(len(train_ds.queries_paths))[:30]
    triplets = MINERS[miner](ctx, query_ids)
    check_constraints(train_ds, triplets, query_ids)
    for row in triplets:
        pos, negs = reference(train_ds, feats, row[0])
        assert row[1] == pos
        assert set(row[2:].tolist()) == negs


def test_soft_positives_would_otherwise_be_chosen(train_ds, feats) -> None:
    """The stub features make soft positives the nearest images: the exclusion is really exercised."""
    db = feats[:train_ds.database_num]
    hits = 0
    for q, soft in enumerate(train_ds.soft_positives_per_query):
        d = ((db - feats[train_ds.database_num + q]) ** 2).sum(1)
        hits += len(set(np.argsort(d)[:K]) & set(soft.tolist())) > 0
    assert hits > len(train_ds.soft_positives_per_query) // 2


def test_random_miner_respects_constraints(train_ds) -> None:
    np.random.seed(1)
    ctx = make_ctx(train_ds, None, neg_samples_num=10)
    query_ids = np.arange(len(train_ds.queries_paths))
    triplets = MINERS["random"](ctx, query_ids)
    check_constraints(train_ds, triplets, query_ids)
    assert all(t[1] in train_ds.positives_per_query[t[0]] for t in triplets)


def test_partial_respects_constraints_with_few_candidates(train_ds, feats) -> None:
    np.random.seed(2)
    ctx = make_ctx(train_ds, feats, neg_samples_num=40)
    query_ids = np.arange(len(train_ds.queries_paths))
    check_constraints(train_ds, MINERS["partial"](ctx, query_ids), query_ids)


def test_full_updates_the_negative_cache(train_ds, feats) -> None:
    np.random.seed(3)
    ctx = make_ctx(train_ds, feats, neg_samples_num=10)
    query_ids = np.array([0, 5, 9])
    triplets = MINERS["full"](ctx, query_ids)
    np.testing.assert_array_equal(ctx.neg_cache[query_ids], triplets[:, 2:])
    others = np.setdiff1d(np.arange(len(ctx.neg_cache)), query_ids)
    assert (ctx.neg_cache[others] == -1).all()


def test_full_keeps_cached_hard_negatives(train_ds, feats) -> None:
    """With only K random candidates, the hardest negatives can only come from the cache."""
    np.random.seed(4)
    ctx = make_ctx(train_ds, feats, neg_samples_num=K)
    query_ids = np.arange(len(train_ds.queries_paths))
    refs = [reference(train_ds, feats, q)[1] for q in query_ids]
    ctx.neg_cache[query_ids] = np.array([sorted(r) for r in refs])
    triplets = MINERS["full"](ctx, query_ids)
    assert [set(row[2:].tolist()) for row in triplets] == refs


def test_full_with_a_real_model(train_ds) -> None:
    np.random.seed(5)
    model = build_model({"aggregation": "gem"})
    ctx = make_ctx(train_ds, None, model=model)
    query_ids = np.arange(8)
    triplets = MINERS["full"](ctx, query_ids)
    check_constraints(train_ds, triplets, query_ids)
    all_feats = extract_features(model, train_ds.as_images(), range(len(train_ds.images_paths)),
                                 InferenceConfig(64))
    for row in triplets:
        pos, negs = reference(train_ds, all_feats, row[0])
        assert row[1] == pos and set(row[2:].tolist()) == negs


def test_pad_ragged() -> None:
    out = pad_ragged([np.array([3, 1]), np.array([], dtype=np.int64), np.array([7])])
    np.testing.assert_array_equal(out, [[3, 1], [-1, -1], [7, -1]])
