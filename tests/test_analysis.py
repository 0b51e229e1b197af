"""analyze_dataset.py: summary.json against a brute-force computation, figures written and not blank, errors."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import analyze_dataset as ad
from commons import UserError, run_cli

SPLITS = ("train", "val", "test")
THRESHOLDS = {"train": 10.0, "eval": 25.0}


@pytest.fixture(scope="module")
def analysis(tiny_world, tmp_path_factory) -> tuple[Path, dict]:
    """Run the CLI once on tiny_world (all splits, grids included); returns (out folder, summary.json)."""
    out = tmp_path_factory.mktemp("analysis")
    ad.main(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--out", str(out)])
    return out, json.loads((out / "summary.json").read_text())


def _utms(world: Path, split: str, kind: str) -> np.ndarray:
    """UTMs parsed by hand from the file names: fields 1, 2 of name.split('@')."""
    names = sorted((world / "synthetic" / "images" / split / kind).iterdir())
    return np.array([[float(n.name.split("@")[1]), float(n.name.split("@")[2])] for n in names])


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _check_stats(got: dict, values: np.ndarray) -> None:
    for key, ref in (("min", values.min()), ("median", np.median(values)), ("mean", values.mean()),
                     ("max", values.max())):
        assert got[key] == pytest.approx(float(ref), abs=1e-9), key


def test_summary_equals_brute_force(analysis, tiny_world):
    _, summary = analysis
    assert list(summary["splits"]) == list(SPLITS)
    for split in SPLITS:
        db, q = _utms(tiny_world, split, "database"), _utms(tiny_world, split, "queries")
        st = summary["splits"][split]
        assert (st["database_num"], st["queries_num"]) == (len(db), len(q))
        d = _pairwise(q, db)  # Q×N_db metres
        for thr in THRESHOLDS.values():
            counts = (d <= thr).sum(axis=1)
            pos = st["positives_per_query"][f"{thr:g}"]
            _check_stats(pos, counts)
            assert pos["total_pairs"] == counts.sum()
            assert pos["queries_without_positives"] == (counts == 0).sum()
            assert sum(pos["histogram"]["counts"]) == len(q)
        _check_stats(st["nearest_database_distance_m"], d.min(axis=1))
        positions = np.array(sorted({tuple(p) for p in db.tolist()}))
        per_position = np.array([(db == p).all(axis=1).sum() for p in positions])
        spacing = _pairwise(positions, positions) + np.diag(np.full(len(positions), np.inf))
        dens = st["database_density"]
        assert dens["distinct_positions"] == len(positions)
        _check_stats(dens["images_per_position"], per_position)
        _check_stats(dens["neighbour_spacing_m"], spacing.min(axis=1))
    everything = {s: np.concatenate([_utms(tiny_world, s, "database"), _utms(tiny_world, s, "queries")])
                  for s in SPLITS}
    for pair, gap in summary["min_distance_between_splits_m"].items():
        a, b = pair.split("-")
        assert gap == pytest.approx(_pairwise(everything[a], everything[b]).min())
        assert gap > 64  # the synthetic world keeps splits apart by more than a view


def test_hand_computed_statistics():
    db = np.array([[0, 0], [0, 0], [0, 0], [10, 0], [30, 0]], dtype=float)
    q = np.array([[0, 0], [5, 0], [100, 0]], dtype=float)
    st = ad.split_stats(db, q, {"train": 10.0})
    pos = st["positives_per_query"]["10"]  # 10 m is inclusive: (10, 0) counts for the query at (0, 0)
    assert (pos["min"], pos["median"], pos["max"], pos["total_pairs"], pos["queries_without_positives"]) == \
        (0, 4, 4, 8, 1)
    assert pos["mean"] == pytest.approx(8 / 3)
    assert st["nearest_database_distance_m"]["max"] == 70 and st["nearest_database_distance_m"]["median"] == 5
    dens = st["database_density"]
    assert dens["distinct_positions"] == 3
    assert (dens["images_per_position"]["max"], dens["images_per_position"]["median"]) == (3, 1)
    assert (dens["neighbour_spacing_m"]["min"], dens["neighbour_spacing_m"]["max"]) == (10, 20)
    assert dens["images_per_position"]["histogram"]["counts"] == [2, 0, 1]  # two single positions, one triple


def _assert_not_blank(path: Path) -> None:
    """A real picture: varied pixels, many colours, not one flat colour."""
    a = np.asarray(Image.open(path).convert("RGB"))
    assert a.shape[0] > 50 and a.shape[1] > 50, path
    assert a.std() > 15, f"{path} looks blank (pixel std {a.std():.1f})"
    packed = (a[..., 0].astype(np.int32) << 16) | (a[..., 1].astype(np.int32) << 8) | a[..., 2]
    assert len(np.unique(packed)) > 20, f"{path} has too few colours"


def test_every_figure_written_and_not_blank(analysis):
    out, summary = analysis
    expected = {"counts.png", "map_all_splits.png"} | {
        f"{kind}_{s}.png" for s in SPLITS
        for kind in ("map", "positives", "nearest_database", "density", "samples", "query_positives")}
    assert set(summary["figures"]) == expected
    assert {p.name for p in out.glob("*.png")} == expected
    for name in expected:
        _assert_not_blank(out / name)


def test_default_splits_follow_the_dataset(tmp_path):
    for split in ("test", "extra", "train"):
        (tmp_path / "d" / "images" / split).mkdir(parents=True)
    assert ad.default_splits(str(tmp_path), "d") == ["train", "test", "extra"]


@pytest.mark.parametrize("flags, message", [
    (["--dataset_name", "nope"], "dataset 'nope' not found"),
    (["--splits", "nope"], "split 'nope' missing"),
    (["--splits", "val", "val"], "duplicates"),
    (["--val_positive_dist_threshold", "0"], "must be a finite number > 0"),
    (["--train_positives_dist_threshold", "inf"], "must be a finite number > 0"),
    (["--grid_size", "1"], "--grid_size"),
    (["--grid_height", "4"], "--grid_height"),
    (["--no_such_flag"], "unrecognized arguments"),
])
def test_user_errors(tiny_world, tmp_path, capsys, flags, message):
    argv = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--out", str(tmp_path)] + flags
    with pytest.raises(UserError, match=message):
        ad.main(argv)
    with pytest.raises(SystemExit) as e:
        run_cli(ad.main, argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and "\n" not in err


def test_summary_is_kept_when_a_figure_fails(tiny_world, tmp_path, monkeypatch):
    """summary.json is written before the figures: a full disk at a grid loses no number."""
    def full_disk(img, path, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ad, "save_image", full_disk)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left on device"):
        ad.main(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--out", str(out),
                 "--splits", "test"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["test"]["database_num"] == 80 and "figures" not in summary
    assert not list(out.glob(".*"))  # no temporary file


def test_unreadable_images_in_the_grids(tmp_path, capsys):
    test = tmp_path / "d" / "images" / "test"
    for kind, xs in (("database", (0, 5, 30)), ("queries", (1, 31))):
        for x in xs:
            (test / kind).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (x * 8, 90, 30)).save(test / kind / f"@{x}.00@0.00@.jpg")
    bad = test / "database" / "@5.00@0.00@.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    argv = ["--datasets_folder", str(tmp_path), "--dataset_name", "d", "--out", str(tmp_path / "out"),
            "--grid_size", "3"]
    with pytest.raises(UserError, match="cannot be decoded.*or pass --skip_corrupt to leave such images out"):
        ad.main(argv)
    summary = ad.main(argv + ["--skip_corrupt"])
    assert set(summary["unreadable_in_grids"]) == {str(bad)}  # in both grids, named each time
    assert "--skip_corrupt: left" in capsys.readouterr().out
    assert {"samples_test.png", "query_positives_test.png"} <= set(summary["figures"])
