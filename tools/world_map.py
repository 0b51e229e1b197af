"""The synthetic world's map and views (tools/synthetic_world.py writes them): the procedural map, the strips of the
splits, the camera poses, and the rendering of rotated views.

One RGB map (1 px = 1 m): multi-octave smooth noise plus random solid rectangles, in a style of
tools/world_styles.py. Each split owns a vertical strip of it, strips separated by more than a view reaches, so
splits share no map content. Database views are rotated crops at uniform random poses; queries re-view a database
pose with jitter.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from commons import UserError
from tools.world_styles import DEFAULT_STYLE, STYLES, WorldStyle

SPLITS = ("train", "val", "test")
U8_CENTER, U8_SCALE = 128.0, 40.0       # uint8 = clip(128 + 40 · standardized value)

Region = tuple[float, float, float, float]  # x_min, x_max, y_min, y_max in map metres


def generator(seed: int, stream: int) -> torch.Generator:
    """An independent torch generator for (seed, stream)."""
    state = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel zero mean, unit std of a C×H×W tensor (NumPy float64 stats: thread-count independent)."""
    a = x.numpy().astype(np.float64)
    mean, std = a.mean(axis=(1, 2), keepdims=True), a.std(axis=(1, 2), keepdims=True)
    return torch.from_numpy(((a - mean) / std).astype(np.float32))


def make_map(map_size: int, seed: int, style: WorldStyle = STYLES[DEFAULT_STYLE]) -> torch.Tensor:
    """Procedural RGB map, 3×M×M float32 (M = map_size, 1 px = 1 m), standardized per channel."""
    g, m = generator(seed, 0), map_size
    world = torch.zeros(1, 3, m, m)
    for s in style.noise_scales:
        n = math.ceil(m / s) + 2
        grid = torch.randn(1, 3, n, n, generator=g)                    # 1×3×n×n
        up = F.interpolate(grid, scale_factor=s, mode="bicubic", align_corners=False)
        world += up[..., s:s + m, s:s + m]
    if style.map_colour_mix is not None:
        world = torch.einsum("ij,bjhw->bihw", torch.tensor(style.map_colour_mix), world)
    world = _standardize(world[0])                                      # 3×M×M
    n_rects = round(style.rects_per_m2 * m * m)
    lo, hi = style.rect_side
    sides = torch.randint(lo, hi + 1, (n_rects, 2), generator=g).clamp(max=m)
    corners = torch.rand(n_rects, 2, generator=g)
    colours = torch.randn(n_rects, 3, generator=g)                      # n_rects×3
    if style.rect_colour_std != 1.0 or any(style.rect_colour_mean):
        colours = colours * style.rect_colour_std + torch.tensor(style.rect_colour_mean)
    for (w, h), (u, v), c in zip(sides.tolist(), corners.tolist(), colours):
        x0, y0 = int(u * (m - w + 1)), int(v * (m - h + 1))
        world[:, y0:y0 + h, x0:x0 + w] = c[:, None, None]
    return _standardize(world)


def _ceil2(v: float) -> float:
    return math.ceil(round(v * 100, 6)) / 100  # up to whole centimetres


def _floor2(v: float) -> float:
    return math.floor(round(v * 100, 6)) / 100


def split_regions(map_size: int, view_width: float, db_counts: dict[str, int]) -> dict[str, Region]:
    """Disjoint vertical strips of camera positions, one per split, in SPLITS order.

    A view reaches view_width/√2 m from its centre, so strips keep that (+1 m for bilinear) from the
    map border and are separated by a gap of twice that: views of different splits share no map pixel.
    Each strip is at least view_width wide; the rest is shared in proportion to the database counts.
    """
    reach = view_width / math.sqrt(2) + 1.0
    margin, gap = _ceil2(reach), _ceil2(2 * reach)
    extra = map_size - 2 * margin - (len(SPLITS) - 1) * gap - len(SPLITS) * view_width
    if extra < 0 or map_size - 2 * margin < view_width:
        need = math.ceil(map_size - extra)
        raise UserError(f"map_size {map_size} is too small for view_width {view_width:g}; "
                        f"use map_size >= {need} or a smaller view_width")
    total = sum(db_counts[s] for s in SPLITS)
    regions, x = {}, margin
    for s in SPLITS:
        w = view_width + extra * db_counts[s] / total
        regions[s] = (_ceil2(x), _floor2(x + w), margin, _floor2(map_size - margin))
        x += w + gap
    return regions


def _round2(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 100) / 100


def _clamp_to(xy: torch.Tensor, region: Region, reflect: bool = False) -> torch.Tensor:
    """Bring N×2 positions into region: optionally mirror at its borders first, then clamp.

    Mirroring keeps a jittered point no farther from its (inside) source and avoids piling up on the border.
    """
    x0, x1, y0, y1 = region
    x, y = xy[:, 0], xy[:, 1]
    if reflect:
        x = torch.where(x < x0, 2 * x0 - x, torch.where(x > x1, 2 * x1 - x, x))
        y = torch.where(y < y0, 2 * y0 - y, torch.where(y > y1, 2 * y1 - y, y))
    return torch.stack([x.clamp(x0, x1), y.clamp(y0, y1)], dim=1)


def sample_poses(region: Region, n_db: int, n_q: int, g: torch.Generator,
                 change: dict = STYLES[DEFAULT_STYLE].query_change) -> dict[str, torch.Tensor]:
    """Database poses uniform in region; each query jitters a database pose (positions rounded to 1 cm).

    change: the style's query change (its "pos_std_m" and "heading_std_rad" apply here).

    Returns float64 tensors: db_xy N×2, db_heading N, q_xy Q×2, q_heading Q, q_source Q (int64).
    """
    x0, x1, y0, y1 = region
    u = torch.rand(n_db, 2, generator=g, dtype=torch.float64)
    db_xy = _clamp_to(_round2(torch.stack([x0 + u[:, 0] * (x1 - x0), y0 + u[:, 1] * (y1 - y0)], 1)), region)
    db_heading = torch.rand(n_db, generator=g, dtype=torch.float64) * 2 * math.pi
    if n_q <= n_db:
        src = torch.randperm(n_db, generator=g)[:n_q]
    else:
        src = torch.randint(0, n_db, (n_q,), generator=g)
    jitter = torch.randn(n_q, 2, generator=g, dtype=torch.float64) * change["pos_std_m"]
    q_xy = _clamp_to(_round2(_clamp_to(db_xy[src] + jitter, region, reflect=True)), region)
    q_heading = db_heading[src] + torch.randn(n_q, generator=g, dtype=torch.float64) * change["heading_std_rad"]
    return {"db_xy": db_xy, "db_heading": db_heading, "q_xy": q_xy,
            "q_heading": torch.remainder(q_heading, 2 * math.pi), "q_source": src}


def render_views(world: torch.Tensor, xy: torch.Tensor, heading: torch.Tensor,
                 view_width: float, image_size: int) -> torch.Tensor:
    """Rotated square crops of the map: world 3×H×W, xy N×2 metres, heading N radians -> N×3×S×S.

    The crop is view_width metres wide, centred on xy; image axis u maps to map direction
    (cos h, sin h) and v to (-sin h, cos h).
    """
    _, h, w = world.shape
    n = xy.shape[0]
    cos, sin = torch.cos(heading.double()), torch.sin(heading.double())
    theta = torch.empty(n, 2, 3, dtype=torch.float64)                    # N×2×3, normalized coords
    theta[:, 0, 0], theta[:, 0, 1] = cos * view_width / w, -sin * view_width / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * view_width / h, cos * view_width / h
    theta[:, 0, 2], theta[:, 1, 2] = 2 * xy[:, 0].double() / w - 1, 2 * xy[:, 1].double() / h - 1
    grid = F.affine_grid(theta.float(), [n, 3, image_size, image_size], align_corners=False)  # N×S×S×2
    src = world.unsqueeze(0).expand(n, -1, -1, -1)                      # N×3×H×W (no copy)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def to_uint8(views: torch.Tensor) -> torch.Tensor:
    """Standardized B×C×S×S float -> B×S×S×C uint8 with the fixed mapping clip(128 + 40·x)."""
    return (views * U8_SCALE + U8_CENTER).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
