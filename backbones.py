"""Backbone registry: each entry builds a feature extractor image B×3×H×W → feature map B×C×H'×W'.

Add a backbone with one function decorated by @register_backbone(name) returning a Backbone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from commons import UserError

BACKBONES: dict[str, Callable[..., "Backbone"]] = {}
INPUT_MULTIPLE: dict[str, int] = {}  # backbone -> input H and W must be multiples of this (ViT patch size)
CLS_BACKBONES: set[str] = set()  # backbones that can deliver a CLS token (for --aggregation cls)


@dataclass
class Backbone:
    """A feature extractor, its output channels, and the children frozen when pretrained."""
    net: nn.Module
    out_dim: int
    frozen: list[nn.Module]


def register_backbone(name: str, input_multiple: int = 1, cls_token: bool = False):
    """Decorator adding a builder(pretrained: bool, aggregation: str) -> Backbone to BACKBONES.

    input_multiple: image sides must be multiples of it; cls_token: the backbone supports --aggregation cls.
    """
    def deco(fn):
        BACKBONES[name] = fn
        INPUT_MULTIPLE[name] = input_multiple
        if cls_token:
            CLS_BACKBONES.add(name)
        return fn
    return deco


def load_torchvision(arch: str, weights_enum: str | None):
    """Build torchvision model `arch`, with ImageNet weights from torchvision's own cache/download.

    Offline with no cached file, stop with a message that says where to put the weights.
    """
    builder = getattr(torchvision.models, arch)
    if weights_enum is None:
        return builder(weights=None)
    weights = torchvision.models.get_weight(weights_enum)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return builder(weights=weights)
    except Exception as e:  # URLError, socket errors, hash mismatch...
        raise UserError(f"ImageNet weights for {arch} are not available ({type(e).__name__}); "
                        f"download {weights.url} to {path}, or pass --pretrain none") from None


def _resnet(arch: str, weights: str, last_layer: str, out_dim: int, pretrained: bool) -> Backbone:
    model = load_torchvision(arch, weights if pretrained else None)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    names = names[: names.index(last_layer) + 1]
    children = [getattr(model, n) for n in names]
    return Backbone(nn.Sequential(*children), out_dim, frozen=children[:-1])


@register_backbone("resnet18conv4")
def resnet18conv4(pretrained: bool, aggregation: str = "") -> Backbone:
    """ResNet-18 cut after layer3: 256 channels at stride 16."""
    return _resnet("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "layer3", 256, pretrained)


@register_backbone("resnet18conv5")
def resnet18conv5(pretrained: bool, aggregation: str = "") -> Backbone:
    """ResNet-18 up to layer4: 512 channels at stride 32."""
    return _resnet("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "layer4", 512, pretrained)


@register_backbone("resnet50conv4")
def resnet50conv4(pretrained: bool, aggregation: str = "") -> Backbone:
    """ResNet-50 cut after layer3: 1024 channels at stride 16."""
    return _resnet("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "layer3", 1024, pretrained)


@register_backbone("resnet50conv5")
def resnet50conv5(pretrained: bool, aggregation: str = "") -> Backbone:
    """ResNet-50 up to layer4: 2048 channels at stride 32."""
    return _resnet("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "layer4", 2048, pretrained)


@register_backbone("vgg16")
def vgg16(pretrained: bool, aggregation: str = "") -> Backbone:
    """VGG-16 convolutional part without the last max-pool: 512 channels at stride 16."""
    model = load_torchvision("vgg16", "VGG16_Weights.IMAGENET1K_V1" if pretrained else None)
    layers = list(model.features.children())[:-1]
    # conv5 block (last 6 layers: 3×(conv, relu)) is trained, earlier layers frozen when pretrained
    return Backbone(nn.Sequential(*layers), 512, frozen=layers[:-6])


def interpolate_pos_embedding(pos: torch.Tensor, grid: int, h: int, w: int) -> torch.Tensor:
    """Position embeddings 1×(1+grid²)×C (CLS first) resampled to an h×w patch grid: 1×(1+h·w)×C (bicubic)."""
    if (h, w) == (grid, grid):
        return pos
    cls, patches = pos[:, :1], pos[:, 1:]
    c = pos.shape[-1]
    patches = patches.reshape(1, grid, grid, c).permute(0, 3, 1, 2)  # 1×C×g×g
    patches = F.interpolate(patches, size=(h, w), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.flatten(2).transpose(1, 2)], dim=1)


class PatchEmbedding(nn.Module):
    """ViT input stage: patch projection, CLS token and (pretraining-grid) position embeddings."""

    def __init__(self, conv_proj: nn.Conv2d, class_token: nn.Parameter, pos_embedding: nn.Parameter, grid: int):
        super().__init__()
        self.conv_proj, self.class_token, self.pos_embedding, self.grid = conv_proj, class_token, pos_embedding, grid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Images B×3×H×W → tokens B×(1+h·w)×C with position embeddings added, and the grid h, w."""
        patches = self.conv_proj(x)  # B×C×h×w
        h, w = patches.shape[-2:]
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return tokens + interpolate_pos_embedding(self.pos_embedding, self.grid, h, w), h, w


class ViTFeatures(nn.Module):
    """A torchvision VisionTransformer as a feature extractor for any input size multiple of the patch size.

    Output: patch tokens as a map B×C×h×w (h = H/patch, w = W/patch), or with cls_token the CLS token
    as B×C×1×1. Position embeddings are interpolated to the input's patch grid.
    """

    def __init__(self, vit: nn.Module, cls_token: bool):
        super().__init__()
        self.input_multiple = vit.patch_size
        self.embed = PatchEmbedding(vit.conv_proj, vit.class_token, vit.encoder.pos_embedding,
                                    vit.image_size // vit.patch_size)
        self.dropout, self.blocks, self.norm = vit.encoder.dropout, vit.encoder.layers, vit.encoder.ln
        self.cls_token = cls_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hh, ww = x.shape[-2:]
        if hh % self.input_multiple or ww % self.input_multiple:
            raise UserError(f"ViT input {hh}x{ww} is not a multiple of the patch size {self.input_multiple}; "
                            f"use --resize/--test_resize (and crops/scales) multiples of {self.input_multiple}")
        tokens, h, w = self.embed(x)
        tokens = self.norm(self.blocks(self.dropout(tokens)))  # B×(1+h·w)×C
        if self.cls_token:
            return tokens[:, 0, :, None, None]  # B×C×1×1
        return tokens[:, 1:].transpose(1, 2).reshape(len(x), -1, h, w)  # B×C×h×w


@register_backbone("vit_b_16", input_multiple=16, cls_token=True)
def vit_b_16(pretrained: bool, aggregation: str = "") -> Backbone:
    """ViT-B/16: 768 channels at stride 16 (patch tokens), or the CLS token for --aggregation cls.

    When pretrained, the patch embedding and all but the last transformer block are frozen.
    """
    vit = load_torchvision("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1" if pretrained else None)
    net = ViTFeatures(vit, cls_token=aggregation == "cls")
    return Backbone(net, vit.hidden_dim, frozen=[net.embed, *list(net.blocks)[:-1]])


def input_multiple(name: str) -> int:
    """Image sides for backbone `name` must be multiples of this (1 for CNNs)."""
    return INPUT_MULTIPLE.get(name, 1)


def build_backbone(name: str, pretrained: bool, aggregation: str, train_all_layers: bool = False) -> Backbone:
    """Build a registered backbone; when pretrained, freeze the blocks before the last unless asked not to."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of {', '.join(sorted(BACKBONES))}")
    if aggregation == "cls" and name not in CLS_BACKBONES:
        raise UserError(f"--aggregation cls needs a backbone with a CLS token ({', '.join(sorted(CLS_BACKBONES))}), "
                        f"not {name}; change --backbone or --aggregation")
    bb = BACKBONES[name](pretrained, aggregation)
    if pretrained and not train_all_layers:
        for module in bb.frozen:
            for p in module.parameters():
                p.requires_grad = False
        logging.debug(f"{name}: froze {len(bb.frozen)} leading children (pretrained)")
    return bb
