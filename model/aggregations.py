"""Aggregation (pooling) layers: backbone feature map B×C×H×W -> L2-normalized global descriptor B×D.

Plain functions (`gem`, `mac`, `spoc`, `rmac`, `netvlad`, ...) hold the math; the nn.Module classes are thin
wrappers registered in `AGGREGATIONS`. Adding an aggregation is one class plus one `@register_aggregation` line.
This module holds the global poolings and `build_aggregation`; the registry and base class are in
model/aggregation_base.py, the NetVLAD family in model/netvlad.py. The VG benchmark's extra poolings (rrm, seqpool)
are in model/aggregations_dvgl.py, built on this module; network.py imports both, so every aggregation is
registered wherever a model is built.
"""
from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from torch import nn

from commons import UserError
from model.aggregation_base import AGGREGATIONS, Aggregation, l2n, register_aggregation
from model.netvlad import CRNNetVLAD, ContextualReweighting, NetVLAD, netvlad, netvlad_alpha

__all__ = ["AGGREGATIONS", "Aggregation", "CLS", "CRNNetVLAD", "ContextualReweighting", "GeM", "MAC", "NetVLAD",
           "RMAC", "SPoC", "build_aggregation", "gem", "l2n", "mac", "netvlad", "netvlad_alpha",
           "register_aggregation", "rmac", "rmac_regions", "spoc"]


# ----------------------------------------------------------------------------------------- plain functions
def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: B×C×H×W -> B×C, max over H, W."""
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (as the mean, same direction after L2): B×C×H×W -> B×C."""
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: float | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Generalized mean pooling: B×C×H×W -> B×C, (mean_hw clamp(x, eps)^p)^(1/p).

    p is a float or a 1-element tensor. Computed as m·(mean((x/m)^p))^(1/p) with m the per-channel max
    (detached; the value and its gradient do not depend on m), so large p neither overflows nor underflows.
    """
    x = x.clamp(min=eps)
    m = x.amax(dim=(-2, -1), keepdim=True).detach()                    # B×C×1×1
    return (x / m).pow(p).mean(dim=(-2, -1)).pow(1.0 / p) * m[..., 0, 0]


@lru_cache(maxsize=256)
def _rmac_regions(h: int, w: int, levels: int) -> tuple[tuple[int, int, int, int], ...]:
    short, long = min(h, w), max(h, w)
    extra = 0                                                          # m in the docstring of rmac_regions
    if long > short:
        overlaps = [(short - (long - short) / m) / short for m in range(1, 7)]
        extra = 1 + min(range(6), key=lambda i: abs(overlaps[i] - 0.4))

    def starts(length: int, side: int, n: int) -> list[int]:
        return [0] if n == 1 else [i * (length - side) // (n - 1) for i in range(n)]

    regions = []
    for level in range(1, levels + 1):
        side = max(1, 2 * short // (level + 1))
        n_h, n_w = (level + extra, level) if h > w else (level, level + extra)
        for y0 in starts(h, side, n_h):
            for x0 in starts(w, side, n_w):
                regions.append((y0, x0, y0 + side, x0 + side))
    return tuple(regions)


def rmac_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """R-MAC regions (Tolias et al. 2016) of an h×w map, as half-open slices (y0, x0, y1, x1).

    Rule implemented, with s = min(h, w) and L = max(h, w):
    1. Extra regions m along the longer side: 0 if h == w, else the m in 1..6 minimizing
       |(s - (L - s)/m)/s - 0.4| (overlap of m+1 consecutive s×s regions spread over L closest to 40%;
       ties -> smallest m).
    2. For level l = 1..levels: square side a_l = max(1, floor(2·s/(l+1))) (a_1 = s); l region positions
       along the shorter side and l + m along the longer one.
    3. n positions along a side of length D: start_i = floor(i·(D - a_l)/(n - 1)), i = 0..n-1 (start 0 when
       n == 1), so the first region touches one border and the last touches the other.
    Regions are ordered by level, then row-major (y, then x). Total: sum_l l·(l + m).
    """
    if h < 1 or w < 1 or levels < 1:
        raise ValueError(f"rmac_regions needs h, w, levels >= 1, got {h}, {w}, {levels}")
    return list(_rmac_regions(int(h), int(w), int(levels)))


def rmac(x: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """R-MAC: B×C×H×W -> B×C, L2 of the sum over `rmac_regions` of L2-normalized region MAC vectors."""
    out = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)    # B×C
    for y0, x0, y1, x1 in rmac_regions(x.shape[-2], x.shape[-1], levels):
        out = out + l2n(mac(x[..., y0:y1, x0:x1]))
    return l2n(out)


# ----------------------------------------------------------------------------------------- modules
@register_aggregation("mac")
class MAC(Aggregation):
    """Global max pooling, then L2."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(mac(x))


@register_aggregation("spoc")
class SPoC(Aggregation):
    """Global average pooling, then L2."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(spoc(x))


@register_aggregation("gem")
class GeM(Aggregation):
    """Generalized mean pooling with a learnable exponent p (initialized to `p`), then L2."""
    options = {"gem_p": "p"}

    def __init__(self, in_dim: int, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__(in_dim)
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(gem(x, self.p, self.eps))

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


@register_aggregation("rmac")
class RMAC(Aggregation):
    """R-MAC over `levels` region scales (without the per-region PCA-whitening of the original paper)."""
    options = {"rmac_levels": "levels"}

    def __init__(self, in_dim: int, levels: int = 3) -> None:
        super().__init__(in_dim)
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmac(x, self.levels)


@register_aggregation("cls")
class CLS(Aggregation):
    """ViT CLS token delivered by the backbone as a B×C×1×1 map: flatten, L2."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            raise UserError(f"the 'cls' aggregation needs a ViT backbone that outputs its CLS token as a 1x1 map, "
                            f"got a {x.shape[-2]}x{x.shape[-1]} feature map; choose another aggregation")
        return l2n(x.flatten(1))


def build_aggregation(name: str, in_dim: int, **opts: object) -> nn.Module:
    """Instantiate the aggregation `name` for in_dim input channels.

    opts are global options (e.g. netvlad_clusters=64); each class takes those in its `options` map or
    named like its constructor keywords; the rest, and None values, are ignored.
    """
    if name not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {name!r}; choose one of: {', '.join(sorted(AGGREGATIONS))}")
    cls = AGGREGATIONS[name]
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "in_dim"}
    kwargs = {k: v for k, v in opts.items() if k in params and v is not None}
    kwargs.update({kw: opts[g] for g, kw in getattr(cls, "options", {}).items()
                   if g in opts and opts[g] is not None})
    return cls(in_dim, **kwargs)
