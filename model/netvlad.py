"""The NetVLAD family: NetVLAD (Arandjelović et al. 2016) and CRN-NetVLAD (Kim et al. 2017), with the k-means
initialization of the NetVLAD layer. Registered in `AGGREGATIONS` when model/aggregations.py is imported.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from commons import UserError
from model.aggregation_base import Aggregation, l2n, register_aggregation


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
        import faiss  # lazy: start-up time (only training needs it)

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
