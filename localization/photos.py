"""The photos to localize (files and folders given on the command line) and the encoding of image files.

`Encoder` turns any list of image paths into descriptors, chunk by chunk, through the project's one test loop
(`evaluation.extract_features`) and the dataio/images.py loading of the datasets (same decoding and resize as eval.py),
and counts the images it encoded.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.utils.data as data
from tqdm import tqdm

from datasets_ws import list_images
from retrieval.evaluation import InferenceConfig, extract_features
from dataio.images import image_problem, load_image

CHUNK_IMAGES = 4096  # images encoded per extract_features call: bounds the float32 descriptors held in memory


class PathsDataset(data.Dataset):
    """Item i: (uint8 image 3×H×W of paths[i] resized to `resize`, i), loaded exactly as datasets_ws loads."""

    def __init__(self, paths: Sequence[Path], resize: tuple[int, int]):
        self.paths, self.resize = list(paths), tuple(resize)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.paths[index], self.resize), index

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Encoder:
    """A model and its encoding settings; `encoded` counts every image encoded so far."""
    model: torch.nn.Module
    resize: tuple[int, int]
    cfg: InferenceConfig
    encoded: int = 0

    def chunks(self, paths: Sequence[Path], desc: str) -> Iterator[np.ndarray]:
        """Descriptors of paths in order, as float32 chunks (≤ CHUNK_IMAGES × D each), under one progress bar."""
        dataset = PathsDataset(paths, self.resize)
        # one bar over all the images when there are several chunks; extract_features shows each chunk's batches
        with tqdm(total=len(paths), desc=desc, ncols=100, unit="img", disable=len(paths) <= CHUNK_IMAGES) as bar:
            for start in range(0, len(paths), CHUNK_IMAGES):
                rows = range(start, min(start + CHUNK_IMAGES, len(paths)))
                feats = extract_features(self.model, dataset, rows, self.cfg, desc=desc)  # B×D float32
                self.encoded += len(rows)
                bar.update(len(rows))
                yield feats

    def encode(self, paths: Sequence[Path], desc: str) -> np.ndarray:
        """All descriptors of paths, N×D float32."""
        return np.concatenate(list(self.chunks(paths, desc)))


@dataclass
class PhotoList:
    """Readable photos to localize (duplicates kept, in the order given) and one error line per bad input."""
    paths: list[Path]
    errors: list[tuple[str, str]]  # (input, 'problem; fix')


def _expand(item: Path) -> tuple[list[Path], str | None]:
    """The images of one command-line input: a file itself, a folder's images (recursively); or an error."""
    if item.is_dir():
        found = list_images(item)
        return (found, None) if found else ([], f"folder {item} holds no .jpg/.jpeg/.png images; "
                                                 f"point to a folder of photos")
    if item.is_file():
        return [item], None
    return [], f"{item} does not exist; check the path"


def collect_photos(photos: Sequence[str], queries: str | None) -> PhotoList:
    """Expand photo files and folders (PHOTO... and --queries), then check that each photo decodes.

    Each bad input (missing path, folder without images, undecodable file) gets one error line; the others stay.
    """
    paths, errors = [], []
    for item in [*photos, *([queries] if queries else [])]:
        found, error = _expand(Path(item))
        paths += found
        if error:
            errors.append((item, error))
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(8) as pool:  # file-system latency bound (network drives)
        problems = dict(zip(unique, pool.map(image_problem, unique)))
    bad = {p for p, why in problems.items() if why is not None}
    errors += [(str(p), f"cannot decode {p} ({problems[p]}); replace the file or leave it out") for p in unique
               if p in bad]
    for _, error in errors:
        logging.error(f"error: {error}")
    return PhotoList([p for p in paths if p not in bad], errors)
