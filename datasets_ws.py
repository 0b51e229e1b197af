"""Datasets in the datasets_vg layout: image lists, UTM labels, positives, and image loading.

Layout: <datasets_folder>/<dataset_name>/images/<split>/{database|gallery,queries}/**/*.{jpg,png,webp,tif,bmp}
File names carry UTM coordinates: fields 1 and 2 of the name split on '@' are easting and northing. Listing, the
start-up check of the files and the duplicate report are in dataio/dataset_files.py.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.utils.data as data

from commons import UserError
from dataio.dataset_files import (IMAGE_EXTENSIONS, MAX_LISTED, UnreadableImagesError, build_all,  # noqa: F401 (API)
                           drop_unreadable, list_images, report_duplicates)
from dataio.images import load_image, map_loading, stack_channels_last
from dataio.pixel_cache import PixelCache

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


def radius_neighbors(db_utms: np.ndarray, q_utms: np.ndarray, radius: float,
                     chunk: int = 256) -> list[np.ndarray]:
    """For each query, the sorted indices of database points within radius metres (N_db×2, N_q×2 UTMs).

    Exact: dx² + dy² <= radius², in float64, the test scikit-learn's tree makes. Queries are taken in chunks
    sorted by easting, each against the database points of its easting band only."""
    db, q = np.asarray(db_utms, np.float64).reshape(-1, 2), np.asarray(q_utms, np.float64).reshape(-1, 2)
    by_x = np.argsort(db[:, 0], kind="stable")
    xs, r2, slack = db[by_x, 0], radius * radius, radius * (1 + 1e-9) + 1e-9  # slack: a band never too narrow
    found: list[np.ndarray] = [np.empty(0, np.int64)] * len(q)
    q_by_x = np.argsort(q[:, 0], kind="stable")
    for start in range(0, len(q), chunk):
        ids = q_by_x[start:start + chunk]  # C queries
        lo = np.searchsorted(xs, q[ids, 0].min() - slack, side="left")
        hi = np.searchsorted(xs, q[ids, 0].max() + slack, side="right")
        band = by_x[lo:hi]  # M database indices
        diff = db[band][None] - q[ids][:, None]  # C×M×2
        rows, cols = np.nonzero(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] <= r2)
        per_query = np.split(band[cols], np.cumsum(np.bincount(rows, minlength=len(ids)))[:-1])
        for i, f in zip(ids, per_query):
            found[i] = np.sort(f).astype(np.int64)
    return found


class BaseDataset(data.Dataset):
    """Database followed by queries of one split; item i is (image 3×H×W, i).

    Attributes: database_paths, queries_paths, database_utms (N_db×2), queries_utms (N_q×2),
    soft_positives_per_query (list of index arrays within val_positive_dist_threshold).
    """

    def __init__(self, datasets_folder: str | None, dataset_name: str, split: str,
                 resize: tuple[int, int] = (480, 640), val_positive_dist_threshold: float = 25.0,
                 skip_corrupt: bool = False, pixel_cache: str | Path | None = None):
        """pixel_cache: a folder for the decoded-pixel cache (dataio/pixel_cache.py) of this split's images at
        `resize`, built here when missing or stale; None decodes every image each time it is read."""
        super().__init__()
        self.dataset_name, self.split = dataset_name, split
        folder = split_folder(datasets_folder, dataset_name, split)
        self.database_paths, self.queries_paths = drop_unreadable(
            [list_images(find_subfolder(folder, DATABASE_FOLDER_NAMES, "database")),
             list_images(find_subfolder(folder, ("queries",), "queries"))], folder, skip_corrupt)
        for what, paths in (("database", self.database_paths), ("queries", self.queries_paths)):
            if not paths:
                raise UserError(f"no images in the {what} of {folder}; add images ({'/'.join(IMAGE_EXTENSIONS)}) "
                                f"or choose another split")
        report_duplicates(self.database_paths + self.queries_paths, folder)
        self.database_utms = utms_of(self.database_paths)
        self.queries_utms = utms_of(self.queries_paths)
        self.val_positive_dist_threshold = val_positive_dist_threshold
        self.soft_positives_per_query = radius_neighbors(self.database_utms, self.queries_utms,
                                                         val_positive_dist_threshold)
        self.images_paths = self.database_paths + self.queries_paths
        self.resize = tuple(resize)
        self.pixel_cache: PixelCache | None = None
        self.use_pixel_cache(pixel_cache)

    def use_pixel_cache(self, folder: str | Path | None) -> None:
        """Read images from the pixel cache in folder (built now if needed) from now on; None: decode them."""
        self.pixel_cache = None if folder is None else PixelCache(self.images_paths, self.resize, folder)

    @property
    def database_num(self) -> int:
        return len(self.database_paths)

    @property
    def queries_num(self) -> int:
        return len(self.queries_paths)

    def load_uint8(self, index: int) -> torch.Tensor:
        """Image index (database first, then queries) resized, as a uint8 3×H×W tensor (from the pixel cache when
        there is one: the same pixels)."""
        if self.pixel_cache is not None:
            return self.pixel_cache.read(index)
        return load_image(self.images_paths[index], self.resize)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """The items of a batch (what a DataLoader asks for), their images loaded together (images.map_loading)."""
        return list(zip(map_loading(self.load_uint8, indices), indices))

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

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        return BaseDataset.__getitems__(self.base, indices)

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
                 train_positives_dist_threshold: float = 10.0, augmentation=None, skip_corrupt: bool = False,
                 pixel_cache: str | Path | None = None):
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
        self.use_pixel_cache(pixel_cache)  # of the images kept; the cache holds them before augmentation
        self.augmentation = augmentation
        self.triplets = np.zeros((0, 2), dtype=np.int64)

    def set_triplets(self, triplets: np.ndarray) -> None:
        """triplets: T×(2+K) int64, columns = (query index, positive db index, K negative db indices)."""
        self.triplets = triplets

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Items of a batch: (uint8 images (2+K)×3×H×W in channels-last memory, their indices (2+K)), every image
        of the batch loaded together; augmented afterwards, item by item, in the order of one-by-one loading."""
        rows = self.triplets[indices]  # B×(2+K): query, positive, negatives
        ids = np.concatenate([rows[:, :1] + self.database_num, rows[:, 1:]], axis=1)  # database-then-queries
        loaded = map_loading(self.load_uint8, ids.ravel().tolist())
        n, items = ids.shape[1], []
        for b, row in enumerate(ids):
            images = loaded[b * n:(b + 1) * n]
            if self.augmentation is not None:  # callable(uint8 3×H×W, is_query) -> uint8 3×H×W
                images = [self.augmentation(img, j == 0) for j, img in enumerate(images)]
            items.append((stack_channels_last(images), torch.as_tensor(row, dtype=torch.int64)))
        return items

    def __len__(self) -> int:
        return len(self.triplets)
