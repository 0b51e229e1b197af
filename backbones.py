"""Backbone registry: each entry builds a feature extractor image B×3×H×W → feature map B×C×H'×W'.

Add a backbone with one function decorated by @register_backbone(name) returning a Backbone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from commons import UserError

BACKBONES: dict[str, Callable[..., "Backbone"]] = {}


@dataclass
class Backbone:
    """A feature extractor, its output channels, and the children frozen when pretrained."""
    net: nn.Module
    out_dim: int
    frozen: list[nn.Module]


def register_backbone(name: str):
    """Decorator adding a builder(pretrained: bool, aggregation: str) -> Backbone to BACKBONES."""
    def deco(fn):
        BACKBONES[name] = fn
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


def build_backbone(name: str, pretrained: bool, aggregation: str, train_all_layers: bool = False) -> Backbone:
    """Build a registered backbone; when pretrained, freeze the blocks before the last unless asked not to."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of {', '.join(sorted(BACKBONES))}")
    bb = BACKBONES[name](pretrained, aggregation)
    if pretrained and not train_all_layers:
        for module in bb.frozen:
            for p in module.parameters():
                p.requires_grad = False
        logging.debug(f"{name}: froze {len(bb.frozen)} leading children (pretrained)")
    return bb
