"""Look at a datasets_vg dataset: image counts, UTM maps, positives, nearest-database distances, density.

Example: python -m tools.analyze_dataset --datasets_folder data --dataset_name pitts30k --out analysis/pitts30k
Writes PNG plots and summary.json (every number behind the plots) into --out. All statistics come from the
UTM coordinates in the file names; only the sample grids open images (skip them with --no_grids).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from tools import dataset_plots as dp
from commons import CliParser, UserError, run_cli, setup_logging
from datasets_ws import DATABASE_FOLDER_NAMES, IMAGE_EXTENSIONS, find_subfolder, list_images, split_folder, utms_of
from dataio.images import ImageReadError
from util import write_json
from runs.visualize import CORRECT, NEUTRAL, QUERY, framed_tile, load_thumbnail, save_image, tile_grid, utm_caption

SPLIT_ORDER = ("train", "val", "test")
INT_HIST_MAX_BINS = 80  # integer data spanning more values than this gets HIST_BINS equal bins
HIST_BINS = 40
GRID_QUERIES = 4  # queries shown beside their positives


@dataclass
class Split:
    """File lists and UTMs (N×2 easting, northing) of one split."""
    name: str
    database_paths: list[Path]
    queries_paths: list[Path]
    database_utms: np.ndarray
    queries_utms: np.ndarray


def load_split(datasets_folder: str | None, dataset_name: str, split: str) -> Split:
    """List the images of a split and parse their UTMs from the file names (no image is opened)."""
    folder = split_folder(datasets_folder, dataset_name, split)
    db = list_images(find_subfolder(folder, DATABASE_FOLDER_NAMES, "database"))
    q = list_images(find_subfolder(folder, ("queries",), "queries"))
    for what, paths in (("database", db), ("queries", q)):
        if not paths:
            raise UserError(f"no images in the {what} of {folder}; add images ({'/'.join(IMAGE_EXTENSIONS)}) or "
                            f"choose other --splits")
    return Split(split, db, q, utms_of(db), utms_of(q))


def default_splits(datasets_folder: str | None, dataset_name: str) -> list[str]:
    """Every split folder of the dataset, train/val/test first."""
    images = Path(datasets_folder or "") / dataset_name / "images"
    if not datasets_folder or not images.is_dir():
        split_folder(datasets_folder, dataset_name, "test")  # raises the actionable error
    found = [p.name for p in images.iterdir() if p.is_dir()]
    if not found:
        raise UserError(f"{images} has no split folders; expected e.g. {images}/test/{{database,queries}}")
    return sorted(found, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def describe(values: np.ndarray) -> dict:
    """min/median/mean/max of values as floats (None when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {"min": float(v.min()), "median": float(np.median(v)), "mean": float(v.mean()), "max": float(v.max())}


def histogram(values: np.ndarray, integer: bool = False) -> dict:
    """{"edges", "counts"}: one bin per integer for narrow integer data, else HIST_BINS equal bins."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"edges": [], "counts": []}
    if integer and v.max() - v.min() <= INT_HIST_MAX_BINS:
        bins = np.arange(v.min() - 0.5, v.max() + 1.5)
    else:
        bins = np.linspace(v.min(), v.max() if v.max() > v.min() else v.min() + 1, HIST_BINS + 1)
    counts, edges = np.histogram(v, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def positives_per_query(database_utms: np.ndarray, queries_utms: np.ndarray, radius: float) -> np.ndarray:
    """Q int64: database images within `radius` metres (inclusive) of each query, from one sparse radius search."""
    graph = NearestNeighbors().fit(database_utms).radius_neighbors_graph(queries_utms, radius, mode="connectivity")
    return np.diff(graph.indptr).astype(np.int64)


def nearest_distances(reference: np.ndarray, points: np.ndarray, skip_self: bool = False) -> np.ndarray:
    """Distance (metres) from each of points to its nearest reference point (the second nearest when skip_self)."""
    k = 2 if skip_self else 1
    if len(reference) < k:
        return np.zeros(0)
    dist, _ = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(points)
    return dist[:, k - 1]


def positives_stats(counts: np.ndarray) -> dict:
    """Summary of positives-per-query counts Q."""
    return {**describe(counts), "total_pairs": int(counts.sum()),
            "queries_without_positives": int((counts == 0).sum()), "histogram": histogram(counts, integer=True)}


def density_stats(database_utms: np.ndarray) -> dict:
    """Images per distinct database position and spacing between neighbouring distinct positions."""
    positions, per_position = np.unique(database_utms, axis=0, return_counts=True)
    spacing = nearest_distances(positions, positions, skip_self=True)
    return {"distinct_positions": int(len(positions)),
            "images_per_position": {**describe(per_position), "histogram": histogram(per_position, integer=True)},
            "neighbour_spacing_m": {**describe(spacing), "histogram": histogram(spacing)}}


def split_stats(database_utms: np.ndarray, queries_utms: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Every number behind the plots of one split; thresholds maps a name (train, eval) to metres."""
    near = nearest_distances(database_utms, queries_utms)
    return {"database_num": int(len(database_utms)), "queries_num": int(len(queries_utms)),
            "positives_per_query": {f"{t:g}": positives_stats(positives_per_query(database_utms, queries_utms, t))
                                    for t in thresholds.values()},
            "nearest_database_distance_m": {**describe(near), "histogram": histogram(near)},
            "database_density": density_stats(database_utms),
            "extent_m": {"easting": describe(np.r_[database_utms[:, 0], queries_utms[:, 0]]),
                         "northing": describe(np.r_[database_utms[:, 1], queries_utms[:, 1]])}}


def dataset_summary(name: str, utms: dict[str, tuple[np.ndarray, np.ndarray]],
                    thresholds: dict[str, float]) -> dict:
    """Statistics of every split (utms: split → (database N×2, queries Q×2)) and the gaps between splits."""
    points = {s: np.concatenate(pair) for s, pair in utms.items()}
    gaps = {f"{a}-{b}": float(nearest_distances(points[a], points[b]).min())
            for a, b in itertools.combinations(points, 2)}
    return {"dataset": name, "thresholds_m": thresholds,
            "splits": {s: split_stats(db, q, thresholds) for s, (db, q) in utms.items()},
            "min_distance_between_splits_m": gaps}


def plot_statistics(summary: dict, utms: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> list[Path]:
    """All charts (no images opened): counts, one map per split plus one of all splits, histograms."""
    gaps = summary["min_distance_between_splits_m"]
    everything = np.concatenate([np.concatenate(p) for p in utms.values()])
    origin = np.floor(everything.min(axis=0) / 100) * 100
    colours = dict(zip(utms, itertools.cycle(dp.SPLIT_COLOURS)))
    size = float(np.clip(3000 / len(everything), 0.3, 12))
    paths = [dp.plot_counts(summary, out / "counts.png"),
             dp.plot_map([(s, np.concatenate(pair), colours[s], size) for s, pair in utms.items()], origin,
                         out / "map_all_splits.png", f"{summary['dataset']}: database + queries of each split" +
                         (f"\n(nearest images of two splits: {min(gaps.values()):.0f} m apart)" if gaps else ""))]
    for s, (db, q) in utms.items():
        st = summary["splits"][s]
        paths += [dp.plot_map([("database", db, "tab:blue", size), ("queries", q, "tab:orange", size)], origin,
                              out / f"map_{s}.png", f"{summary['dataset']} {s}: database and queries"),
                  dp.plot_positives(st, s, summary["thresholds_m"], out / f"positives_{s}.png"),
                  dp.plot_nearest_database(st, s, summary["thresholds_m"], out / f"nearest_database_{s}.png"),
                  dp.plot_density(st, s, out / f"density_{s}.png")]
    return paths


@dataclass
class Tiles:
    """Makes the grids' tiles (thumbnails `height` px high). An unreadable image stops the analysis, or, with
    skip_corrupt, is left out of the grids and listed in `skipped`."""
    height: int
    skip_corrupt: bool
    skipped: list[Path] = field(default_factory=list)

    def __call__(self, path: Path, frame: tuple[int, int, int], caption: str) -> Image.Image | None:
        try:
            return framed_tile(load_thumbnail(path, self.height), frame, caption)
        except ImageReadError as e:
            if not self.skip_corrupt:
                raise UserError(f"{e}; or pass --skip_corrupt to leave such images out of the grids") from None
            self.skipped.append(e.path)
            return None


def samples_grid(split: Split, n: int, rng: np.random.Generator, tile: Tiles) -> Image.Image | None:
    """Up to n random database images and n random queries, captioned with their UTMs (None: all unreadable)."""
    db_ids = rng.choice(len(split.database_paths), min(n, len(split.database_paths)), replace=False)
    q_ids = rng.choice(len(split.queries_paths), min(n, len(split.queries_paths)), replace=False)
    db = [tile(split.database_paths[i], NEUTRAL, utm_caption(split.database_utms[i])) for i in db_ids]
    q = [tile(split.queries_paths[i], QUERY, utm_caption(split.queries_utms[i])) for i in q_ids]
    sections = [(title, [t for t in ts if t is not None]) for title, ts in (("database samples", db),
                                                                            ("query samples", q))]
    return tile_grid(sections, n) if any(ts for _, ts in sections) else None


def positives_grid(split: Split, threshold: float, n: int, rng: np.random.Generator,
                   tile: Tiles) -> Image.Image | None:
    """Random queries with positives, each beside its n-1 nearest positives; None when no query has one."""
    with_pos = np.flatnonzero(positives_per_query(split.database_utms, split.queries_utms, threshold) > 0)
    sections = []
    for q in rng.permutation(with_pos)[:GRID_QUERIES]:
        d = np.linalg.norm(split.database_utms - split.queries_utms[q], axis=1)  # N_db metres
        near = np.argsort(d, kind="stable")[:n - 1]
        near = near[d[near] <= threshold]
        query = tile(split.queries_paths[q], QUERY, "query\n")
        tiles = [tile(split.database_paths[i], CORRECT, f"db {i}\n{d[i]:.1f} m") for i in near]
        if query is not None:
            sections.append((f"query {q}: {int((d <= threshold).sum())} positives within {threshold:g} m "
                             f"(nearest shown)", [query] + [t for t in tiles if t is not None]))
    return tile_grid(sections, n) if sections else None


def sample_grids(split: Split, out: Path, threshold: float, n: int, rng: np.random.Generator,
                 tile: Tiles) -> list[Path]:
    """Write samples_<split>.png and query_positives_<split>.png (the only step that opens images)."""
    paths = []
    for name, grid in (("samples", samples_grid(split, n, rng, tile)),
                       ("query_positives", positives_grid(split, threshold, n, rng, tile))):
        if grid is None:
            logging.warning(f"{split.name}: no {name.replace('_', ' ')} grid (no query has a positive within "
                            f"{threshold:g} m, or no readable image)")
        else:
            paths.append(save_image(grid, out / f"{name}_{split.name}.png"))
    return paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and validate the command line."""
    p = CliParser(prog="python -m tools.analyze_dataset", description=__doc__.splitlines()[0],
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets_folder", default=os.environ.get("DATASETS_FOLDER"),
                   help="folder holding <dataset_name>/images/...; defaults to $DATASETS_FOLDER")
    p.add_argument("--dataset_name", default="pitts30k")
    p.add_argument("--out", required=True, help="output folder for the PNGs and summary.json")
    p.add_argument("--splits", nargs="+", default=None, help="default: every split folder of the dataset")
    p.add_argument("--train_positives_dist_threshold", type=float, default=10.0, help="metres")
    p.add_argument("--val_positive_dist_threshold", type=float, default=25.0, help="metres (evaluation)")
    p.add_argument("--grid_size", type=int, default=6, help="images per row of the sample grids")
    p.add_argument("--grid_height", type=int, default=96, help="pixel height of each image in the grids")
    p.add_argument("--no_grids", action="store_true", help="skip the image grids (the only step that opens images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random grid samples")
    p.add_argument("--skip_corrupt", action="store_true", help="leave unreadable images out of the grids (listed)")
    args = p.parse_args(argv)
    for name in ("train_positives_dist_threshold", "val_positive_dist_threshold"):
        if not 0 < getattr(args, name) < math.inf:
            raise UserError(f"--{name} must be a finite number > 0 of metres, got {getattr(args, name)}")
    if args.grid_size < 2:
        raise UserError(f"--grid_size must be >= 2 (a query and a positive), got {args.grid_size}")
    if args.grid_height < 8:
        raise UserError(f"--grid_height must be >= 8 pixels, got {args.grid_height}")
    if args.splits and len(set(args.splits)) != len(args.splits):
        raise UserError(f"--splits has duplicates: {' '.join(args.splits)}; list each split once")
    return args


def make_out(out: Path) -> None:
    """Create the --out folder, with a one-line error when it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out} ({e.strerror}); choose another folder") from None


def report_skipped(tile: Tiles, summary: dict) -> None:
    """With --skip_corrupt: list the images left out of the grids (console: the first ten) and in summary.json."""
    if tile.skipped:
        logging.warning(f"--skip_corrupt: left {len(tile.skipped)} unreadable images out of the grids:" +
                        "".join(f"\n  {p}" for p in tile.skipped[:10]) +
                        (f"\n  ... and {len(tile.skipped) - 10} more" if len(tile.skipped) > 10 else ""))
        summary["unreadable_in_grids"] = [str(p) for p in tile.skipped]


def main(argv: list[str] | None = None) -> dict:
    """Analyze the dataset, write summary.json (first: a failed figure loses no number), the plots and the grids
    into --out, and return the summary."""
    args = parse_args(argv)
    setup_logging(None)
    splits = [load_split(args.datasets_folder, args.dataset_name, s)
              for s in args.splits or default_splits(args.datasets_folder, args.dataset_name)]
    out = Path(args.out)
    make_out(out)  # the inputs are valid: a failed invocation leaves nothing
    utms = {s.name: (s.database_utms, s.queries_utms) for s in splits}
    thresholds = {"train": args.train_positives_dist_threshold, "eval": args.val_positive_dist_threshold}
    summary = dataset_summary(args.dataset_name, utms, thresholds)
    write_json(out / "summary.json", summary)
    for s, st in summary["splits"].items():
        pos = st["positives_per_query"][f"{args.val_positive_dist_threshold:g}"]
        logging.info(f"{s}: {st['database_num']} database, {st['queries_num']} queries, median "
                     f"{pos['median']:g} positives within {args.val_positive_dist_threshold:g} m, "
                     f"{pos['queries_without_positives']} queries without positives")
    paths = plot_statistics(summary, utms, out)
    if not args.no_grids:
        rng, tile = np.random.default_rng(args.seed), Tiles(args.grid_height, args.skip_corrupt)
        for s in splits:
            paths += sample_grids(s, out, args.val_positive_dist_threshold, args.grid_size, rng, tile)
        report_skipped(tile, summary)
    summary["figures"] = [p.name for p in paths]
    write_json(out / "summary.json", summary)
    logging.info(f"wrote {len(paths)} figures and summary.json to {out}")
    return summary


if __name__ == "__main__":
    run_cli(main)
