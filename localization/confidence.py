"""Confidence of a predicted position, and the evaluation that decides between definitions on labelled photos.

Two definitions, both in [0, 1], higher = more likely right:
  * "ratio": 1 - L2(top-1) / L2(top-k) over the descriptor distances; a top-1 match much closer than the k-th
    stands out from the crowd (Lowe's ratio test, applied to retrieval).
  * "agreement": the share of the top-2..top-k database matches lying within `radius` metres of the top-1 match;
    several neighbours of the same place agree on the position.

The evaluation ranks labelled photos by score and reports the precision of the top-1 position at `radius` metres
among the photos kept at each score threshold (and at fixed shares of photos kept), and the average precision
(area under that precision-coverage curve, ties kept together), which decides the default definition.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFINITIONS = ("ratio", "agreement")
# Decided by the average precision of each definition on the test split of the e2e synthetic world (README,
# "Localizing new photos"): re-run localize.py on labelled photos to compare them on other data.
DEFAULT_DEFINITION = "ratio"  # average precision 89.3 against 54.8 for "agreement" (300 queries)
COVERAGES = (1.0, 0.75, 0.5, 0.25, 0.1)  # shares of photos kept, for the comparison table
MIN_LABELLED_PHOTOS = 20  # fewer labelled photos: no evaluation (a precision curve over a handful means nothing)


def ratio_confidence(distances: np.ndarray, k: int) -> np.ndarray:
    """Q scores from Q×K squared L2 descriptor distances (nearest first): 1 - sqrt(d_1 / d_k), 0 if d_k is 0."""
    d = np.maximum(np.asarray(distances, dtype=np.float64)[:, [0, min(k, distances.shape[1]) - 1]], 0.0)  # Q×2
    ratio = np.divide(np.sqrt(d[:, 0]), np.sqrt(d[:, 1]), out=np.ones(len(d)), where=d[:, 1] > 0)
    return np.clip(1.0 - ratio, 0.0, 1.0)


def agreement_confidence(match_utms: np.ndarray, k: int, radius: float) -> np.ndarray:
    """Q scores from the Q×K×2 UTM positions of the ranked matches: share of ranks 2..k within radius of rank 1."""
    k = min(k, match_utms.shape[1])
    if k < 2:
        return np.ones(len(match_utms))
    dist = np.linalg.norm(match_utms[:, 1:k] - match_utms[:, :1], axis=2)  # Q×(k-1) metres from the top-1
    return (dist <= radius).mean(axis=1)


def confidences(distances: np.ndarray, match_utms: np.ndarray, k: int, radius: float) -> dict[str, np.ndarray]:
    """Every definition's Q scores, by name."""
    return {"ratio": ratio_confidence(distances, k), "agreement": agreement_confidence(match_utms, k, radius)}


def average_precision(scores: np.ndarray, correct: np.ndarray) -> float:
    """Area under the precision-recall curve of `correct` ranked by decreasing score (equal scores together).

    Sum over distinct thresholds t of precision(score >= t) × (new correct photos at t) / (all correct photos);
    0 when no photo is correct.
    """
    correct = np.asarray(correct, dtype=bool)
    if not correct.any():
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, c = np.asarray(scores)[order], correct[order]
    last_of_group = np.r_[s[1:] != s[:-1], True]  # the threshold between s[i] and s[i+1]
    tp = np.cumsum(c)[last_of_group]
    kept = (np.flatnonzero(last_of_group) + 1).astype(np.float64)
    new_tp = np.diff(np.r_[0, tp])
    return float(np.sum(tp / kept * new_tp) / c.sum())


def precision_at(scores: np.ndarray, correct: np.ndarray, thresholds: Sequence[float]) -> list[dict]:
    """For each threshold: share of photos with score >= threshold (coverage) and the precision among them."""
    scores, correct = np.asarray(scores), np.asarray(correct, dtype=bool)
    kept = scores[None, :] >= np.asarray(thresholds, dtype=np.float64)[:, None]  # T×Q
    n = kept.sum(axis=1)
    precision = np.divide((kept & correct).sum(axis=1), n, out=np.full(len(n), np.nan), where=n > 0)
    return [{"threshold": float(t), "coverage": float(c), "precision": float(p)}
            for t, c, p in zip(thresholds, n / len(scores), precision)]


def precision_curve(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, precision) at every distinct score used as threshold, from the highest down."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, c = np.asarray(scores)[order], np.asarray(correct, dtype=bool)[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) + 1  # photos kept at each distinct threshold
    return ends / len(s), np.cumsum(c)[ends - 1] / ends


def precision_at_coverage(scores: np.ndarray, correct: np.ndarray, coverages: Sequence[float]) -> list[dict]:
    """Precision when keeping the best-scored share c of the photos (ties at the cut are all kept)."""
    ranked = np.sort(np.asarray(scores))[::-1]
    cuts = [ranked[max(1, int(np.ceil(c * len(ranked)))) - 1] for c in coverages]
    return [{"share": float(c), **row} for c, row in zip(coverages, precision_at(scores, correct, cuts))]


def evaluate(scores: dict[str, np.ndarray], errors_m: np.ndarray, radius: float,
             thresholds: Sequence[float] = tuple(np.round(np.linspace(0, 1, 21), 2))) -> dict:
    """Compare confidence definitions on labelled photos (top-1 error in metres, correct within radius)."""
    correct = np.asarray(errors_m) <= radius
    out = {"radius_m": float(radius), "photos": int(len(correct)), "top1_precision": float(correct.mean()),
           "definitions": {name: {"average_precision": average_precision(s, correct),
                                  "by_threshold": precision_at(s, correct, thresholds),
                                  "by_coverage": precision_at_coverage(s, correct, COVERAGES),
                                  "curve": [a.tolist() for a in precision_curve(s, correct)]}
                           for name, s in scores.items()}}
    out["best"] = max(out["definitions"], key=lambda n: out["definitions"][n]["average_precision"])
    return out


def markdown_table(result: dict) -> str:
    """The comparison as a markdown table: precision at fixed shares of photos kept, and the average precision."""
    names = list(result["definitions"])
    head = "| best-scored share | " + " | ".join(f"{n}: threshold → kept, precision" for n in names) + " |"
    rows = [head, "|---" * (len(names) + 1) + "|"]
    for i, share in enumerate(COVERAGES):
        cells = [result["definitions"][n]["by_coverage"][i] for n in names]
        rows.append(f"| {share:.0%} | " + " | ".join(
            f"≥ {c['threshold']:.3f} → {c['coverage']:.0%}, {100 * c['precision']:.1f} %" for c in cells) + " |")
    rows.append("| average precision | " + " | ".join(f"{100 * result['definitions'][n]['average_precision']:.1f}"
                                                      for n in names) + " |")
    return "\n".join(rows)
