"""Tests of the synthetic world generator (tools/synthetic_world.py)."""
from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import commons
import tools.synthetic_world as sw
from commons import UserError
from tools.synthetic_world import (SPLITS, generate_world, make_map, render_views, split_regions, to_uint8)

REPO = Path(__file__).resolve().parents[1]
SIZES = {"train": (60, 30), "val": (40, 20), "test": (50, 25)}
VIEW_WIDTH = 64.0
UTM_FIELD = re.compile(r"^\d{7}\.\d{2}$")


def parse_utm(name: str) -> tuple[float, float]:
    """(easting, northing) from a datasets_vg name '@easting@northing@...'; fails on a malformed name."""
    fields = name.split("@")
    assert len(fields) >= 4 and fields[0] == "", name
    assert UTM_FIELD.match(fields[1]) and UTM_FIELD.match(fields[2]), name
    return float(fields[1]), float(fields[2])


def map_xy(name: str) -> tuple[float, float]:
    """Map position in metres encoded by a file name."""
    east, north = parse_utm(name)
    return east - 500000.0, north - 4400000.0


def positions(root: Path, split: str, kind: str) -> tuple[list[Path], np.ndarray]:
    """Sorted files of one folder and their map positions, N×2."""
    files = sorted((root / "images" / split / kind).iterdir())
    return files, np.array([map_xy(f.name) for f in files]).reshape(-1, 2)


def min_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of a (N×2), the distance to the nearest row of b (M×2)."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root, keyed by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("sw"), seed=0, name="w", sizes=SIZES)


def test_layout_and_counts(world: Path) -> None:
    assert world.name == "w" and (world / "world.json").is_file()
    assert sorted(p.name for p in (world / "images").iterdir()) == sorted(SPLITS)
    assert not list((world / "images").glob("**/*.json"))
    for split, (n_db, n_q) in SIZES.items():
        folder = world / "images" / split
        assert sorted(p.name for p in folder.iterdir()) == ["database", "queries"]
        db, q = list((folder / "database").iterdir()), list((folder / "queries").iterdir())
        assert (len(db), len(q)) == (n_db, n_q)
        assert all(p.suffix == ".jpg" for p in db + q)
        img = Image.open(db[0])
        assert img.size == (64, 64) and img.mode == "RGB"
    info = json.loads((world / "world.json").read_text())
    assert info["seed"] == 0 and info["image_size"] == 64
    assert {s: tuple(v.values()) for s, v in info["sizes"].items()} == SIZES
    assert set(info["regions"]) == set(SPLITS)


def test_names_parse_to_utm_and_lie_in_their_region(world: Path) -> None:
    info = json.loads((world / "world.json").read_text())
    names = [p.name for p in (world / "images").rglob("*.jpg")]
    assert len(set(names)) == len(names) == sum(a + b for a, b in SIZES.values())
    for split in SPLITS:
        r = info["regions"][split]
        for kind in ("database", "queries"):
            _, xy = positions(world, split, kind)
            assert (xy[:, 0] >= r["x_min"]).all() and (xy[:, 0] <= r["x_max"]).all()
            assert (xy[:, 1] >= r["y_min"]).all() and (xy[:, 1] <= r["y_max"]).all()
            assert (xy >= 0).all() and (xy <= info["map_size"]).all()


def test_splits_are_geographically_disjoint(world: Path) -> None:
    xy = {s: np.concatenate([positions(world, s, k)[1] for k in ("database", "queries")]) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            # Views reach VIEW_WIDTH/√2 from their centre: farther than twice that, they share no pixel.
            assert min_dist(xy[a], xy[b]).min() > VIEW_WIDTH * math.sqrt(2)
    regions = split_regions(1024, VIEW_WIDTH, {"train": 2000, "val": 500, "test": 800})
    assert regions["val"][0] - regions["train"][1] > VIEW_WIDTH * math.sqrt(2)
    assert regions["test"][0] - regions["val"][1] > VIEW_WIDTH * math.sqrt(2)


def test_queries_are_near_a_database_image(world: Path) -> None:
    for split in SPLITS:
        _, db = positions(world, split, "database")
        _, q = positions(world, split, "queries")
        d = min_dist(q, db)
        assert d.max() < 30.0
        assert np.median(d) > 0.5  # queries are jittered, not copies of database poses


def clean_render(world_map: torch.Tensor, name: str) -> np.ndarray:
    """Re-render the view a file name describes without any appearance change, S×S×3 float."""
    x, y = map_xy(name)
    heading = math.radians(float(name.split("@")[6]))
    view = render_views(world_map, torch.tensor([[x, y]], dtype=torch.float64),
                        torch.tensor([heading], dtype=torch.float64), VIEW_WIDTH, 64)
    return to_uint8(view)[0].numpy().astype(np.float64)


def test_database_matches_pose_and_queries_change_appearance(world: Path) -> None:
    world_map = make_map(1024, seed=0)
    db_files, _ = positions(world, "test", "database")
    q_files, _ = positions(world, "test", "queries")

    def diff(files: list[Path]) -> float:
        return float(np.mean([np.abs(np.asarray(Image.open(f), dtype=np.float64) - clean_render(world_map, f.name))
                              .mean() for f in files[:20]]))

    db_diff, q_diff = diff(db_files), diff(q_files)
    assert db_diff < 4.0            # JPEG noise only: the name's pose is the rendered pose
    assert q_diff > 3 * db_diff and q_diff > 10.0


def test_nearby_views_overlap_far_views_do_not() -> None:
    world_map = make_map(1024, seed=0)
    g = torch.Generator().manual_seed(0)
    xy = 200 + 600 * torch.rand(64, 2, generator=g, dtype=torch.float64)
    heading = 2 * math.pi * torch.rand(64, generator=g, dtype=torch.float64)
    base = render_views(world_map, xy, heading, VIEW_WIDTH, 64)                       # 64×3×64×64
    assert base.shape == (64, 3, 64, 64)
    near = render_views(world_map, xy + torch.tensor([2.0, 0.0], dtype=torch.float64), heading, VIEW_WIDTH, 64)
    shift = torch.where(xy[:, 1:] < 500, 300.0, -300.0) * torch.tensor([0.0, 1.0], dtype=torch.float64)
    far = render_views(world_map, xy + shift, heading, VIEW_WIDTH, 64)                # 300 m away
    near_diff, far_diff = (base - near).abs().mean().item(), (base - far).abs().mean().item()
    assert near_diff < 0.5 * far_diff
    rotated = render_views(world_map, xy, heading + math.pi / 2, VIEW_WIDTH, 64)
    assert torch.allclose(torch.rot90(rotated, 1, dims=(2, 3)), base, atol=0.05) or \
        torch.allclose(torch.rot90(rotated, -1, dims=(2, 3)), base, atol=0.05)


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    kwargs = {"sizes": {s: (20, 10) for s in SPLITS}, "map_size": 512}
    a = digests(generate_world(tmp_path / "a", seed=3, **kwargs))
    b = digests(generate_world(tmp_path / "b", seed=3, **kwargs))
    c = digests(generate_world(tmp_path / "c", seed=4, **kwargs))
    assert a == b and len(a) == 3 * 30 + 1
    assert set(a) != set(c)                                           # different poses → different names
    assert set(a.values()).isdisjoint(v for k, v in c.items() if k.endswith(".jpg"))


def test_invalid_arguments_raise_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="positive"):
        generate_world(tmp_path, sizes={"train": (0, 5), "val": (5, 5), "test": (5, 5)})
    with pytest.raises(UserError, match="splits"):
        generate_world(tmp_path, sizes={"train": (5, 5)})
    with pytest.raises(UserError, match="map_size"):
        generate_world(tmp_path, map_size=200)
    with pytest.raises(UserError, match="image_size"):
        generate_world(tmp_path, image_size=0)
    assert not any(tmp_path.iterdir())                                 # nothing written on bad input


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.synthetic_world", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_subprocess_generates_and_rejects_bad_argument(tmp_path: Path) -> None:
    small = ["--out", str(tmp_path), "--seed", "1", "--map_size", "512", "--format", "png"]
    for s in SPLITS:
        small += [f"--{s}_db", "8", f"--{s}_q", "4"]
    ok = run_module(*small)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert Path(lines[0]) == tmp_path / "synthetic" and "8 database, 4 queries" in lines[1]
    assert len(list((tmp_path / "synthetic" / "images").rglob("*.png"))) == 36
    bad = run_module("--out", str(tmp_path / "x"), "--train_db", "-3")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "train" in bad.stderr, bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, word", [(["--image_size", "big"], "image_size"),
                                        (["--format", "gif"], "format"),
                                        (["--seed", "-1"], "seed")])
def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], word: str) -> None:
    with pytest.raises(SystemExit) as exc:
        commons.run_cli(sw.main, ["--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and word in err, err


def test_cli_refuses_to_clobber_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--out", str(tmp_path), "--map_size", "512"]
    for s in SPLITS:
        argv += [f"--{s}_db", "4", f"--{s}_q", "2"]
    sw.main(argv)
    stale = tmp_path / "synthetic" / "images" / "train" / "database" / "stale.jpg"
    stale.write_bytes(b"x")
    with pytest.raises(SystemExit):
        commons.run_cli(sw.main, argv)
    assert "--overwrite" in capsys.readouterr().err and stale.exists()
    sw.main(argv + ["--overwrite"])
    assert not stale.exists() and len(list((tmp_path / "synthetic" / "images").rglob("*.jpg"))) == 18
