"""The aggregation registry, the base class of the aggregation modules and L2 normalization: what
model/aggregations.py (the poolings) and model/netvlad.py (the NetVLAD family) share. Import the aggregations
from model/aggregations.py, which registers them all."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from commons import Registry

AGGREGATIONS = Registry("aggregation")  # nn.Module classes by name (--aggregation)
register_aggregation = AGGREGATIONS.register


def l2n(x: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalize x along dim (norm clamped below by eps)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


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
