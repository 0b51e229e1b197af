"""Styles of the synthetic world: map statistics and query appearance changes (tools/synthetic_world.py).

A style is plain data. "city" is the original world (dense small blocks, every noise octave, moderate query
changes); "suburb" stands in for a second dataset of another look, like St Lucia beside Pitts30k: smoother
terrain without the finest octaves, sparse larger blocks in muted, correlated colours, and stronger query
changes (wider illumination range, colour casts, more blur, noise and occluders). Both keep the query
position jitter, so the distance thresholds mean the same on both. `apply_appearance_change` applies a
style's query change to rendered views.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def _city_query_change() -> dict:
    return {"pos_std_m": 6.0, "heading_std_rad": 0.3, "gain": (0.5, 1.5), "bias_std": 0.5, "blur_prob": 0.5,
            "noise_std": 0.3, "max_occluders": 2, "occluder_fraction": 0.25}


@dataclass(frozen=True)
class WorldStyle:
    """Map statistics and query appearance change of one style.

    noise_scales: px per noise-grid cell, one octave each; rects_per_m2 and rect_side (min, max metres): the solid
    rectangles; rect_colour_std / rect_colour_mean: their colours, per channel, in units of the standardized map;
    map_colour_mix: None, or a 3×3 matrix mixing the noise channels (correlated channels look less colourful).
    query_change: pose jitter (metres, radians) and appearance change of the queries; the optional key
    "colour_mix_std" adds a random 3×3 colour transform near identity per query (a colour cast).
    """
    noise_scales: tuple[int, ...]
    rects_per_m2: float
    rect_side: tuple[int, int]
    rect_colour_std: float = 1.0
    rect_colour_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    map_colour_mix: tuple[tuple[float, ...], ...] | None = None
    query_change: dict = field(default_factory=_city_query_change)

    def describe(self) -> dict:
        """The style as JSON-ready data (for world.json)."""
        return {"noise_scales": list(self.noise_scales), "rects_per_m2": self.rects_per_m2,
                "rect_side": list(self.rect_side), "rect_colour_std": self.rect_colour_std,
                "rect_colour_mean": list(self.rect_colour_mean),
                "map_colour_mix": None if self.map_colour_mix is None else [list(r) for r in self.map_colour_mix]}


STYLES: dict[str, WorldStyle] = {
    "city": WorldStyle(noise_scales=(128, 32, 8, 2), rects_per_m2=1500 / 1024 ** 2, rect_side=(4, 30)),
    "suburb": WorldStyle(
        noise_scales=(256, 64, 16), rects_per_m2=400 / 1024 ** 2, rect_side=(10, 48),
        rect_colour_std=0.6, rect_colour_mean=(0.3, 0.5, -0.4),
        map_colour_mix=((1.0, 0.6, 0.2), (0.5, 1.0, 0.3), (0.2, 0.4, 1.0)),
        query_change={"pos_std_m": 6.0, "heading_std_rad": 0.4, "gain": (0.3, 1.7), "bias_std": 0.7,
                      "blur_prob": 0.7, "noise_std": 0.4, "max_occluders": 3, "occluder_fraction": 0.2,
                      "colour_mix_std": 0.2}),
}
DEFAULT_STYLE = "city"


def _blur3x3(x: torch.Tensor) -> torch.Tensor:
    """[1 2 1]⊗[1 2 1]/16 blur of B×C×H×W with replicate padding (fixed summation order)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]) / 4
    return (rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:]) / 4


def apply_appearance_change(views: torch.Tensor, g: torch.Generator,
                            change: dict = STYLES[DEFAULT_STYLE].query_change) -> torch.Tensor:
    """Query appearance change of standardized views B×C×S×S: colour cast (when the style has one),
    gain/bias, blur, occluders, noise."""
    b, c, s, _ = views.shape
    qc, n_max = change, change["max_occluders"]
    if qc.get("colour_mix_std", 0.0) > 0:
        mix = torch.eye(c) + torch.randn(b, c, c, generator=g) * qc["colour_mix_std"]  # B×C×C
        views = torch.einsum("bij,bjhw->bihw", mix, views)
    gain = qc["gain"][0] + (qc["gain"][1] - qc["gain"][0]) * torch.rand(b, c, 1, 1, generator=g)   # B×C×1×1
    out = views * gain + torch.randn(b, c, 1, 1, generator=g) * qc["bias_std"]
    blur = torch.rand(b, generator=g) < qc["blur_prob"]
    out = torch.where(blur[:, None, None, None], _blur3x3(out), out)
    occ = max(1, round(s * qc["occluder_fraction"]))
    n_occ = torch.randint(0, n_max + 1, (b,), generator=g)
    corners = torch.randint(0, s - occ + 1, (b, n_max, 2), generator=g)
    colours = torch.randn(b, n_max, c, generator=g)
    for i, k in enumerate(n_occ.tolist()):
        for j in range(k):
            y, x = corners[i, j].tolist()
            out[i, :, y:y + occ, x:x + occ] = colours[i, j, :, None, None]
    return out + torch.randn(out.shape, generator=g) * qc["noise_std"]
