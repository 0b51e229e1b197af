"""Aggregations of the VG benchmark (dVGL) beyond model/aggregations.py: RRM and SeqPool, and dVGL's `--l2`
placement for the shallow poolings (mac, spoc, gem, rmac).

As in model/aggregations.py, plain functions hold the math and thin nn.Module wrappers are registered in
`aggregations.AGGREGATIONS`; importing this module registers them (network.py and parser.py do).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.aggregations import (MAC, RMAC, Aggregation, GeM, SPoC, gem, l2n, mac, register_aggregation, rmac_regions,
                                spoc)

L2_MODES = ("before_pool", "after_pool", "none")  # dVGL's --l2 choices; this toolkit's default is after_pool
SHALLOW_AGGREGATIONS = ("mac", "spoc", "gem", "rmac")  # the aggregations --l2 applies to (as in dVGL)


# ----------------------------------------------------------------------------------------- plain functions
def rrm(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
        norm_in: tuple[torch.Tensor, torch.Tensor], norm_out: tuple[torch.Tensor, torch.Tensor],
        eps: float = 1e-5) -> torch.Tensor:
    """Residual retrieval module (Kordopatis-Zilos et al. 2021): B×C×H×W -> L2-normalized B×C.

    v = LN_in(mean_hw x); out = L2(LN_out(v + W2·relu(W1·v + b1) + b2)): a residual MLP (W1, W2: C×C) on the
    average-pooled map; norm_in / norm_out are the (weight, bias) pairs of the two LayerNorms.
    """
    c = x.shape[1]
    v = F.layer_norm(spoc(x), (c,), *norm_in, eps=eps)                 # B×C
    return l2n(F.layer_norm(v + F.linear(F.relu(F.linear(v, w1, b1)), w2, b2), (c,), *norm_out, eps=eps))


def seqpool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Sequence pooling (Hassani et al. 2021, CCT): B×C×H×W -> L2-normalized B×C.

    The H·W positions are the sequence: attention a_n = softmax_n(w·x_n + b) with weight 1×C and bias 1,
    descriptor = sum_n a_n x_n.
    """
    tokens = x.flatten(2)                                              # B×C×N
    logits = torch.einsum("bcn,c->bn", tokens, weight.reshape(-1)) + bias   # B×N
    return l2n(torch.bmm(tokens, logits.softmax(dim=1).unsqueeze(2))[..., 0])


def rmac_sum(x: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """R-MAC before its final L2: B×C×H×W -> B×C, sum over `rmac_regions` of L2-normalized region MAC vectors."""
    out = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)    # B×C
    for y0, x0, y1, x1 in rmac_regions(x.shape[-2], x.shape[-1], levels):  # regions differ in size: no batching
        out = out + l2n(mac(x[..., y0:y1, x0:x1]))
    return out


# Un-normalized descriptor B×C of each shallow pooling module, for --l2 before_pool / none.
RAW_POOLS: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    MAC: lambda m, x: mac(x),
    SPoC: lambda m, x: spoc(x),
    GeM: lambda m, x: gem(x, m.p, m.eps),
    RMAC: lambda m, x: rmac_sum(x, m.levels),
}


def pool_with_l2(module: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Aggregate the feature map x (B×C×H×W) with dVGL's --l2 placement: B×D.

    after_pool: the module itself (pool, then L2; every other aggregation always runs this way);
    before_pool: L2-normalize each local descriptor along C, then pool, no L2 after (dVGL's default);
    none: pool only. before_pool / none apply to the shallow poolings of RAW_POOLS.
    """
    if mode == "after_pool":
        return module(x)
    if type(module) not in RAW_POOLS:
        raise ValueError(f"--l2 {mode} applies to {', '.join(SHALLOW_AGGREGATIONS)}, not {type(module).__name__}")
    return RAW_POOLS[type(module)](module, l2n(x, dim=1) if mode == "before_pool" else x)


# ----------------------------------------------------------------------------------------- modules
@register_aggregation("rrm")
class RRM(Aggregation):
    """Residual retrieval module: average pooling, LayerNorm, residual 2-layer MLP, LayerNorm, L2 (see `rrm`)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim)
        self.norm_in, self.norm_out = nn.LayerNorm(in_dim), nn.LayerNorm(in_dim)
        self.fc1, self.fc2 = nn.Linear(in_dim, in_dim), nn.Linear(in_dim, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rrm(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                   (self.norm_in.weight, self.norm_in.bias), (self.norm_out.weight, self.norm_out.bias),
                   self.norm_in.eps)


@register_aggregation("seqpool")
class SeqPool(Aggregation):
    """CCT's sequence pooling over the positions of any feature map (see `seqpool`), then L2."""

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim)
        self.attention = nn.Linear(in_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return seqpool(x, self.attention.weight, self.attention.bias)
