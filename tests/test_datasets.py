"""Tests of datasets_ws.py: UTM parsing, folder layout, positives against brute force, dropped queries."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from commons import UserError, setup_logging
from dataio.dataset_files import UnreadableImagesError, find_duplicates, list_images, report_duplicates
from helpers import write_image
from datasets_ws import BaseDataset, TripletsDataset, parse_utm, radius_neighbors
from dataio.images import PIXEL_LIMIT_ENV, image_problem, load_image, normalize


def shade(value: int) -> tuple[int, int, int]:
    """An RGB colour per value, so images of different values differ in bytes."""
    return value, value // 2, 255 - value


def make_dataset(root: Path, db: list[tuple[float, float]], queries: list[tuple[float, float]],
                 split: str = "train", db_folder: str = "database", ext: str = "jpg") -> Path:
    """Hand-made datasets_vg layout under root/toy with the given UTMs; returns the datasets folder."""
    base = root / "toy" / "images" / split
    for kind, utms in ((db_folder, db), ("queries", queries)):
        for i, (e, n) in enumerate(utms):
            write_image(base / kind / f"@{e:.2f}@{n:.2f}@{kind}@{i:03d}@.{ext}", colour=shade(10 * i))
    return root


def brute_force_within(db: np.ndarray, q: np.ndarray, radius: float) -> list[np.ndarray]:
    """Per query, sorted database indices within radius metres (plain numpy)."""
    d = np.sqrt(((q[:, None, :] - db[None, :, :]) ** 2).sum(-1))  # Q×N
    return [np.flatnonzero(row <= radius) for row in d]


# ---------------------------------------------------------------- parse_utm

def test_parse_utm_reads_the_file_name_only() -> None:
    path = Path("/data/run@12@34@/sub@dir/@500123.45@4400067.80@x@.jpg")
    assert parse_utm(path) == (500123.45, 4400067.80)
    assert parse_utm(str(path)) == (500123.45, 4400067.80)


@pytest.mark.parametrize("name", ["photo.jpg", "@abc@4400000@.jpg", "@500000.jpg"])
def test_parse_utm_bad_name_is_one_line_error_naming_the_file(name: str) -> None:
    path = Path("/data/a@500000@4400000@/") / name  # the folder looks like UTM, the file does not
    with pytest.raises(UserError) as e:
        parse_utm(path)
    msg = str(e.value)
    assert "\n" not in msg and name in msg


def test_bad_file_name_in_dataset_is_reported(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, [(0, 0)], [(1, 1)], split="test")
    write_image(root / "toy/images/test/database/IMG_0001.jpg")
    with pytest.raises(UserError, match="IMG_0001.jpg"):
        BaseDataset(root, "toy", "test")


# ---------------------------------------------------------------- layout

def test_gallery_png_and_at_sign_in_folder(tmp_path: Path) -> None:
    root = tmp_path / "datasets@500000@4400000@"
    db = [(500000.0, 4400000.0), (500020.0, 4400000.0), (500100.0, 4400000.0)]
    queries = [(500003.0, 4400004.0), (500200.0, 4400000.0)]
    make_dataset(root, db, queries, split="test", db_folder="gallery", ext="png")
    ds = BaseDataset(root, "toy", "test", resize=(8, 8), val_positive_dist_threshold=25.0)
    assert (ds.database_num, ds.queries_num, len(ds)) == (3, 2, 5)
    np.testing.assert_allclose(ds.database_utms, db)
    np.testing.assert_allclose(ds.queries_utms, queries)
    # query 0 is 5 m from db 0 and ~17.5 m from db 1; query 1 is 100 m from everything
    assert [s.tolist() for s in ds.soft_positives_per_query] == [[0, 1], []]
    img, i = ds[4]
    assert img.shape == (3, 8, 8) and i == 4


def test_empty_queries_folder_is_an_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, [(0, 0)], [], split="test")
    (root / "toy/images/test/queries").mkdir(parents=True, exist_ok=True)
    with pytest.raises(UserError, match="no images in the queries"):
        BaseDataset(root, "toy", "test")


# ---------------------------------------------------------------- positives

def test_soft_positives_match_brute_force(tiny_world: Path) -> None:
    ds = BaseDataset(tiny_world, "synthetic", "val", resize=(32, 32), val_positive_dist_threshold=25.0)
    ref = brute_force_within(ds.database_utms, ds.queries_utms, 25.0)
    assert sum(len(r) for r in ref) > 0
    assert [s.tolist() for s in ds.soft_positives_per_query] == [r.tolist() for r in ref]


def test_train_positives_and_dropped_queries_match_brute_force(tiny_world: Path) -> None:
    base = BaseDataset(tiny_world, "synthetic", "train", resize=(32, 32))
    ds = TripletsDataset(tiny_world, "synthetic", "train", resize=(32, 32), val_positive_dist_threshold=25.0,
                         train_positives_dist_threshold=10.0)
    train_ref = brute_force_within(base.database_utms, base.queries_utms, 10.0)
    soft_ref = brute_force_within(base.database_utms, base.queries_utms, 25.0)
    keep = [i for i, r in enumerate(train_ref) if len(r)]
    assert 0 < len(keep) < base.queries_num, "tiny_world should have some queries without train positives"
    assert ds.queries_paths == [base.queries_paths[i] for i in keep]
    np.testing.assert_array_equal(ds.queries_utms, base.queries_utms[keep])
    assert [p.tolist() for p in ds.positives_per_query] == [train_ref[i].tolist() for i in keep]
    assert [s.tolist() for s in ds.soft_positives_per_query] == [soft_ref[i].tolist() for i in keep]
    assert ds.images_paths == ds.database_paths + ds.queries_paths


def test_dropped_query_keeps_rows_aligned(tmp_path: Path) -> None:
    db = [(0.0, 0.0), (15.0, 0.0), (200.0, 0.0)]
    queries = [(1.0, 0.0), (30.0, 0.0), (199.0, 0.0)]  # query 1: soft positive db 1 only, no train positive
    root = make_dataset(tmp_path, db, queries)
    ds = TripletsDataset(root, "toy", "train", resize=(8, 8), val_positive_dist_threshold=25.0,
                         train_positives_dist_threshold=10.0)
    np.testing.assert_allclose(ds.queries_utms, [queries[0], queries[2]])
    assert [p.tolist() for p in ds.positives_per_query] == [[0], [2]]
    assert [s.tolist() for s in ds.soft_positives_per_query] == [[0, 1], [2]]
    assert [p.name.split("@")[4] for p in ds.queries_paths] == ["000", "002"]


def test_triplet_item_shape_and_ids(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, [(0.0, 0.0), (100.0, 0.0), (200.0, 0.0)], [(1.0, 0.0)])
    ds = TripletsDataset(root, "toy", "train", resize=(8, 12))
    ds.set_triplets(np.array([[0, 0, 2, 1]]))
    images, ids = ds[0]
    assert images.shape == (4, 3, 8, 12)
    assert ids.tolist() == [3, 0, 2, 1]  # query 0 is item database_num + 0
    assert images.dtype == torch.uint8  # normalized per batch by images.to_input
    assert torch.equal(images[0], ds.load_uint8(3)) and torch.equal(images[2], ds.load_uint8(2))


def test_a_batch_loaded_together_equals_its_items_loaded_one_by_one(tiny_world: Path) -> None:
    """What a DataLoader asks for (__getitems__, the images decoded by several threads) against the reference: each
    image of each item loaded on its own, in the main thread; augmentation draws in the same order."""
    ds = TripletsDataset(tiny_world, "synthetic", "train", resize=(24, 20),
                         augmentation=lambda img, is_query: img.roll(int(torch.randint(0, 5, ())), dims=-1))
    rng = np.random.default_rng(0)
    ds.set_triplets(np.concatenate([rng.integers(0, ds.queries_num, (6, 1)),
                                    rng.integers(0, ds.database_num, (6, 5))], axis=1))
    torch.manual_seed(3)
    batch = ds.__getitems__([4, 1, 5])
    torch.manual_seed(3)
    for (images, ids), i in zip(batch, [4, 1, 5]):
        q, *db = ds.triplets[i].tolist()
        ref_ids = [ds.database_num + q] + db
        ref = torch.stack([ds.augmentation(load_image(ds.images_paths[j], (24, 20)), k == 0)
                           for k, j in enumerate(ref_ids)])
        assert ids.tolist() == ref_ids and ids.dtype == torch.int64
        assert torch.equal(images, ref)
    views = ds.as_images().__getitems__([7, 0, 3])
    assert [i for _, i in views] == [7, 0, 3]
    assert all(torch.equal(img, load_image(ds.images_paths[i], (24, 20))) for img, i in views)


def test_no_train_positive_at_all_is_an_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, [(0.0, 0.0)], [(50.0, 0.0)])
    with pytest.raises(UserError, match="train_positives_dist_threshold"):
        TripletsDataset(root, "toy", "train")


# ---------------------------------------------------------------- normalization


def test_normalize_is_imagenet_standardization() -> None:
    image = torch.tensor([[[0, 255]], [[128, 64]], [[1, 200]]], dtype=torch.uint8)  # 3×1×2
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = torch.tensor([[[(v / 255 - mean[c]) / std[c] for v in row] for row in image[c].tolist()]
                             for c in range(3)], dtype=torch.float32)  # by hand, per pixel
    assert torch.allclose(normalize(image), expected, atol=1e-6)
    assert normalize(image).dtype == torch.float32 and image.dtype == torch.uint8  # the input is not touched
    batch = torch.stack([image, 255 - image])  # 2×3×1×2
    assert torch.allclose(normalize(batch)[1], normalize(255 - image))


# ---------------------------------------------------------------- files: formats, links, duplicates, damage

def test_other_formats_are_read_and_other_files_counted(tmp_path: Path, caplog) -> None:
    root = make_dataset(tmp_path, [(0.0, 0.0)], [(1.0, 0.0)], split="test")
    base = root / "toy/images/test/database"
    for i, ext in enumerate(("webp", "tif", "bmp")):
        write_image(base / f"@{10.0 * (i + 1):.2f}@0.00@{ext}@.{ext}", colour=shade(40 * i))
    (base / "notes.txt").write_text("x")
    (base / ".DS_Store").write_bytes(b"x")
    with caplog.at_level("INFO"):
        ds = BaseDataset(root, "toy", "test", resize=(8, 8))
    assert sorted(p.suffix for p in ds.database_paths) == [".bmp", ".jpg", ".tif", ".webp"]
    assert all(ds.load_uint8(i).shape == (3, 8, 8) for i in range(ds.database_num))
    assert "ignored 2 files that are not images (1 .txt, 1 hidden)" in caplog.text


def test_symbolic_links_are_followed_once(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "@5.00@0.00@linked@.jpg")
    folder = tmp_path / "database"
    write_image(folder / "own" / "@0.00@0.00@own@.jpg")
    (folder / "link").symlink_to(elsewhere, target_is_directory=True)
    (folder / "again").symlink_to(elsewhere, target_is_directory=True)  # the same data linked twice
    (folder / "own" / "loop").symlink_to(folder, target_is_directory=True)  # a loop
    found = list_images(folder)
    assert len(found) == 2 and {p.name for p in found} == {"@0.00@0.00@own@.jpg", "@5.00@0.00@linked@.jpg"}
    assert all(p.is_relative_to(folder) for p in found)


def test_duplicates_are_reported(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "db"
    write_image(folder / "a" / "@0@0@x@.jpg", colour=shade(10))
    write_image(folder / "b" / "@0@0@x@.jpg", colour=shade(200))  # same name, other bytes
    write_image(folder / "@1@0@y@.jpg", colour=shade(50))
    (folder / "@2@0@z@.jpg").write_bytes((folder / "@1@0@y@.jpg").read_bytes())  # same bytes, other name
    write_image(folder / "@3@0@w@.jpg", colour=shade(90))
    paths = list_images(folder)
    found = find_duplicates(paths)
    assert [sorted(p.relative_to(folder).as_posix() for p in g) for g in found["same file name in two folders"]] == \
        [["a/@0@0@x@.jpg", "b/@0@0@x@.jpg"]]
    assert [sorted(p.name for p in g) for g in found["identical bytes"]] == [["@1@0@y@.jpg", "@2@0@z@.jpg"]]
    with caplog.at_level("WARNING"):
        report_duplicates(paths, folder)
    assert "same file name in two folders: 1 groups" in caplog.text and "identical bytes: 1 groups" in caplog.text


def test_damage_inside_a_png_is_found_at_start_up(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.png"
    Image.effect_noise((64, 64), 40).convert("RGB").save(path)
    assert image_problem(path) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle of the image data: header and end marker intact
    path.write_bytes(bytes(data))
    assert "SyntaxError" in image_problem(path)  # chunk checksum


def test_images_above_the_pixel_limit_are_named_as_such(tmp_path: Path, monkeypatch) -> None:
    root = make_dataset(tmp_path, [(0.0, 0.0), (50.0, 0.0)], [(1.0, 0.0)], split="test")
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "200")  # 16×16 = 256 pixels
    with pytest.raises(UnreadableImagesError) as e:
        BaseDataset(root, "toy", "test")
    assert str(e.value).startswith("3 images above PIL's pixel limit (256 pixels > 200)")
    assert "VG_MAX_IMAGE_PIXELS=256" in str(e.value) and "corrupt or unreadable" not in str(e.value)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "256")
    assert BaseDataset(root, "toy", "test", resize=(8, 8)).load_uint8(0).shape == (3, 8, 8)


def test_skip_corrupt_lists_ten_on_the_console(tmp_path: Path, capsys) -> None:
    root = make_dataset(tmp_path, [(0.0, 0.0)], [(1.0, 0.0)], split="test")
    for i in range(12):
        (root / f"toy/images/test/database/@{i}.00@0.00@bad@.jpg").write_bytes(b"\xff\xd8 not an image")
    setup_logging(None)
    ds = BaseDataset(root, "toy", "test", skip_corrupt=True)
    out = capsys.readouterr().out
    assert ds.database_num == 1 and "--skip_corrupt: skipping 12 unreadable images of" in out
    assert out.count("@bad@.jpg (") == 10 and "... and 2 more (all in debug.log)" in out
    with pytest.raises(UnreadableImagesError, match="12 corrupt or unreadable images: .*or pass --skip_corrupt"):
        BaseDataset(root, "toy", "test")


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_radius_neighbors_matches_the_full_distance_matrix(chunk: int) -> None:
    """Grid points at exactly the radius (3-4-5 triangles: 5 m) are inside; UTM-sized offsets keep the result."""
    rng = np.random.default_rng(0)
    db = rng.integers(0, 30, (400, 2)) * 1.0 + [5e5, 4.5e6]
    q = np.concatenate([rng.integers(0, 30, (150, 2)) * 1.0, rng.uniform(-5, 35, (50, 2))]) + [5e5, 4.5e6]
    d2 = ((q[:, None] - db[None]) ** 2).sum(-1)  # N_q×N_db, the definition
    for radius in (0.0, 5.0, 12.5):
        got = radius_neighbors(db, q, radius, chunk=chunk)
        assert all(np.array_equal(g, np.flatnonzero(row <= radius * radius)) for g, row in zip(got, d2))
    assert any(len(g) for g in radius_neighbors(db, q, 0.0))  # exact duplicates count at radius 0
