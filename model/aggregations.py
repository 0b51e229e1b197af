"""Aggregation (pooling) layers: backbone feature map B×C×H×W -> L2-normalized global descriptor B×D.

Plain functions (`gem`, `mac`, `spoc`, `rmac`, `netvlad`, ...) hold the math; the nn.Module classes are thin
wrappers registered in `AGGREGATIONS`. Adding an aggregation is one class plus one `@register_aggregation` line.
"""
from __future__ import annotations

import inspect
import logging
import math
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from commons import Registry, UserError

AGGREGATIONS = Registry("aggregation")  # nn.Module classes by name (--aggregation)
register_aggregation = AGGREGATIONS.register


# ----------------------------------------------------------------------------------------- plain functions
def l2n(x: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalize x along dim (norm clamped below by eps)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


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


def netvlad(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
            centroids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """NetVLAD: B×C×H×W -> B×(K·C), fully vectorized over clusters.

    Local descriptors are L2-normalized along C; soft assignment a = softmax_k(W_k·x + b_k) with conv_weight
    K×C (or K×C×1×1) and conv_bias K; optional `weights` B×1×H×W (e.g. a CRN mask) multiply a.
    V_k = sum_n a_kn (x_n - c_k) with centroids K×C; then intra-normalization per cluster, flatten, L2.
    """
    b, c = x.shape[:2]
    k = centroids.shape[0]
    x = l2n(x, dim=1)
    logits = F.conv2d(x, conv_weight.reshape(k, c, 1, 1), conv_bias)   # B×K×H×W
    assign = logits.softmax(dim=1)
    if weights is not None:
        assign = assign * weights
    assign = assign.flatten(2)                                         # B×K×N
    feats = x.flatten(2)                                               # B×C×N
    vlad = torch.bmm(assign, feats.transpose(1, 2))                    # B×K×C: sum_n a_kn x_n
    vlad = vlad - assign.sum(dim=2, keepdim=True) * centroids.unsqueeze(0)
    vlad = l2n(vlad, dim=2)                                            # intra-normalization
    return l2n(vlad.reshape(b, k * c), dim=1)


def netvlad_alpha(descriptors: np.ndarray, centroids: np.ndarray, ratio: float = 100.0) -> float:
    """alpha such that, on average over descriptors (N×C, unit norm), top1/top2 soft-assignment = ratio.

    With W_k = 2·alpha·c_k, b_k = -alpha·||c_k||² the logit of cluster k is alpha·(2 x·c_k - ||c_k||²)
    = alpha·(1 - ||x - c_k||²), so log(a_top1/a_top2) = alpha·gap with gap the top-2 difference of
    s_k = 2 x·c_k - ||c_k||². Hence alpha = ln(ratio) / mean(gap) (mean log ratio equals ln(ratio)).
    """
    scores = 2.0 * descriptors @ centroids.T - (centroids ** 2).sum(axis=1)[None, :]   # N×K
    top2 = -np.partition(-scores, 1, axis=1)[:, :2]                                    # N×2, top1 first
    gap = float(np.mean(top2[:, 0].astype(np.float64) - top2[:, 1]))
    if not gap > 0:
        raise UserError("NetVLAD init: the sampled local descriptors are degenerate (all equally close to "
                        "two centroids); use more or more varied training images for initialization")
    return math.log(ratio) / gap


# ----------------------------------------------------------------------------------------- modules
class Aggregation(nn.Module):
    """Base class: maps B×C×H×W to an L2-normalized B×out_dim descriptor.

    `options` maps global option names (as passed to build_aggregation) to constructor keyword names.
    """
    needs_init: ClassVar[bool] = False
    options: ClassVar[dict[str, str]] = {}

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = in_dim


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


@register_aggregation("netvlad")
class NetVLAD(Aggregation):
    """NetVLAD (Arandjelović et al. 2016) with decoupled assignment (1×1 conv) and residual centroids."""
    needs_init = True
    options = {"netvlad_clusters": "clusters"}

    def __init__(self, in_dim: int, clusters: int = 64) -> None:
        super().__init__(in_dim)
        self.clusters = clusters
        self.out_dim = clusters * in_dim
        self.conv = nn.Conv2d(in_dim, clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(clusters, in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return netvlad(x, self.conv.weight, self.conv.bias, self.centroids)

    @torch.no_grad()
    def init_params(self, descriptors: np.ndarray, niter: int = 100, seed: int = 0, ratio: float = 100.0) -> None:
        """Set centroids by faiss k-means on descriptors (N×C, L2-normalized), then the assignment conv.

        conv weight = 2·alpha·c_k, bias = -alpha·||c_k||², alpha from `netvlad_alpha` (top1/top2 ≈ ratio; 100 in the
        NetVLAD paper). Deterministic given seed.
        """
        import faiss  # local: only training needs it

        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.in_dim:
            raise ValueError(f"expected N×{self.in_dim} descriptors, got shape {descriptors.shape}")
        if descriptors.shape[0] < self.clusters:
            raise UserError(f"NetVLAD init needs at least {self.clusters} local descriptors (one per cluster), "
                            f"got {descriptors.shape[0]}; use more initialization images or fewer clusters")
        kmeans = faiss.Kmeans(self.in_dim, self.clusters, niter=niter, seed=seed, verbose=False)
        kmeans.train(descriptors)
        centroids = kmeans.centroids.astype(np.float32)                 # K×C
        alpha = netvlad_alpha(descriptors, centroids, ratio)
        logging.debug(f"NetVLAD init: {self.clusters} clusters, alpha={alpha:.3f}")
        c = torch.from_numpy(centroids).to(self.centroids)
        self.centroids.copy_(c)
        self.conv.weight.copy_((2.0 * alpha * c).reshape_as(self.conv.weight))
        self.conv.bias.copy_(-alpha * (c ** 2).sum(dim=1))


class ContextualReweighting(nn.Module):
    """CRN (Kim et al. 2017): B×C×H×W -> non-negative mask B×1×H×W, resized to exactly H×W.

    Average-pool (3×3, stride 2) -> parallel 3×3/5×5/7×7 convs (32/32/20 ch, ReLU) -> concat -> 1×1
    accumulation conv -> softplus. The accumulation starts near-constant (small weights, softplus(bias) = 1),
    so a CRN-NetVLAD initially behaves like the NetVLAD it extends.
    """
    def __init__(self, in_dim: int, widths: tuple[int, int, int] = (32, 32, 20)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_dim, n, k, padding=k // 2) for n, k in zip(widths, (3, 5, 7)))
        self.accumulate = nn.Conv2d(sum(widths), 1, kernel_size=1)
        nn.init.normal_(self.accumulate.weight, std=1e-2)
        nn.init.constant_(self.accumulate.bias, math.log(math.e - 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)  # ⌈H/2⌉×⌈W/2⌉
        ctx = torch.cat([F.relu(conv(small)) for conv in self.convs], dim=1)
        mask = F.softplus(self.accumulate(ctx))                                              # B×1×h'×w'
        return F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)       # B×1×H×W


@register_aggregation("crn")
class CRNNetVLAD(NetVLAD):
    """NetVLAD whose soft assignment is weighted by a contextual reweighting mask (`self.crn`).

    Shared parameter names equal NetVLAD's (conv.*, centroids), so NetVLAD checkpoints load directly.
    """
    def __init__(self, in_dim: int, clusters: int = 64) -> None:
        super().__init__(in_dim, clusters)
        self.crn = ContextualReweighting(in_dim)

    def context_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Reweighting mask B×1×H×W for the feature map x (B×C×H×W)."""
        return self.crn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return netvlad(x, self.conv.weight, self.conv.bias, self.centroids, weights=self.crn(x))

    def attention_parameters(self) -> list[nn.Parameter]:
        """The CRN parameters (for a separate learning rate)."""
        return list(self.crn.parameters())


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
