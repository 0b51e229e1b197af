"""Datasets in the datasets_vg layout: image lists, UTM labels, positives, and image loading.

Layout: <datasets_folder>/<dataset_name>/images/<split>/{database|gallery,queries}/**/*.{jpg,png}
File names carry UTM coordinates: fields 1 and 2 of the name split on '@' are easting and northing.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.utils.data as data
from sklearn.neighbors import NearestNeighbors

from commons import UserError
from images import build_resize, image_problem, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DATABASE_FOLDER_NAMES = ("database", "gallery")


def parse_utm(path: str | Path) -> tuple[float, float]:
    """Return (easting, northing) parsed from fields 1 and 2 of the file name split on '@'."""
    fields = Path(path).name.split("@")
    try:
        utm = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        utm = (float("nan"), float("nan"))
    if not all(math.isfinite(v) for v in utm):
        raise UserError(f"file name without UTM coordinates: {path}; names must look like "
                        f"'@<easting>@<northing>@...@.jpg' (datasets_vg format), rename or remove it")
    return utm


def list_images(folder: Path) -> list[Path]:
    """Sorted image files below folder (recursively)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def split_folder(datasets_folder: str | None, dataset_name: str, split: str) -> Path:
    """Path of <datasets_folder>/<dataset_name>/images/<split>, with actionable errors when missing."""
    if not datasets_folder:
        raise UserError("no datasets folder given; pass --datasets_folder or set DATASETS_FOLDER")
    root = Path(datasets_folder)
    if not root.is_dir():
        raise UserError(f"datasets folder {root} does not exist; check --datasets_folder / DATASETS_FOLDER")
    ds = root / dataset_name
    if not (ds / "images").is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
        raise UserError(f"dataset '{dataset_name}' not found in {root} (expected {ds}/images); "
                        f"available: {', '.join(found) or 'none'}; check --dataset_name")
    folder = ds / "images" / split
    if not folder.is_dir():
        have = sorted(p.name for p in (ds / "images").iterdir() if p.is_dir())
        raise UserError(f"split '{split}' missing: {folder} does not exist (dataset has: {', '.join(have)}); "
                        f"add it in the datasets_vg layout, or choose an existing split")
    return folder


def find_subfolder(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of names that exists inside folder."""
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    raise UserError(f"{folder} has no {what} folder (expected one of: {', '.join(names)}); "
                    f"arrange the split in the datasets_vg layout")


def utms_of(paths: list[Path]) -> np.ndarray:
    """N×2 float64 array of UTM (easting, northing) for the given files; UserError counting all bad names."""
    utms, errors = [], []
    for p in paths:
        try:
            utms.append(parse_utm(p))
        except UserError as e:
            errors.append(e)
    if errors:
        raise errors[0] if len(errors) == 1 else UserError(f"{len(errors)} of {len(paths)} files have no UTM "
                                                           f"coordinates in their names; the first: {errors[0]}")
    return np.array(utms, dtype=np.float64).reshape(-1, 2)


MAX_LISTED = 20  # unreadable files named in the error message (all of them are logged)


def drop_unreadable(groups: list[list[Path]], folder: Path, skip_corrupt: bool) -> list[list[Path]]:
    """Check every image once; UserError naming the unreadable ones, or (skip_corrupt) drop them with a warning."""
    paths = [p for g in groups for p in g]
    with ThreadPoolExecutor(8) as pool:  # file-system latency bound (network drives)
        problems = dict(zip(paths, pool.map(image_problem, paths)))
    bad = [p for p in paths if problems[p] is not None]
    if not bad:
        return groups
    for p in bad:
        logging.error(f"unreadable image {p} ({problems[p]})")
    if skip_corrupt:
        logging.warning(f"--skip_corrupt: skipping {len(bad)} unreadable images of {folder} (listed above)")
        return [[p for p in g if problems[p] is None] for g in groups]
    raise UnreadableImagesError(bad)


class UnreadableImagesError(UserError):
    """Corrupt or unreadable image files; `paths` holds all of them, the message names up to MAX_LISTED."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        more = f" and {len(paths) - MAX_LISTED} more (all in the log)" if len(paths) > MAX_LISTED else ""
        super().__init__(f"{len(paths)} corrupt or unreadable images: {', '.join(map(str, paths[:MAX_LISTED]))}"
                         f"{more}; replace or delete them, or pass --skip_corrupt to skip them")


def build_all(*factories: Callable[[], "BaseDataset"]) -> list["BaseDataset"]:
    """Call each dataset factory; the unreadable images of all of them are reported in one error."""
    built, bad = [], []
    for make in factories:
        try:
            built.append(make())
        except UnreadableImagesError as e:
            bad += e.paths
    if bad:
        raise UnreadableImagesError(bad)
    return built


def radius_neighbors(db_utms: np.ndarray, q_utms: np.ndarray, radius: float) -> list[np.ndarray]:
    """For each query, the sorted indices of database points within radius metres."""
    knn = NearestNeighbors(n_jobs=1).fit(db_utms)
    found = knn.radius_neighbors(q_utms, radius=radius, return_distance=False)
    return [np.sort(f).astype(np.int64) for f in found]


class BaseDataset(data.Dataset):
    """Database followed by queries of one split; item i is (image 3×H×W, i).

    Attributes: database_paths, queries_paths, database_utms (N_db×2), queries_utms (N_q×2),
    soft_positives_per_query (list of index arrays within val_positive_dist_threshold).
    """

    def __init__(self, datasets_folder: str | None, dataset_name: str, split: str,
                 resize: tuple[int, int] = (480, 640), val_positive_dist_threshold: float = 25.0,
                 skip_corrupt: bool = False):
        super().__init__()
        self.dataset_name, self.split = dataset_name, split
        folder = split_folder(datasets_folder, dataset_name, split)
        self.database_paths, self.queries_paths = drop_unreadable(
            [list_images(find_subfolder(folder, DATABASE_FOLDER_NAMES, "database")),
             list_images(find_subfolder(folder, ("queries",), "queries"))], folder, skip_corrupt)
        for what, paths in (("database", self.database_paths), ("queries", self.queries_paths)):
            if not paths:
                raise UserError(f"no images in the {what} of {folder}; add .jpg/.png files or choose another split")
        self.database_utms = utms_of(self.database_paths)
        self.queries_utms = utms_of(self.queries_paths)
        self.val_positive_dist_threshold = val_positive_dist_threshold
        self.soft_positives_per_query = radius_neighbors(self.database_utms, self.queries_utms,
                                                         val_positive_dist_threshold)
        self.images_paths = self.database_paths + self.queries_paths
        self.resize = tuple(resize)
        self.resize_transform = build_resize(self.resize)

    @property
    def database_num(self) -> int:
        return len(self.database_paths)

    @property
    def queries_num(self) -> int:
        return len(self.queries_paths)

    def load_uint8(self, index: int) -> torch.Tensor:
        """Image index (database first, then queries) resized, as a uint8 3×H×W tensor."""
        return self.resize_transform(open_image(self.images_paths[index], self.resize))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(uint8 image 3×H×W, index); images.to_input normalizes whole batches."""
        return self.load_uint8(index), index

    def __len__(self) -> int:
        return len(self.images_paths)

    def as_images(self) -> "ImagesView":
        """A dataset whose item i is (image i, i), database first then queries."""
        return ImagesView(self)

    def __repr__(self) -> str:
        return (f"< {self.dataset_name} - {self.split} - #database: {self.database_num}; "
                f"#queries: {self.queries_num} >")


class ImagesView(data.Dataset):
    """Item i of a BaseDataset (or subclass) as (uint8 image 3×H×W, i)."""

    def __init__(self, base: BaseDataset):
        self.base = base

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.base.load_uint8(index), index

    def __len__(self) -> int:
        return len(self.base.images_paths)


class TripletsDataset(BaseDataset):
    """Training split: adds train positives (within train_positives_dist_threshold).

    Queries without any train positive are dropped together with their soft-positive rows.
    Triplets are set by the miner via `set_triplets`; item i is (uint8 images (2+K)×3×H×W, indices (2+K)),
    where indices are in the database-then-queries numbering and row 0 is the query.
    """

    def __init__(self, datasets_folder: str | None, dataset_name: str, split: str = "train",
                 resize: tuple[int, int] = (480, 640), val_positive_dist_threshold: float = 25.0,
                 train_positives_dist_threshold: float = 10.0, augmentation=None, skip_corrupt: bool = False):
        super().__init__(datasets_folder, dataset_name, split, resize, val_positive_dist_threshold, skip_corrupt)
        positives = radius_neighbors(self.database_utms, self.queries_utms, train_positives_dist_threshold)
        keep = np.array([len(p) > 0 for p in positives], dtype=bool)
        dropped = int((~keep).sum())
        if dropped:
            logging.info(f"{dropped} of {len(keep)} training queries have no positive within "
                         f"{train_positives_dist_threshold} m and are dropped")
        if not keep.any():
            raise UserError(f"no training query has a positive within {train_positives_dist_threshold} m; "
                            f"raise --train_positives_dist_threshold or check the UTM names")
        self.queries_paths = [p for p, k in zip(self.queries_paths, keep) if k]
        self.queries_utms = self.queries_utms[keep]
        self.soft_positives_per_query = [s for s, k in zip(self.soft_positives_per_query, keep) if k]
        self.positives_per_query = [p for p, k in zip(positives, keep) if k]
        self.images_paths = self.database_paths + self.queries_paths
        self.augmentation = augmentation
        self.triplets = np.zeros((0, 2), dtype=np.int64)

    def set_triplets(self, triplets: np.ndarray) -> None:
        """triplets: T×(2+K) int64, columns = (query index, positive db index, K negative db indices)."""
        self.triplets = triplets

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, *db = self.triplets[index].tolist()
        ids = [self.database_num + q] + db
        images = [self.load_uint8(i) for i in ids]
        if self.augmentation is not None:  # callable(uint8 3×H×W, is_query) -> uint8 3×H×W
            images = [self.augmentation(img, j == 0) for j, img in enumerate(images)]
        return torch.stack(images), torch.tensor(ids)  # uint8 (2+K)×3×H×W

    def __len__(self) -> int:
        return len(self.triplets)
