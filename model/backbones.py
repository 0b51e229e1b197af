"""Backbone registry: each entry builds a feature extractor image B×3×H×W → feature map B×C×H'×W'.

Add a backbone with one function decorated by @register_backbone(name) returning a Backbone. Builders take
`pretrained`: False (random), True or "imagenet" (torchvision's ImageNet weights), or "places" / "gldv2" (files of the
VG benchmark authors, see model/external_weights.py).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model import external_weights
from model.cct import CCTFeatures, resample_grid
from model.resnet import DEPTHS as RESNET_DEPTHS, resnet
from commons import Registry, UserError

BACKBONES = Registry("backbone")  # builder(pretrained: bool | str, aggregation: str) -> Backbone (--backbone)
INPUT_MULTIPLE: dict[str, int] = {}  # backbone -> input H and W must be multiples of this (ViT patch size)
CLS_BACKBONES: set[str] = set()  # backbones that can deliver a CLS token (for --aggregation cls)
TRANSFORMER_BACKBONES: set[str] = set()  # backbones with transformer blocks (for --trunc_te / --freeze_te)


@dataclass
class Backbone:
    """A feature extractor, its output channels, and the children (or parameters) frozen when pretrained."""
    net: nn.Module
    out_dim: int
    frozen: list[nn.Module | nn.Parameter]


def register_backbone(name: str, input_multiple: int = 1, cls_token: bool = False, transformer: bool = False):
    """Decorator adding a builder(pretrained: bool | str, aggregation: str) -> Backbone to BACKBONES.

    input_multiple: image sides must be multiples of it; cls_token: the backbone supports --aggregation cls;
    transformer: its net has a `blocks` sequence of transformer blocks (somewhere in it), for --trunc_te/--freeze_te.
    """
    def deco(fn):
        BACKBONES.register(name)(fn)
        INPUT_MULTIPLE[name] = input_multiple
        if cls_token:
            CLS_BACKBONES.add(name)
        if transformer:
            TRANSFORMER_BACKBONES.add(name)
        return fn
    return deco


def load_torchvision(arch: str, weights_enum: str | None) -> nn.Module:
    """torchvision's model `arch`, random (weights_enum None) or with its ImageNet weights from torchvision's own
    cache or a download. ResNets are built by model/resnet.py (the same network and initialization), so building
    one without weights (a checkpoint's architecture, --pretrain none) does not import torchvision.

    Offline with no cached file, stop with a message that says where to put the weights.
    """
    if weights_enum is None and arch in RESNET_DEPTHS:
        return resnet(arch)
    import torchvision  # lazy: importing it costs every start-up seconds (it imports torch._dynamo)
    if weights_enum is None:
        return getattr(torchvision.models, arch)(weights=None)
    weights = torchvision.models.get_weight(weights_enum)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        if arch not in RESNET_DEPTHS:
            return getattr(torchvision.models, arch)(weights=weights)
        model = resnet(arch)  # what torchvision's builder does: the random network, then the file's weights
        model.load_state_dict(weights.get_state_dict(progress=True, check_hash=True))
        return model
    except Exception as e:  # URLError, socket errors, hash mismatch...
        raise UserError(f"ImageNet weights for {arch} are not available ({type(e).__name__}); "
                        f"download {weights.url} to {path}, or pass --pretrain none") from None


def load_weights(arch: str, imagenet_weights: str, pretrained: bool | str) -> nn.Module:
    """torchvision model `arch`: random (pretrained False), ImageNet (True, "imagenet") or --pretrain places/gldv2."""
    if pretrained in external_weights.PRETRAIN_SOURCES:
        return external_weights.load_pretrained_net(arch, pretrained)
    return load_torchvision(arch, imagenet_weights if pretrained else None)


RESNET_CUTS = {  # name: (torchvision arch, last layer kept, output channels); conv4 = stride 16, conv5 = stride 32
    "resnet18conv4": ("resnet18", "layer3", 256), "resnet18conv5": ("resnet18", "layer4", 512),
    "resnet50conv4": ("resnet50", "layer3", 1024), "resnet50conv5": ("resnet50", "layer4", 2048),
    "resnet101conv4": ("resnet101", "layer3", 1024), "resnet101conv5": ("resnet101", "layer4", 2048),
}


def resnet_cut(arch: str, last_layer: str, out_dim: int, pretrained: bool | str, aggregation: str = "") -> Backbone:
    """torchvision's ResNet `arch` up to `last_layer` (conv1 ... layer4); all but that layer frozen when pretrained."""
    model = load_weights(arch, f"{arch.replace('resnet', 'ResNet')}_Weights.IMAGENET1K_V1", pretrained)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    children = [getattr(model, n) for n in names[: names.index(last_layer) + 1]]
    return Backbone(nn.Sequential(*children), out_dim, frozen=children[:-1])


for _name, _cut in RESNET_CUTS.items():
    register_backbone(_name)(functools.partial(resnet_cut, *_cut))


@register_backbone("vgg16")
def vgg16(pretrained: bool, aggregation: str = "") -> Backbone:
    """VGG-16 convolutional part without the last max-pool: 512 channels at stride 16."""
    model = load_weights("vgg16", "VGG16_Weights.IMAGENET1K_V1", pretrained)
    layers = list(model.features.children())[:-1]
    # conv5 block (last 6 layers: 3×(conv, relu)) is trained, earlier layers frozen when pretrained
    return Backbone(nn.Sequential(*layers), 512, frozen=layers[:-6])


@register_backbone("alexnet")
def alexnet(pretrained: bool, aggregation: str = "") -> Backbone:
    """AlexNet convolutional part up to conv5, without its last ReLU and max-pool (as in dVGL): 256 channels at
    stride 16. When pretrained, conv1 and conv2 are frozen."""
    model = load_weights("alexnet", "AlexNet_Weights.IMAGENET1K_V1", pretrained)
    layers = list(model.features.children())[:-2]  # drop conv5's ReLU and the last max-pool
    return Backbone(nn.Sequential(*layers), 256, frozen=layers[:5])  # conv1, ReLU, pool, conv2, ReLU


def interpolate_pos_embedding(pos: torch.Tensor, grid: int, h: int, w: int) -> torch.Tensor:
    """Position embeddings 1×(1+grid²)×C (CLS first) resampled to an h×w patch grid: 1×(1+h·w)×C (bicubic)."""
    if (h, w) == (grid, grid):
        return pos
    return torch.cat([pos[:, :1], resample_grid(pos[:, 1:], grid, h, w)], dim=1)


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


@register_backbone("vit_b_16", input_multiple=16, cls_token=True, transformer=True)
def vit_b_16(pretrained: bool, aggregation: str = "") -> Backbone:
    """ViT-B/16: 768 channels at stride 16 (patch tokens), or the CLS token for --aggregation cls.

    When pretrained, the patch embedding and all but the last transformer block are frozen.
    """
    vit = load_weights("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", pretrained)
    net = ViTFeatures(vit, cls_token=aggregation == "cls")
    return Backbone(net, vit.hidden_dim, frozen=[net.embed, *list(net.blocks)[:-1]])


@register_backbone("vit", input_multiple=16, cls_token=True, transformer=True)
def vit(pretrained: bool, aggregation: str = "") -> Backbone:
    """dVGL's name for ViT-B/16: the same network as vit_b_16 (torchvision's ImageNet-1k weights, see README)."""
    return vit_b_16(pretrained, aggregation)


@register_backbone("cct384", input_multiple=16, transformer=True)
def cct384(pretrained: bool, aggregation: str = "") -> Backbone:
    """CCT-14/7x2 of model/cct.py: 384 channels at stride 16. ImageNet weights are the CCT authors' file
    (external_weights.load_cct384_imagenet). When pretrained, the tokenizer, the position embedding and all but the
    last transformer block are frozen."""
    if pretrained in external_weights.PRETRAIN_SOURCES:
        external_weights.pretrained_net_path("cct384", pretrained)  # stops: no such weights were released
    path = external_weights.cct384_imagenet_path() if pretrained else None  # stops before building if missing
    net = CCTFeatures()
    if path is not None:
        external_weights.load_cct384_imagenet(net, path)
    blocks = list(net.classifier.blocks)
    return Backbone(net, net.out_dim, frozen=[net.tokenizer, net.classifier.positional_emb, *blocks[:-1]])


def _blocks_owner(net: nn.Module) -> nn.Module:
    """The submodule of a transformer backbone that holds its blocks (an nn.Sequential named `blocks`)."""
    return next(m for m in net.modules() if isinstance(getattr(m, "blocks", None), nn.Sequential))


def truncate_blocks(bb: Backbone, keep: int) -> Backbone:
    """dVGL's --trunc_te N: keep the first N transformer blocks. When pretrained, the stem and all kept blocks but
    the last stay frozen."""
    owner = _blocks_owner(bb.net)
    kept = owner.blocks[:keep]
    owner.blocks = kept
    params = {id(p) for p in bb.net.parameters()}
    frozen = [m for m in bb.frozen if m is not kept[-1]
              and all(id(p) in params for p in ([m] if isinstance(m, nn.Parameter) else m.parameters()))]
    return Backbone(bb.net, bb.out_dim, frozen)


def freeze_blocks(bb: Backbone, upto: int) -> None:
    """dVGL's --freeze_te N: freeze the whole backbone except the transformer blocks after block N (0-based;
    N = -1 trains every block)."""
    for p in bb.net.parameters():
        p.requires_grad = False
    for p in _blocks_owner(bb.net).blocks[upto + 1:].parameters():
        p.requires_grad = True


def input_multiple(name: str) -> int:
    """Image sides for backbone `name` must be multiples of this (1 for CNNs)."""
    return INPUT_MULTIPLE.get(name, 1)


def build_backbone(name: str, pretrained: bool | str, aggregation: str, train_all_layers: bool = False,
                   trunc_te: int | None = None, freeze_te: int | None = None) -> Backbone:
    """Build a registered backbone; when pretrained, freeze the blocks before the last unless asked not to.

    Transformer backbones only: trunc_te keeps the first trunc_te blocks; freeze_te freezes everything up to block
    freeze_te (whether pretrained or not), instead of the default freezing.
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of {', '.join(sorted(BACKBONES))}")
    if aggregation == "cls" and name not in CLS_BACKBONES:
        raise UserError(f"--aggregation cls needs a backbone with a CLS token ({', '.join(sorted(CLS_BACKBONES))}), "
                        f"not {name}; change --backbone or --aggregation")
    if (trunc_te is not None or freeze_te is not None) and name not in TRANSFORMER_BACKBONES:
        raise UserError(f"--trunc_te/--freeze_te apply to transformer backbones "
                        f"({', '.join(sorted(TRANSFORMER_BACKBONES))}), not {name}; drop them")
    bb = BACKBONES[name](pretrained, aggregation)
    if trunc_te:
        bb = truncate_blocks(bb, trunc_te)
    if freeze_te is not None:
        freeze_blocks(bb, freeze_te)
        logging.debug(f"{name}: froze everything up to transformer block {freeze_te} (--freeze_te)")
    elif pretrained and not train_all_layers:
        for module in bb.frozen:
            for p in [module] if isinstance(module, nn.Parameter) else module.parameters():
                p.requires_grad = False
        logging.debug(f"{name}: froze {len(bb.frozen)} leading children (pretrained)")
    return bb
