"""From photo descriptors to answers: nearest database images, predicted position and confidence per photo."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from commons import UserError
from datasets_ws import utms_of
from retrieval.indexing import search
from localization.confidence import confidences
from localization.geo import Positions
from localization.index import DatabaseIndex


@dataclass
class Predictions:
    """Answers for Q photos: top-N database rows (nearest first), their distances, the predicted positions (those of
    the top-1 rows) and confidences. truth: Q×2 UTM from the photo names when every photo carries one."""
    photos: list[Path]
    rows: np.ndarray  # Q×N database rows
    distances: np.ndarray  # Q×N squared L2 descriptor distances
    matches: Positions  # positions of rows.ravel(), (Q·N) entries
    confidence: np.ndarray  # Q, the chosen definition
    scores: dict[str, np.ndarray]  # Q per definition
    search_seconds: float
    truth: np.ndarray | None = None  # Q×2

    @property
    def top_n(self) -> int:
        """Matches kept per photo."""
        return self.rows.shape[1]

    @property
    def position(self) -> Positions:
        """Predicted positions: those of the top-1 matches."""
        return self.matches.subset(np.arange(len(self.photos)) * self.top_n)

    def match_utms(self) -> np.ndarray:
        """Q×N×2 UTM positions of the matches."""
        return self.matches.utm.reshape(len(self.photos), self.top_n, 2)

    def errors_m(self) -> np.ndarray | None:
        """Q×N metres from each photo's true position to its matches (None without truth)."""
        if self.truth is None:
            return None
        return np.linalg.norm(self.match_utms() - self.truth[:, None, :], axis=2)


def labels_of(paths: list[Path]) -> np.ndarray | None:
    """Q×2 UTM positions from the photo names when all of them carry one (datasets_vg names), else None."""
    try:
        return utms_of(paths)
    except UserError:
        return None


def unique_rows(paths: list[Path]) -> tuple[list[Path], np.ndarray]:
    """Distinct photos (by resolved path) and, for each input, its row among them: a photo given twice is encoded
    once and gets the same answer."""
    keys = [p.resolve() for p in paths]
    first: dict[Path, int] = {}  # resolved path -> its first input index
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    row_of = {k: j for j, k in enumerate(first)}
    return [paths[i] for i in first.values()], np.array([row_of[k] for k in keys], dtype=np.int64)


def predict(db: DatabaseIndex, feats: np.ndarray, photos: list[Path], top_n: int, confidence_k: int,
            radius: float, definition: str) -> Predictions:
    """Search feats (Q×D) in the database index; keep top_n matches; score with `definition` over confidence_k."""
    start = time.perf_counter()
    distances, rows = search(db.index, feats, max(top_n, confidence_k))  # Q×K
    seconds = time.perf_counter() - start
    depth = rows.shape[1]
    all_pos = db.positions.subset(rows.ravel())
    scores = confidences(distances, all_pos.utm.reshape(len(rows), depth, 2), confidence_k, radius)
    n = min(top_n, depth)
    keep = (np.arange(len(rows))[:, None] * depth + np.arange(n)).ravel()  # top-n entries of each photo
    logging.debug(f"searched {len(rows)} photos in {seconds:.4f} s")
    return Predictions(photos, rows[:, :n], distances[:, :n], all_pos.subset(keep), scores[definition], scores,
                       seconds, labels_of(photos))
