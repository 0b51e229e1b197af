"""Attention modules applied to backbone feature maps, B×C×H×W -> B×C×H×W.

Registry `ATTENTIONS` filled with `@register_attention(name)`; build with `build_attention(name, channels)`.
"""
from __future__ import annotations


import torch
from torch import nn

from commons import Registry, UserError

ATTENTIONS = Registry("attention")  # nn.Module classes by name (--attention)
register_attention = ATTENTIONS.register


def channel_attention(x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
    """CBAM channel gate B×C×1×1: sigmoid(mlp(avgpool_hw(x)) + mlp(maxpool_hw(x))), mlp shared."""
    avg = x.mean(dim=(-2, -1), keepdim=True)                           # B×C×1×1
    mx = x.amax(dim=(-2, -1), keepdim=True)                            # B×C×1×1
    return torch.sigmoid(mlp(avg) + mlp(mx))


def spatial_attention(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """CBAM spatial gate B×1×H×W: sigmoid(conv([mean_c(x); max_c(x)])) with conv 2 -> 1 channels."""
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # B×2×H×W
    return torch.sigmoid(conv(pooled))


@register_attention("none")
class NoAttention(nn.Identity):
    """Identity: no attention."""
    def __init__(self, channels: int) -> None:
        super().__init__()


@register_attention("cbam")
class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel gate, then spatial gate."""
    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        if spatial_kernel % 2 != 1:
            raise ValueError(f"spatial_kernel must be odd to keep H×W, got {spatial_kernel}")
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * channel_attention(x, self.mlp)                         # B×C×H×W
        return x * spatial_attention(x, self.spatial)                  # B×C×H×W


def build_attention(name: str, channels: int) -> nn.Module:
    """Instantiate the attention module `name` for feature maps with `channels` channels."""
    if name not in ATTENTIONS:
        raise UserError(f"unknown attention {name!r}; choose one of: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name](channels)
