"""What localize.py writes: per-photo records, predictions.csv, predictions.geojson, prediction pictures and plots."""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np

from localization.index import DatabaseIndex
from localization.predict import Predictions
from runs.visualize import load_thumbnail, prediction_picture, pyplot, save_figure

PICTURE_HEIGHT = 160  # px of each image in a prediction picture (as eval.py)


def _num(x: float, digits: int) -> float | None:
    """x rounded, None for NaN/inf (JSON has no NaN)."""
    return round(float(x), digits) if math.isfinite(x) else None


def records(pred: Predictions, db: DatabaseIndex) -> list[dict]:
    """One dict per photo: predicted position (UTM, zone, lat/lon), confidence, truth if known, and the matches."""
    pos, m = pred.position, pred.matches
    errors = pred.errors_m()
    files = [db.files[i] for i in pred.rows.ravel()]
    out = []
    for q, photo in enumerate(pred.photos):
        ranks = range(q * pred.top_n, (q + 1) * pred.top_n)
        rec = {"photo": str(photo), "status": "ok", "easting": _num(pos.utm[q, 0], 2),
               "northing": _num(pos.utm[q, 1], 2), "utm_zone": pos.zone[q], "latitude": _num(pos.latlon[q, 0], 7),
               "longitude": _num(pos.latlon[q, 1], 7), "confidence": _num(pred.confidence[q], 4)}
        if errors is not None:
            rec.update(true_easting=_num(pred.truth[q, 0], 2), true_northing=_num(pred.truth[q, 1], 2),
                       error_m=_num(errors[q, 0], 2))
        rec["matches"] = [{"rank": r + 1, "file": files[i], "easting": _num(m.utm[i, 0], 2),
                           "northing": _num(m.utm[i, 1], 2), "latitude": _num(m.latlon[i, 0], 7),
                           "longitude": _num(m.latlon[i, 1], 7),
                           "descriptor_distance": _num(math.sqrt(max(pred.distances[q, r], 0.0)), 5)}
                          for r, i in enumerate(ranks)]
        out.append(rec)
    return out


def error_records(errors: list[tuple[str, str]]) -> list[dict]:
    """One dict per input that could not be localized."""
    return [{"photo": item, "status": "error", "message": msg} for item, msg in errors]


MATCH_FIELDS = ("file", "easting", "northing", "descriptor_distance")


def write_csv(path: Path, recs: list[dict], top_n: int) -> Path:
    """predictions.csv: one row per input; match<k>_<field> columns for k = 1..top_n."""
    labelled = any("error_m" in r for r in recs)
    fields = ["photo", "status", "message", "easting", "northing", "utm_zone", "latitude", "longitude", "confidence"]
    fields += ["true_easting", "true_northing", "error_m"] if labelled else []
    fields += [f"match{k}_{f}" for k in range(1, top_n + 1) for f in MATCH_FIELDS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, restval="")
        writer.writeheader()
        for r in recs:
            row = {k: v for k, v in r.items() if k != "matches"}
            row.update({f"match{m['rank']}_{f}": m[f] for m in r.get("matches", []) for f in MATCH_FIELDS})
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def write_geojson(path: Path, recs: list[dict]) -> bool:
    """predictions.geojson: one Point per localized photo, its top-N and confidence as properties.

    Coordinates are [longitude, latitude] (RFC 7946) when every prediction has them; otherwise [easting,
    northing] in metres, which GIS tools read as degrees: the return value (False) and a warning say so.
    """
    ok = [r for r in recs if r["status"] == "ok"]
    geographic = all(r["latitude"] is not None for r in ok)
    features = [{"type": "Feature", "properties": {k: v for k, v in r.items() if k != "status"},
                 "geometry": {"type": "Point", "coordinates": [r["longitude"], r["latitude"]] if geographic
                              else [r["easting"], r["northing"]]}} for r in ok]
    collection = {"type": "FeatureCollection", "features": features}
    if not geographic:
        collection["coordinates"] = "UTM easting, northing (metres): the database names carry no UTM zone"
        logging.warning(f"{path.name} holds UTM easting/northing, not longitude/latitude: the database names carry "
                        f"no UTM zone; pass --utm_zone (e.g. 17T) to place the points in GIS tools")
    path.write_text(json.dumps(collection, indent=1))
    return geographic


def save_pictures(pred: Predictions, db: DatabaseIndex, folder: Path, radius: float, limit: int | None) -> list[Path]:
    """One JPEG per photo (the first `limit`): the photo beside its top-N, as eval.py draws predictions.

    Frames are green within `radius` metres of the photo's true position (labelled photos) or of the top-1 match.
    """
    folder.mkdir(parents=True, exist_ok=True)
    errors = pred.errors_m()
    utms = pred.match_utms()  # Q×N×2
    dist = errors if errors is not None else np.linalg.norm(utms - utms[:, :1], axis=2)  # Q×N metres
    origin = "the true position" if errors is not None else "the top-1 match"
    paths = []
    for q, photo in enumerate(pred.photos[:limit]):
        pic = prediction_picture(load_thumbnail(photo, PICTURE_HEIGHT),
                                 [load_thumbnail(p, PICTURE_HEIGHT) for p in db.paths(pred.rows[q])], dist[q],
                                 radius, f"{photo.name}, confidence {pred.confidence[q]:.2f}, metres from {origin}")
        paths.append(folder / f"{q:05d}_{photo.stem[:60]}.jpg")
        pic.save(paths[-1], quality=90)
    return paths


def plot_map(path: Path, pred: Predictions, db: DatabaseIndex) -> Path:
    """Database positions (grey) and predicted positions coloured by confidence; true positions when known."""
    fig, ax = pyplot().subplots(figsize=(7, 6))
    ax.scatter(*db.positions.utm.T, s=4, c="0.75", label=f"database ({len(db.files)})")
    pos = pred.position.utm
    if pred.truth is not None:
        ax.plot(np.stack([pred.truth[:, 0], pos[:, 0]]), np.stack([pred.truth[:, 1], pos[:, 1]]), c="0.4", lw=0.5)
        ax.scatter(*pred.truth.T, s=14, marker="x", c="k", label="true position")
    sc = ax.scatter(*pos.T, s=22, c=pred.confidence, cmap="viridis", vmin=0, vmax=1, edgecolors="k",
                    linewidths=0.4, label=f"predicted ({len(pos)})")
    fig.colorbar(sc, ax=ax, label="confidence")
    ax.set(xlabel="UTM easting (m)", ylabel="UTM northing (m)", title="database and predicted positions")
    ax.set_aspect("equal", adjustable="datalim")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def plot_confidence(path: Path, result: dict) -> Path:
    """Precision at the radius against the score threshold (left) and against the share of photos kept (right)."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
    for name, d in result["definitions"].items():
        rows = d["by_threshold"]
        line, = left.plot([r["threshold"] for r in rows], [100 * r["precision"] for r in rows], marker="o", ms=3,
                          label=f"{name}: precision")
        left.plot([r["threshold"] for r in rows], [100 * r["coverage"] for r in rows], ls="--", c=line.get_color(),
                  label=f"{name}: photos kept")
        cov, prec = d["curve"]
        right.plot(100 * np.asarray(cov), 100 * np.asarray(prec), drawstyle="steps-post",
                   label=f"{name} (AP {100 * d['average_precision']:.1f})")
    radius = f"{result['radius_m']:g} m"
    left.set(xlabel="confidence threshold", ylabel="%", title=f"precision at {radius} vs. threshold", ylim=(0, 101))
    right.set(xlabel="photos kept (%)", ylabel=f"precision at {radius} (%)", ylim=(0, 101),
              title=f"{result['photos']} labelled photos")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
