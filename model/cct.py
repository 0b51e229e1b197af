"""Compact Convolutional Transformer (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact
Transformers") as a feature extractor: dVGL's --backbone cct384 is CCT-14/7x2 at 384×384.

A convolutional tokenizer (2 × [7×7 conv stride 2, ReLU, 3×3 max-pool stride 2]: stride 16) feeds 14 pre-norm
transformer blocks (384-D, 6 heads, MLP ×3) with a learnable position embedding; the output tokens, after the final
LayerNorm, are returned as a B×384×(H/16)×(W/16) map for any aggregation. Parameter names follow the authors'
released checkpoints (tokenizer.conv_layers.*, classifier.positional_emb, classifier.blocks.*, classifier.norm), so
their ImageNet file loads as is; its classification head and sequence-pooling weights are not used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from commons import UserError

STRIDE = 16  # two (conv stride 2, max-pool stride 2) stages


def resample_grid(pos: torch.Tensor, grid: int, h: int, w: int) -> torch.Tensor:
    """Position embeddings 1×(grid²)×C of a square token grid resampled (bicubic) to an h×w grid: 1×(h·w)×C."""
    if (h, w) == (grid, grid):
        return pos
    c = pos.shape[-1]
    square = pos.reshape(1, grid, grid, c).permute(0, 3, 1, 2)        # 1×C×g×g
    resized = F.interpolate(square, size=(h, w), mode="bicubic", align_corners=False)
    return resized.flatten(2).transpose(1, 2)


class ConvTokenizer(nn.Module):
    """Images B×3×H×W → token map B×C×H'×W': per stage, conv k×k stride 2 (no bias), ReLU, max-pool 3×3 stride 2."""

    def __init__(self, channels: tuple[int, ...], kernel: int = 7):
        super().__init__()
        self.conv_layers = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=2, padding=kernel // 2, bias=False), nn.ReLU(),
                          nn.MaxPool2d(3, stride=2, padding=1))
            for c_in, c_out in zip(channels[:-1], channels[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention: tokens B×N×C → B×N×C (one qkv projection without bias, output projection)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # B×h×N×(C/h)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    """CCT's transformer block: x ← LN₁(x + Attn(LN_pre(x))), then x ← x + W₂·GELU(W₁·x)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.pre_norm, self.norm1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.linear1, self.linear2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(self.pre_norm(x)))
        return x + self.linear2(F.gelu(self.linear1(x)))


class Encoder(nn.Module):
    """Position embedding for a grid×grid token sequence, the blocks, and the final LayerNorm."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float, grid: int):
        super().__init__()
        self.positional_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, int(dim * mlp_ratio)) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)


class CCTFeatures(nn.Module):
    """CCT as a feature extractor: images B×3×H×W (sides multiples of 16) → tokens as a map B×C×(H/16)×(W/16).

    Position embeddings are learnt for image_size×image_size inputs and resampled to other token grids.
    """

    def __init__(self, layers: int = 14, heads: int = 6, mlp_ratio: float = 3.0, dim: int = 384,
                 image_size: int = 384, tokenizer_channels: tuple[int, ...] = (3, 64, 384), kernel: int = 7):
        super().__init__()
        self.input_multiple, self.grid, self.out_dim = STRIDE, image_size // STRIDE, dim
        self.tokenizer = ConvTokenizer(tokenizer_channels, kernel)
        self.classifier = Encoder(dim, layers, heads, mlp_ratio, self.grid)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.classifier.positional_emb, std=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hh, ww = x.shape[-2:]
        if hh % STRIDE or ww % STRIDE:
            raise UserError(f"CCT input {hh}x{ww} is not a multiple of {STRIDE}; use --resize/--test_resize "
                            f"(and crops/scales) multiples of {STRIDE}, e.g. 384 384")
        fmap = self.tokenizer(x)                                       # B×C×h×w
        h, w = fmap.shape[-2:]
        enc = self.classifier
        tokens = fmap.flatten(2).transpose(1, 2) + resample_grid(enc.positional_emb, self.grid, h, w)  # B×N×C
        tokens = enc.norm(enc.blocks(tokens))
        return tokens.transpose(1, 2).reshape(len(x), -1, h, w)
