"""Pictures and plots: captioned image grids (PIL), prediction pictures and recall plots (matplotlib, Agg).

Image grids are composed with PIL (fast enough for one picture per query); charts use matplotlib with the
non-interactive Agg backend, so nothing here needs a display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runs.atomic_files import atomic_write
from dataio.images import open_image


def pyplot():
    """matplotlib.pyplot with the Agg backend, imported on first use (it costs every train.py/eval.py start-up
    half a second otherwise)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

CORRECT, WRONG, QUERY = (0, 170, 0), (220, 0, 0), (40, 90, 220)  # frame colours (RGB)
NEUTRAL = (150, 150, 150)
BACKGROUND, TEXT = (255, 255, 255), (0, 0, 0)
BORDER, GAP, FONT_SIZE = 4, 6, 12  # pixels
DPI = 90


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font."""
    return ImageFont.load_default(size=size)


def load_thumbnail(path: str | Path, height: int) -> Image.Image:
    """RGB image at `path` resized to `height` pixels high (aspect kept)."""
    img = open_image(Path(path))
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.BILINEAR)


def framed_tile(img: Image.Image, frame: tuple[int, int, int], caption: str) -> Image.Image:
    """img inside a BORDER-px frame of colour `frame`, with the (possibly multi-line) caption below."""
    lines = caption.split("\n") if caption else []
    line_h = FONT_SIZE + 2
    w, h = img.width + 2 * BORDER, img.height + 2 * BORDER
    tile = Image.new("RGB", (w, h + line_h * len(lines) + (2 if lines else 0)), BACKGROUND)
    tile.paste(Image.new("RGB", (w, h), frame), (0, 0))
    tile.paste(img, (BORDER, BORDER))
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(lines):
        draw.text((2, h + 1 + i * line_h), line, fill=TEXT, font=font())
    return tile


def tile_grid(sections: Sequence[tuple[str, Sequence[Image.Image]]], columns: int) -> Image.Image:
    """Sections of tiles, each under a title line, laid out `columns` per row in equal cells."""
    tiles = [t for _, ts in sections for t in ts]
    cell_w = max(t.width for t in tiles) + GAP
    cell_h = max(t.height for t in tiles) + GAP
    title_h = FONT_SIZE + 6
    rows = [(s, ts[i:i + columns]) for s, (_, ts) in enumerate(sections) for i in range(0, max(len(ts), 1), columns)]
    height = GAP + cell_h * len(rows) + title_h * len(sections)
    canvas = Image.new("RGB", (GAP + cell_w * columns, height), BACKGROUND)
    draw, y, last = ImageDraw.Draw(canvas), GAP, -1
    for s, row in rows:
        if s != last:
            draw.text((GAP, y), sections[s][0], fill=TEXT, font=font(FONT_SIZE + 1))
            y, last = y + title_h, s
        for j, t in enumerate(row):
            canvas.paste(t, (GAP + j * cell_w, y))
        y += cell_h
    return canvas


def utm_caption(utm: Sequence[float]) -> str:
    """Two-line 'E easting / N northing' caption (metres)."""
    return f"E {utm[0]:.1f}\nN {utm[1]:.1f}"


def prediction_picture(query: Image.Image, predictions: Sequence[Image.Image], distances_m: Sequence[float],
                       threshold: float, title: str = "query", columns: int = 11) -> Image.Image:
    """The query beside its ranked predictions, each framed green if within `threshold` metres, else red."""
    tiles = [framed_tile(query, QUERY, "query\n")]
    tiles += [framed_tile(img, CORRECT if d <= threshold else WRONG, f"#{k + 1}\n{d:.1f} m")
              for k, (img, d) in enumerate(zip(predictions, distances_m))]
    return tile_grid([(f"{title}: top-{len(predictions)} predictions (green: within {threshold:g} m)", tiles)],
                     min(columns, len(tiles)))


def save_prediction_pictures(query_paths: Sequence[Path], database_paths: Sequence[Path],
                             predictions: np.ndarray, distances_m: np.ndarray, threshold: float,
                             folder: Path, only_wrong: bool = False, height: int = 160) -> int:
    """One JPEG per query (predictions, distances_m: Q×N) in folder; returns how many were written.

    Files are named <query index>_<correct|wrong>.jpg after whether the top-1 prediction is within threshold.
    With only_wrong, queries whose top-1 prediction is correct are skipped.
    """
    folder.mkdir(parents=True, exist_ok=True)
    top1_ok = distances_m[:, 0] <= threshold  # Q
    written = 0
    for q in np.flatnonzero(~top1_ok if only_wrong else np.ones_like(top1_ok)):
        pic = prediction_picture(load_thumbnail(query_paths[q], height),
                                 [load_thumbnail(database_paths[i], height) for i in predictions[q]],
                                 distances_m[q], threshold, f"query {q} ({Path(query_paths[q]).name})")
        save_image(pic, folder / f"{q:05d}_{'correct' if top1_ok[q] else 'wrong'}.jpg", quality=90)
        written += 1
    return written


def save_image(img: Image.Image, path: Path, **options) -> Path:
    """Write a PIL image whole or not at all (atomic_write), in the format of path's suffix."""
    atomic_write(path, lambda f: img.save(f, format=Image.registered_extensions()[path.suffix.lower()], **options))
    return path


def save_figure(fig, path: Path) -> Path:
    """Write fig as PNG, whole or not at all (atomic_write), and close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))
    finally:
        pyplot().close(fig)
    return path


def plot_training_curves(losses: Sequence[float], val_history: Sequence[dict[str, float]], refreshes_per_epoch: int,
                         path: Path, metric: int) -> Path:
    """Loss of every cache refresh (x: epochs trained) and validation recall@N of every epoch, best R@metric
    marked."""
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 3.5))
    x = (np.arange(len(losses)) + 1) / refreshes_per_epoch
    a.plot(x, losses, marker="." if len(losses) < 50 else None)
    a.set(xlabel="epochs trained", ylabel="mean loss of the cache refresh", title="training loss")
    epochs = np.arange(1, len(val_history) + 1)
    for n in sorted({int(k) for h in val_history for k in h}):
        b.plot(epochs, [h.get(str(n), np.nan) for h in val_history], marker="o", label=f"R@{n}")
    if val_history:
        best = int(np.argmax([h[str(metric)] for h in val_history]))
        b.axvline(best + 1, color="k", ls=":", lw=1, label=f"best R@{metric} (epoch {best + 1})")
        b.legend(fontsize=8)
    b.set(xlabel="epoch", ylabel="validation recall (%)", title="validation", ylim=(0, 101))
    b.xaxis.get_major_locator().set_params(integer=True)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_recall_curve(curve: dict[int, float], path: Path, title: str) -> Path:
    """Recall@N (percent) against N."""
    ns = sorted(curve)
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(ns, [curve[n] for n in ns], marker="." if len(ns) < 30 else None)
    ax.set(xlabel="N (retrieved database images)", ylabel="recall@N (%)", title=title, ylim=(0, 101))
    if ns[-1] >= 20:
        ax.set_xscale("log")
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= ns[-1]]
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_recall_vs_threshold(by_threshold: dict[float, dict[int, float]], path: Path, title: str) -> Path:
    """Recall@N (percent) against the success radius in metres, one line per N."""
    radii = sorted(by_threshold)
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for n in sorted(by_threshold[radii[0]]):
        ax.plot(radii, [by_threshold[r][n] for r in radii], marker="o", label=f"R@{n}")
    ax.set(xlabel="success radius (m)", ylabel="recall (%)", title=title, ylim=(0, 101))
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
