"""localize.py end to end on the synthetic worlds: same R@1 as eval.py, an index encoded once and updated
incrementally, GeoJSON at the predicted positions, stable answers, bad input, and a Chromium screenshot."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import localize as localize_cli
from commons import run_cli
from conftest import ROOT, tiny_train_flags
from localization.geo import utm_to_latlon
from network import build_model
from parser import parse_train_args
from util import save_checkpoint

TEST = Path("synthetic/images/test")


def make_checkpoint(folder: Path, world: Path, seed: int) -> Path:
    """An untrained model in train.py's checkpoint format (32×32 images, GeM)."""
    args = parse_train_args(tiny_train_flags(world, "unused"))
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    save_checkpoint({"model_state_dict": build_model(args).state_dict(), "args": vars(args)}, folder, is_best=True)
    return folder / "best_model.pth"


@pytest.fixture(scope="module")
def ckpts(tiny_world: Path, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("localize_ckpts")
    return make_checkpoint(root / "a", tiny_world, 0), make_checkpoint(root / "b", tiny_world, 1)


def localize(cwd: Path, ckpt: Path, database: Path, *inputs, extra: tuple = ()) -> dict:
    """localize.main run in cwd; returns its summary and records."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        return localize_cli.main([*map(str, inputs), "--resume", str(ckpt), "--database", str(database),
                                  "--device", "cpu", "--num_workers", "0", "--infer_batch_size", "64",
                                  "--max_pictures", "2", *map(str, extra)])


def queries(world: Path, n: int) -> list[Path]:
    return sorted((world / TEST / "queries").iterdir())[:n]


def utm_of(name: str) -> tuple[float, float]:
    e, n = Path(name).name.split("@")[1:3]
    return float(e), float(n)


def log_lines(cwd: Path, result: dict, text: str) -> list[str]:
    return [ln for ln in (cwd / result["run_folder"] / "info.log").read_text().splitlines() if text in ln]


def test_top1_recall_equals_eval(e2e_world: Path, ckpts, tmp_path: Path, monkeypatch) -> None:
    """Same checkpoint, world and image size: the same top-1 hit for every query, hence the same R@1."""
    monkeypatch.chdir(tmp_path)
    common = ["--resume", str(ckpts[0]), "--resize", "32", "32", "--device", "cpu", "--num_workers", "0",
              "--infer_batch_size", "64"]
    ev = eval_cli.main(["--datasets_folder", str(e2e_world), "--dataset_name", "synthetic", "--recall_values", "1",
                        "--save_predictions", "1", "--save_dir", "ev", *common])
    loc = localize_cli.main(["--database", str(e2e_world / TEST / "database"), "--queries",
                             str(e2e_world / TEST / "queries"), "--max_pictures", "0", "--save_dir", "loc", *common])
    (ev_folder,) = (tmp_path / "logs/ev").iterdir()  # predictions/<query index>_<correct|wrong>.jpg
    eval_hits = [p.stem.endswith("_correct") for p in sorted(ev_folder.glob("predictions/*.jpg"))]
    hits = [np.hypot(*np.subtract(utm_of(r["photo"]), utm_of(r["matches"][0]["file"]))) <= 25 for r in loc["records"]]
    assert len(hits) == len(eval_hits) == 300 and 0 < sum(hits) < 300
    assert hits == eval_hits
    assert loc["recall_at_1"] == ev["recalls"]["1"] == 100 * np.mean(hits)


def test_index_is_reused_and_updated_incrementally(tiny_world: Path, ckpts, tmp_path: Path) -> None:
    db, index = tmp_path / "db", tmp_path / "index"
    shutil.copytree(tiny_world / TEST / "database", db)
    photos, run = queries(tiny_world, 3), lambda folder=index: localize(tmp_path, ckpts[0], db, *photos,
                                                                          extra=("--index_dir", folder))
    first = run()
    assert (first["database_encoded"], first["database_images"]) == (80, 80)
    second = run()
    assert second["database_encoded"] == 0 and second["records"] == first["records"]
    for p in sorted((tiny_world / "synthetic/images/val/database").iterdir())[:10]:
        shutil.copy(p, db / p.name)
    added = run()
    assert (added["database_encoded"], added["database_images"]) == (10, 90)
    for p in sorted(db.iterdir())[:5]:
        p.unlink()
    changed = sorted(db.iterdir())[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10 ** 9))
    after = run()
    assert (after["database_encoded"], after["database_images"]) == (1, 85)  # only the changed file
    fresh = run(tmp_path / "fresh")
    assert fresh["database_encoded"] == 85

    def descriptors(folder: Path) -> dict[str, np.ndarray]:
        files = json.loads((folder / "files.json").read_text())
        return dict(zip([f[0] for f in files], np.load(folder / "descriptors.npy")))
    updated, rebuilt = descriptors(index), descriptors(tmp_path / "fresh")
    assert sorted(updated) == sorted(rebuilt) == sorted(p.name for p in db.iterdir())
    for name, row in rebuilt.items():
        assert row.dtype == np.float16
        np.testing.assert_allclose(updated[name].astype(np.float32), row.astype(np.float32), atol=2e-3)


def test_index_is_rebuilt_for_another_model_or_size(tiny_world: Path, ckpts, tmp_path: Path) -> None:
    db, index = tiny_world / TEST / "database", tmp_path / "index"
    run = lambda ck, *extra: localize(tmp_path, ck, db, *queries(tiny_world, 2),  # noqa: E731
                                      extra=("--index_dir", index, *extra))
    assert run(ckpts[0])["database_encoded"] == 80
    other = run(ckpts[1])
    assert other["database_encoded"] == 80
    (line,) = log_lines(tmp_path, other, "rebuilding it")
    assert "was built with another model" in line and str(ckpts[1]) in line
    size = run(ckpts[1], "--resize", "64", "64")
    assert size["database_encoded"] == 80
    (line,) = log_lines(tmp_path, size, "rebuilding it")
    assert "was built at 32×32 px, not 64×64; rebuilding it" in line
    kind = run(ckpts[1], "--resize", "64", "64", "--index", "hnsw")
    assert kind["database_encoded"] == 0 and json.loads((index / "meta.json").read_text())["index"] == "hnsw"
    assert log_lines(tmp_path, kind, "holds a flat faiss index, not hnsw: rebuilding it from the stored descriptors")
    (index / "descriptors.npy").unlink()
    broken = run(ckpts[1], "--resize", "64", "64", "--index", "hnsw")
    assert broken["database_encoded"] == 80 and log_lines(tmp_path, broken, "is unreadable")


@pytest.fixture(scope="module")
def zone_run(tiny_world: Path, ckpts, tmp_path_factory) -> tuple[Path, dict]:
    """3 test queries localized with --utm_zone 17T: (cwd, result)."""
    cwd = tmp_path_factory.mktemp("zone_run")
    return cwd, localize(cwd, ckpts[0], tiny_world / TEST / "database", *queries(tiny_world, 3),
                         extra=("--utm_zone", "17T", "--max_pictures", "3"))


def test_geojson_points_are_the_predicted_database_positions(zone_run, tiny_world: Path, ckpts) -> None:
    cwd, result = zone_run
    collection = json.loads((cwd / result["run_folder"] / "predictions.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 3
    for feature, rec in zip(collection["features"], result["records"]):
        e, n = utm_of(rec["matches"][0]["file"])  # the top-1 database image's position, from its name
        lat, lon = utm_to_latlon(e, n, 17, True)
        assert feature["geometry"]["type"] == "Point"
        assert feature["geometry"]["coordinates"] == pytest.approx([float(lon), float(lat)], abs=1e-7)
        props = feature["properties"]
        assert props["photo"] == rec["photo"] and (props["easting"], props["northing"]) == (e, n)
        assert len(props["matches"]) == 5 and 0 <= props["confidence"] <= 1
    # without a zone: UTM coordinates, the database names' own values
    plain = localize(cwd, ckpts[0], tiny_world / TEST / "database", *queries(tiny_world, 3))
    features = json.loads((cwd / plain["run_folder"] / "predictions.geojson").read_text())["features"]
    assert [f["geometry"]["coordinates"] for f in features] == [list(utm_of(r["matches"][0]["file"]))
                                                                for r in plain["records"]]


def test_latitude_longitude_fields_of_names_are_used(tiny_world: Path, ckpts, tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    for i, p in enumerate(sorted((tiny_world / TEST / "database").iterdir())[:20]):
        e, n = utm_of(p.name)
        shutil.copy(p, db / f"@{e:.2f}@{n:.2f}@17@T@{10 + i / 1000:.3f}@{20 + i / 1000:.3f}@pano{i}@.jpg")
    result = localize(tmp_path, ckpts[0], db, *queries(tiny_world, 2))
    features = json.loads((tmp_path / result["run_folder"] / "predictions.geojson").read_text())["features"]
    for f, rec in zip(features, result["records"]):
        lat, lon = map(float, rec["matches"][0]["file"].split("@")[5:7])
        assert f["geometry"]["coordinates"] == [lon, lat] and rec["utm_zone"] == "17T"


def test_photo_given_twice_gets_the_same_answer(tiny_world: Path, ckpts, tmp_path: Path) -> None:
    a, b = queries(tiny_world, 2)
    db = tiny_world / TEST / "database"
    recs = localize(tmp_path, ckpts[0], db, a, b, a)["records"]
    assert recs[0] == recs[2] and recs[0]["photo"] == str(a) and recs[1]["photo"] == str(b)
    (alone,) = localize(tmp_path, ckpts[0], db, a)["records"]
    assert [m["file"] for m in alone["matches"]] == [m["file"] for m in recs[0]["matches"]]
    assert [m["descriptor_distance"] for m in alone["matches"]] == pytest.approx(
        [m["descriptor_distance"] for m in recs[0]["matches"]], abs=1e-4)


def test_bad_inputs_get_one_line_each(tiny_world: Path, ckpts, tmp_path: Path, capsys) -> None:
    good = queries(tiny_world, 1)[0]
    broken, cut, empty = tmp_path / "broken.jpg", tmp_path / "cut.jpg", tmp_path / "empty"
    broken.write_bytes(b"not an image")
    cut.write_bytes(good.read_bytes()[:200])
    empty.mkdir()
    result = localize(tmp_path, ckpts[0], tiny_world / TEST / "database", good, broken, empty, cut,
                      tmp_path / "missing.jpg")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "error: " in ln]
    assert len(lines) == 4 and "Traceback" not in "".join(lines)
    for item, text in ((broken, "cannot decode"), (cut, "cannot decode"), (empty, "holds no .jpg"),
                       (tmp_path / "missing.jpg", "does not exist")):
        assert sum(str(item) in ln and text in ln for ln in lines) == 1, (item, lines)
    assert [r["status"] for r in result["records"]] == ["ok"] + ["error"] * 4
    rows = (tmp_path / result["run_folder"] / "predictions.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[1].startswith(f"{good},ok,")


def _no_utm(db: Path) -> None:
    Image.new("RGB", (32, 32)).save(db / "IMG_0001.jpg")


EXIT_2 = {  # database mutation, inputs, extra flags, expected message
    "nothing readable": (None, ["broken.jpg", "empty"], [], "nothing to localize: none of the 2 inputs"),
    "database names without UTM": (_no_utm, ["good"], [], "IMG_0001.jpg; names must look like"),
    "database without images": (lambda db: [p.unlink() for p in db.iterdir()], ["good"], [], "holds no .jpg"),
    "no photo": (None, [], [], "no photo given"),
    "bad zone": (None, ["good"], ["--utm_zone", "99Z"], "--utm_zone '99Z' is no UTM zone"),
}


@pytest.mark.parametrize("case", list(EXIT_2))
def test_exit_2_when_nothing_can_be_localized(case: str, tiny_world: Path, ckpts, tmp_path: Path, monkeypatch,
                                              capsys) -> None:
    mutate, inputs, extra, expected = EXIT_2[case]
    db = tmp_path / "db"
    shutil.copytree(tiny_world / TEST / "database", db)
    if mutate:
        mutate(db)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "empty").mkdir()
    named = {"good": str(queries(tiny_world, 1)[0])}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_cli(localize_cli.main, [named.get(i, i) for i in inputs] + ["--resume", str(ckpts[0]), "--database",
                                                                       str(db), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    msg = err[err.rfind("error: "):].strip()
    assert "\n" not in msg and expected in msg, msg


def test_index_html_screenshot(zone_run, tmp_path: Path) -> None:
    """index.html rendered by headless Chromium, offline: the header band, the map's points and the pictures."""
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    cwd, result = zone_run
    shot = tmp_path / "shot.png"
    subprocess.run(["bash", str(ROOT / "tools/screenshot_localize.sh"), str(cwd / result["run_folder"] /
                    "index.html"), str(shot), "1200", "800"], check=True, capture_output=True, timeout=180)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (800, 1200, 3)
    assert np.abs(img[5, 5] - [0x28, 0x3f, 0x5a]).max() <= 3  # the header band
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # the embedded pictures rendered
