"""Synthetic world generator: a procedural map rendered into a datasets_vg-style VG dataset.

One RGB map (1 px = 1 m): multi-octave smooth noise plus random solid rectangles, in a style of
tools/world_styles.py ("city" by default; "suburb" for a second world of another look). Each split owns a
vertical strip of it, strips separated by more than a view reaches, so splits share no map content.
Database views are rotated crops at uniform random poses; queries re-view a database pose with jitter
and an appearance change. Writes <out_dir>/<name>/world.json and
<out_dir>/<name>/images/<split>/{database,queries}/@<easting>@<northing>@<split>@<kind>@<index>@<heading_deg>@.jpg
with easting = 500000 + x, northing = 4400000 + y for the map position (x, y) in metres.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from commons import CliParser, UserError, run_cli
from tools.world_map import (SPLITS, Region, generator, make_map, render_views, sample_poses, split_regions,
                             to_uint8)
from tools.world_styles import DEFAULT_STYLE, STYLES, apply_appearance_change

__all__ = ["DEFAULT_SIZES", "SPLITS", "generate_world", "main", "make_map", "render_views", "sample_poses",
           "split_regions", "to_uint8", "view_filename"]  # the map and views re-exported from tools/world_map.py

DEFAULT_SIZES = {"train": (2000, 1000), "val": (500, 250), "test": (800, 400)}
FORMATS = ("jpg", "png")
UTM_ORIGIN = (500000.0, 4400000.0)
JPEG_QUALITY = 95
PIXELS_PER_CHUNK = 1 << 21              # views rendered per chunk = this / image_size²


def view_filename(x: float, y: float, split: str, kind: str, index: int, heading: float, ext: str) -> str:
    """datasets_vg name: @easting@northing@split@kind@index@heading_deg@.ext (UTM-like metres, 2 decimals)."""
    east, north = UTM_ORIGIN[0] + x, UTM_ORIGIN[1] + y
    return f"@{east:010.2f}@{north:010.2f}@{split}@{kind}@{index:05d}@{math.degrees(heading):06.2f}@.{ext}"


def _save_views(world: torch.Tensor, folder: Path, xy: torch.Tensor, heading: torch.Tensor, names: list[str],
                view_width: float, image_size: int, change: tuple[torch.Generator, dict] | None) -> None:
    """Render, optionally change appearance (queries), and save the views in chunks."""
    folder.mkdir(parents=True, exist_ok=True)
    chunk = max(1, PIXELS_PER_CHUNK // image_size ** 2)
    for start in range(0, len(names), chunk):
        end = min(start + chunk, len(names))
        views = render_views(world, xy[start:end], heading[start:end], view_width, image_size)  # B×3×S×S
        if change is not None:
            views = apply_appearance_change(views, *change)
        for img, name in zip(to_uint8(views).numpy(), names[start:end]):
            kwargs = {"quality": JPEG_QUALITY, "subsampling": 0} if name.endswith(".jpg") else {}
            Image.fromarray(img).save(folder / name, **kwargs)


def _write_split(world: torch.Tensor, root: Path, split: str, region: Region, counts: tuple[int, int],
                 view_width: float, image_size: int, ext: str, g: torch.Generator, change: dict) -> None:
    """Sample poses for one split and write its database and queries folders."""
    p = sample_poses(region, counts[0], counts[1], g, change)
    for kind, tag, xy, hd in (("database", "db", p["db_xy"], p["db_heading"]),
                              ("queries", "q", p["q_xy"], p["q_heading"])):
        names = [view_filename(x, y, split, tag, i, h, ext)
                 for i, ((x, y), h) in enumerate(zip(xy.tolist(), hd.tolist()))]
        _save_views(world, root / "images" / split / kind, xy, hd, names, view_width, image_size,
                    (g, change) if kind == "queries" else None)


def _validate(seed: int, name: str, image_size: int, sizes: dict, map_size: int,
              view_width: float, image_format: str) -> dict[str, tuple[int, int]]:
    """Check the arguments of generate_world; return sizes as {split: (n_db, n_q)}."""
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not is_int(seed) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. --seed 0")
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"name {name!r} is not a plain folder name; pass e.g. --name synthetic")
    if not is_int(image_size) or not 8 <= image_size <= 1024:
        raise UserError(f"image_size must be an integer in [8, 1024], got {image_size!r}; e.g. --image_size 64")
    if not is_int(map_size) or map_size <= 0:
        raise UserError(f"map_size must be a positive integer (metres), got {map_size!r}")
    if not isinstance(view_width, (int, float)) or not 0 < view_width < map_size:
        raise UserError(f"view_width must be in (0, map_size={map_size}) metres, got {view_width!r}")
    if image_format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {image_format!r}")
    if set(sizes) != set(SPLITS):
        raise UserError(f"sizes must have exactly the splits {', '.join(SPLITS)}, got {', '.join(sizes)}")
    out = {}
    for split in SPLITS:
        pair = tuple(sizes[split])
        if len(pair) != 2 or not all(is_int(v) and v > 0 for v in pair):
            raise UserError(f"{split} sizes must be two positive integers (database, queries), got {pair!r}; "
                            f"pass e.g. --{split}_db 200 --{split}_q 100")
        out[split] = (int(pair[0]), int(pair[1]))
    return out


MAP_BYTES_PER_M2 = 72  # peak memory of make_map per square metre: the float32 map, float64 statistics, temporaries


def _check_memory(map_size: int) -> None:
    """Refuse a map that cannot fit in this machine's memory, before allocating it."""
    need = MAP_BYTES_PER_M2 * map_size ** 2
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this system: no check
        return
    if need > have:
        raise UserError(f"--map_size {map_size} needs about {need / 2**30:.0f} GiB of memory for the map, more than "
                        f"the {have / 2**30:.0f} GiB here; use a smaller --map_size (default 1024)")


def _prepare_target(target: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing dataset unless overwrite; never remove a folder we did not write."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not overwrite:
        raise UserError(f"{target} already exists; pass --overwrite or choose another --out/--name")
    if not (target / "world.json").is_file():
        raise UserError(f"{target} exists and is not a synthetic world (no world.json); "
                        f"remove it yourself or choose another --out/--name")


def generate_world(out_dir: str | Path, seed: int = 0, name: str = "synthetic", image_size: int = 64,
                   sizes: dict[str, tuple[int, int]] | None = None, map_size: int = 1024,
                   view_width: float = 64.0, image_format: str = "jpg", overwrite: bool = False,
                   style: str = DEFAULT_STYLE) -> Path:
    """Generate a synthetic VG dataset at <out_dir>/<name> and return that path.

    sizes maps each split to (database, queries) counts (default DEFAULT_SIZES); style names an entry of
    tools.world_styles.STYLES. Same arguments give byte-identical files. Written to a temporary folder first,
    then renamed into place.
    """
    if style not in STYLES:
        raise UserError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    look = STYLES[style]
    sizes = _validate(seed, name, image_size, DEFAULT_SIZES if sizes is None else sizes,
                      map_size, view_width, image_format)
    _check_memory(map_size)
    out_dir, target = Path(out_dir), Path(out_dir) / name
    _prepare_target(target, overwrite)
    regions = split_regions(map_size, float(view_width), {s: n[0] for s, n in sizes.items()})
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir))
    except OSError as e:
        raise UserError(f"cannot write into {out_dir} ({e.strerror}); choose another --out") from e
    try:
        world = make_map(map_size, seed, look)
        for i, split in enumerate(SPLITS):
            _write_split(world, tmp, split, regions[split], sizes[split], float(view_width), image_size,
                         image_format, generator(seed, i + 1), look.query_change)
        info = {"seed": seed, "name": name, "image_size": image_size, "map_size": map_size,
                "view_width": float(view_width), "format": image_format, "utm_origin": list(UTM_ORIGIN),
                "sizes": {s: {"database": n[0], "queries": n[1]} for s, n in sizes.items()},
                "regions": {s: dict(zip(("x_min", "x_max", "y_min", "y_max"), r)) for s, r in regions.items()},
                "query_change": look.query_change}
        if style != DEFAULT_STYLE:  # the default world.json stays as it always was
            info.update(style=style, map_style=look.describe())
        (tmp / "world.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except OSError as e:
        raise UserError(f"cannot write the world into {out_dir} ({e.strerror}); free disk space or choose another "
                        f"--out (nothing was left behind)") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def main(argv: list[str] | None = None) -> Path:
    """CLI: generate a synthetic world and print its path and counts."""
    p = CliParser(prog="python -m tools.synthetic_world", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder; the dataset goes to OUT/NAME")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="synthetic")
    p.add_argument("--image_size", type=int, default=64, help="views are IMAGE_SIZE×IMAGE_SIZE px")
    p.add_argument("--map_size", type=int, default=1024, help="map side in metres (1 px = 1 m)")
    p.add_argument("--view_width", type=float, default=64.0, help="view side in metres")
    for split in SPLITS:
        p.add_argument(f"--{split}_db", type=int, default=DEFAULT_SIZES[split][0])
        p.add_argument(f"--{split}_q", type=int, default=DEFAULT_SIZES[split][1])
    p.add_argument("--format", choices=FORMATS, default="jpg")
    p.add_argument("--style", choices=sorted(STYLES), default=DEFAULT_STYLE,
                   help="map statistics and query appearance changes (tools/world_styles.py)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing world at OUT/NAME")
    a = p.parse_args(argv)
    sizes = {s: (getattr(a, f"{s}_db"), getattr(a, f"{s}_q")) for s in SPLITS}
    path = generate_world(a.out, a.seed, a.name, a.image_size, sizes, a.map_size, a.view_width,
                          a.format, a.overwrite, a.style)
    print(path)
    for s in SPLITS:
        print(f"{s}: {sizes[s][0]} database, {sizes[s][1]} queries")
    return path


if __name__ == "__main__":
    run_cli(main)
