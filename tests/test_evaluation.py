"""Tests of retrieval/evaluation.py: recall@N on hand-made cases, feature extraction order, the full test loop."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from helpers import write_image
from datasets_ws import BaseDataset, radius_neighbors
from retrieval import evaluation
from retrieval.evaluation import (InferenceConfig, evaluate_descriptors, extract_features, hits_matrix,
                                  recalls_from_hits)
from dataio.images import normalize

# Database on a line every 100 m; query 2 is 700 m from everything (no positive: always a failure).
DB_UTMS = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [300.0, 0.0]])
Q_UTMS = np.array([[5.0, 0.0], [195.0, 0.0], [1000.0, 0.0], [298.0, 0.0]])


def toy_dataset(threshold: float = 25.0) -> SimpleNamespace:
    """The attributes of a BaseDataset that evaluate_descriptors reads."""
    return SimpleNamespace(database_utms=DB_UTMS, queries_utms=Q_UTMS, val_positive_dist_threshold=threshold,
                           soft_positives_per_query=radius_neighbors(DB_UTMS, Q_UTMS, threshold),
                           dataset_name="toy", split="test")


def test_hits_matrix_and_recalls_by_hand() -> None:
    predictions = np.array([[1, 0, 2], [2, 1, 0], [0, 1, 2], [0, 1, 2]])
    hits = hits_matrix(predictions, Q_UTMS, DB_UTMS, 25.0)
    expected = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(hits, expected)
    # R@1: q1 only -> 1/4; R@2, R@3: q0 and q1 -> 2/4; N beyond K uses all K columns
    assert recalls_from_hits(hits, [1, 2, 3, 5]) == {1: 25.0, 2: 50.0, 3: 50.0, 5: 50.0}


def test_hits_use_the_threshold_inclusively() -> None:
    hits = hits_matrix(np.array([[0], [0]]), np.array([[3.0, 4.0], [3.0, 4.1]]), np.array([[0.0, 0.0]]), 5.0)
    assert hits[:, 0].tolist() == [True, False]


def test_evaluate_descriptors_by_hand() -> None:
    db = np.array([[0, 0], [1, 0], [2, 0], [3, 0]], dtype=np.float32)
    # q0 ranks db 1,0,2,3 (positive db0 at rank 2); q1 ranks db 2 first (hit at 1);
    # q2 has no positive; q3 ranks its positive db3 last (hit at 4)
    q = np.array([[0.9, 0], [2.1, 0], [-5, 0], [0.2, 0]], dtype=np.float32)
    result = evaluate_descriptors(db, q, toy_dataset(), [1, 2, 3, 4])
    assert result.recalls == {1: 25.0, 2: 50.0, 3: 50.0, 4: 75.0}
    np.testing.assert_array_equal(result.predictions, [[1, 0, 2, 3], [2, 3, 1, 0], [0, 1, 2, 3], [0, 1, 2, 3]])
    np.testing.assert_allclose(result.distances[0], [0.01, 0.81, 1.21, 4.41], rtol=1e-5)
    assert result.queries_without_positives == 1 and result.info["queries_without_positives"] == 1
    assert result.info["queries_num"] == 4 and result.info["database_num"] == 4


def test_evaluate_descriptors_k_capped_by_database() -> None:
    db = np.eye(4, dtype=np.float32)
    result = evaluate_descriptors(db, db.copy(), toy_dataset(), [1, 10])
    assert result.predictions.shape == (4, 4)
    assert result.recalls == {1: 50.0, 10: 75.0}  # q0→db0, q1→db1 (miss), q2 none, q3→db3


class MeanColour(nn.Module):
    """B×3×H×W → B×3 mean colour: a parameter-free 'model' with predictable descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + 0 * self.dummy


def test_full_test_loop_on_images(tmp_path: Path) -> None:
    base = tmp_path / "toy" / "images" / "test"
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    for i, (utm, c) in enumerate(zip(DB_UTMS[:3], colours)):
        write_image(base / "database" / f"@{utm[0]}@{utm[1]}@{i}@.jpg", 8, c)
    # query 0 looks like db 0 and is there (hit); query 1 looks like db 1 but stands at db 2 (miss at R@1)
    write_image(base / "queries" / "@1.0@0.0@0@.jpg", 8, (190, 10, 0))  # names sort as the query order
    write_image(base / "queries" / "@201.0@0.0@1@.jpg", 8, (10, 190, 0))
    ds = BaseDataset(tmp_path, "toy", "test", resize=(8, 8))
    np.testing.assert_allclose(ds.queries_utms, [[1.0, 0.0], [201.0, 0.0]])
    result = evaluation.test(MeanColour(), ds, [1, 3], InferenceConfig(batch_size=2))
    assert result.predictions[:, 0].tolist() == [0, 1]
    assert result.recalls == {1: 50.0, 3: 100.0}


def test_extract_features_keeps_the_order_of_indices(tiny_world: Path) -> None:
    ds = BaseDataset(tiny_world, "synthetic", "val", resize=(32, 32))
    indices = [7, 2, ds.database_num + 3, 0, 5]
    feats = extract_features(MeanColour(), ds, indices, InferenceConfig(batch_size=2))
    ref = torch.stack([normalize(ds.load_uint8(i)).mean(dim=(1, 2)) for i in indices]).numpy()
    assert feats.shape == (5, 3) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threshold,expected_r1", [(25.0, 25.0), (150.0, 50.0)])
def test_threshold_changes_success(threshold: float, expected_r1: float) -> None:
    predictions = np.array([[1], [2], [0], [0]])
    hits = hits_matrix(predictions, Q_UTMS, DB_UTMS, threshold)
    # at 150 m, q0's prediction db1 (95 m away) becomes a hit too
    assert recalls_from_hits(hits, [1]) == {1: expected_r1}
