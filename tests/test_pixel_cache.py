"""dataio/pixel_cache.py: the cached pixels are the decoded ones; the cache is reused while valid, rebuilt when a file
changes, and an interrupted build leaves nothing that looks valid; datasets read from it, augmentation after."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataio.pixel_cache as pixel_cache
from dataio.images import load_image
from dataio.pixel_cache import PixelCache
from datasets_ws import BaseDataset, TripletsDataset

SIZE = (24, 32)


def image(seed: int, h: int = 48, w: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def files(tmp_path) -> list[Path]:
    """JPEGs (one larger: draft decoding) and a PNG."""
    paths = [tmp_path / "img" / f"{i}.jpg" for i in range(4)] + [tmp_path / "img" / "4.png"]
    paths[0].parent.mkdir()
    for i, p in enumerate(paths):
        image(i, *((120, 160) if i == 1 else (48, 64))).save(p, quality=90)
    return paths


def test_cache_gives_the_decoded_pixels_and_is_reused(files, tmp_path, monkeypatch) -> None:
    cache = PixelCache(files, SIZE, tmp_path / "cache")
    assert cache.built and len(cache) == len(files)
    for i, p in enumerate(files):
        got, want = cache.read(i), load_image(p, SIZE)
        assert got.dtype == torch.uint8 and torch.equal(got, want) and got.stride() == want.stride()
    got = cache.read(0)
    got += 1  # a copy: the cache is not changed
    assert torch.equal(cache.read(0), load_image(files[0], SIZE))
    monkeypatch.setattr(pixel_cache, "load_image", lambda *a: pytest.fail("decoded again"))
    again = PixelCache(files, SIZE, tmp_path / "cache")
    assert not again.built and torch.equal(again.read(4), load_image(files[4], SIZE))
    assert torch.equal(pickle.loads(pickle.dumps(again)).read(2), cache.read(2))  # to spawned DataLoader workers


def test_other_sizes_and_lists_get_their_own_cache(files, tmp_path) -> None:
    PixelCache(files, SIZE, tmp_path / "cache")
    assert PixelCache(files, (12, 16), tmp_path / "cache").built
    assert PixelCache(files[:3], SIZE, tmp_path / "cache").built
    assert not PixelCache(files, SIZE, tmp_path / "cache").built
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 3


def test_a_changed_file_rebuilds_the_cache(files, tmp_path) -> None:
    PixelCache(files, SIZE, tmp_path / "cache")
    image(99).save(files[2], quality=90)
    st = files[2].stat()
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # whatever the file system's time steps
    cache = PixelCache(files, SIZE, tmp_path / "cache")
    assert cache.built and torch.equal(cache.read(2), load_image(files[2], SIZE))


def test_an_interrupted_build_leaves_no_valid_looking_cache(files, tmp_path, monkeypatch) -> None:
    good = PixelCache(files, SIZE, tmp_path / "cache")
    image(98).save(files[3], quality=90)
    os.utime(files[3], ns=(0, files[3].stat().st_mtime_ns + 1_000_000))
    decoded = []

    def interrupted(path, size):
        if len(decoded) == 2:
            raise KeyboardInterrupt
        decoded.append(path)
        return load_image(path, size)
    monkeypatch.setattr(pixel_cache, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        PixelCache(files, SIZE, tmp_path / "cache")
    assert not good.meta_path.exists() and not good.valid()  # the old sidecar went first
    assert not list((tmp_path / "cache").glob("*.tmp"))  # the temporary file is removed
    monkeypatch.undo()
    cache = PixelCache(files, SIZE, tmp_path / "cache")
    assert cache.built and torch.equal(cache.read(3), load_image(files[3], SIZE))


def test_datasets_read_the_cache_and_augment_after(tiny_world, tmp_path) -> None:
    plain = BaseDataset(tiny_world, "synthetic", "val", (16, 24))
    cached = BaseDataset(tiny_world, "synthetic", "val", (16, 24), pixel_cache=tmp_path / "cache")
    assert cached.pixel_cache is not None and len(cached.pixel_cache) == len(plain)
    for i in range(len(plain)):
        assert torch.equal(cached[i][0], plain[i][0]) and torch.equal(cached.as_images()[i][0], plain[i][0])

    def flip(img: torch.Tensor, is_query: bool) -> torch.Tensor:
        return torch.flip(img, dims=[-1])
    train = TripletsDataset(tiny_world, "synthetic", "train", (16, 24), augmentation=flip,
                            pixel_cache=tmp_path / "cache")
    assert train.pixel_cache.paths == [Path(os.path.abspath(p)) for p in train.images_paths]  # queries dropped first
    train.set_triplets(np.array([[0, 1, 2, 3]], dtype=np.int64))
    images, ids = train[0]
    expected = torch.stack([load_image(train.images_paths[i], (16, 24)) for i in ids.tolist()])
    assert torch.equal(images, torch.flip(expected, dims=[-1]))


def test_training_with_the_pixel_cache_gives_the_same_run(tiny_world: Path, tmp_path: Path, monkeypatch) -> None:
    """--pixel_cache changes where pixels come from, not the run: same losses, validation and test recalls; the
    caches of the three splits are built once and reused by a second run."""
    import train
    from helpers import tiny_train_flags
    monkeypatch.chdir(tmp_path)
    flags = tiny_train_flags(tiny_world, "plain") + ["--epochs_num", "1"]
    plain = train.main(flags)
    cached = train.main(flags + ["--pixel_cache", str(tmp_path / "cache"), "--save_dir", "cached"])
    for key in ("losses", "val_history", "best_val_recall@5"):
        assert cached[key] == plain[key], key
    assert cached["test"]["recalls"] == plain["test"]["recalls"]
    sidecars = sorted((tmp_path / "cache").glob("*.json"))
    assert len(sidecars) == 3  # train, val, test
    stamps = [p.stat().st_mtime_ns for p in sidecars]
    train.main(flags + ["--pixel_cache", str(tmp_path / "cache"), "--save_dir", "again"])
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").glob("*.json"))] == stamps  # not rebuilt
