"""Backbones: documented descriptor size of every backbone × aggregation pair, ViT feature maps, FC head."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from model import backbones
from model.aggregations import AGGREGATIONS, build_aggregation
from model.backbones import BACKBONES, ViTFeatures, build_backbone, interpolate_pos_embedding
from commons import UserError
from network import GeoLocalizationNet
from parser import parse_train_args

# Channels C of each backbone's feature map, as documented in the README (Variations). Descriptor size:
# C for mac/spoc/gem/rmac/cls, K·C for netvlad/crn (K = --netvlad_clusters).
CHANNELS = {"resnet18conv4": 256, "resnet18conv5": 512, "resnet50conv4": 1024, "resnet50conv5": 2048,
            "resnet101conv4": 1024, "resnet101conv5": 2048, "vgg16": 512, "alexnet": 256, "vit_b_16": 768,
            "vit": 768, "cct384": 384}
CLUSTERS = 4


def expected_dim(aggregation: str, channels: int) -> int:
    return CLUSTERS * channels if aggregation in ("netvlad", "crn") else channels


def test_the_backbones_with_known_channels_are_registered() -> None:
    assert set(CHANNELS) <= set(BACKBONES)  # a new backbone needs no edit here: the test below takes it


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_descriptor_size_of_every_aggregation(name: str) -> None:
    """One feature map per backbone (64×64 input), every aggregation applied to it; ViT also with its CLS token.
    Backbones outside CHANNELS are checked against their own out_dim."""
    torch.manual_seed(0)
    bb = build_backbone(name, pretrained=False, aggregation="gem")
    channels = CHANNELS.get(name, bb.out_dim)
    assert bb.out_dim == channels
    with torch.no_grad():
        fmap = bb.net.eval()(torch.randn(2, 3, 64, 64))  # 2×C×h×w
        assert fmap.shape[1] == channels
        for agg_name in sorted(set(AGGREGATIONS) - {"cls"}):
            agg = build_aggregation(agg_name, bb.out_dim, netvlad_clusters=CLUSTERS)
            desc = agg(fmap)
            assert desc.shape == (2, expected_dim(agg_name, channels)) == (2, agg.out_dim), agg_name
            assert torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-4), agg_name
        if name in backbones.CLS_BACKBONES:
            bb.net.cls_token = True  # what build_backbone(name, ..., aggregation="cls") sets
            desc = build_aggregation("cls", bb.out_dim)(bb.net(torch.randn(2, 3, 64, 64)))
            assert desc.shape == (2, channels)
        else:
            with pytest.raises(UserError, match="CLS token"):
                build_backbone(name, pretrained=False, aggregation="cls")


def tiny_vit(image_size: int = 64) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=image_size, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                             mlp_dim=64).eval()


def test_vit_cls_matches_torchvision_at_pretraining_size() -> None:
    vit = tiny_vit()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = torch.cat([vit.class_token.expand(2, -1, -1), vit._process_input(x)], dim=1)
        reference = vit.encoder(tokens)[:, 0]  # torchvision's own forward, before the classification head
        assert torch.equal(ViTFeatures(vit, cls_token=True)(x)[:, :, 0, 0], reference)
        patches = ViTFeatures(vit, cls_token=False)(x)
        assert torch.equal(patches.flatten(2).transpose(1, 2), vit.encoder(tokens)[:, 1:])


def test_vit_patch_map_layout_follows_the_image() -> None:
    """With no transformer blocks, no norm and zero position embeddings, the map is exactly the patch projection."""
    vit = tiny_vit()
    vit.encoder.layers, vit.encoder.ln = nn.Sequential(), nn.Identity()
    nn.init.zeros_(vit.encoder.pos_embedding)
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        assert torch.allclose(ViTFeatures(vit, cls_token=False)(x), vit.conv_proj(x), atol=1e-6)


@pytest.mark.parametrize("hw", [(64, 64), (480, 640), (16, 32)])
def test_vit_any_multiple_of_16(hw: tuple[int, int]) -> None:
    with torch.no_grad():
        out = ViTFeatures(tiny_vit(), cls_token=False)(torch.randn(1, 3, *hw))
    assert out.shape == (1, 32, hw[0] // 16, hw[1] // 16)


def test_vit_rejects_other_sizes() -> None:
    with pytest.raises(UserError, match="multiple of the patch size 16"):
        ViTFeatures(tiny_vit(), cls_token=True)(torch.randn(1, 3, 40, 64))
    with pytest.raises(UserError, match="multiple of 16"):
        parse_train_args(["--backbone", "vit_b_16", "--aggregation", "cls", "--resize", "60", "80"])


def test_pos_embedding_interpolation() -> None:
    grid, c = 4, 3
    cols = torch.arange(grid, dtype=torch.float32).repeat(grid)  # value depends on the column only
    pos = torch.cat([torch.full((1, c), 7.0), cols[:, None].expand(-1, c)])[None]  # 1×(1+16)×C
    assert interpolate_pos_embedding(pos, grid, grid, grid) is pos
    out = interpolate_pos_embedding(pos, grid, 3, 6)
    assert out.shape == (1, 1 + 18, c)
    assert torch.equal(out[0, 0], pos[0, 0])  # CLS embedding untouched
    grid_out = out[0, 1:, 0].reshape(3, 6)
    assert torch.allclose(grid_out, grid_out[:1].expand(3, -1), atol=1e-6)  # still constant along rows
    assert torch.all(grid_out[0, 1:] >= grid_out[0, :-1] - 1e-6)  # and increasing along columns


def test_fc_output_dim_projects_and_normalizes() -> None:
    torch.manual_seed(0)
    model = GeoLocalizationNet("resnet18conv4", "gem", fc_output_dim=24).eval()
    with torch.no_grad():
        desc = model(torch.randn(3, 3, 32, 32))
        pooled = model.aggregation(model.features(torch.randn(3, 3, 32, 32)))
    assert model.out_dim == 24 and desc.shape == (3, 24)
    assert torch.allclose(desc.norm(dim=1), torch.ones(3), atol=1e-5)
    assert pooled.shape == (3, 256)


def test_vit_builder_uses_cls_and_freezes_all_but_last_block(monkeypatch) -> None:
    monkeypatch.setattr(backbones, "load_torchvision", lambda arch, weights: tiny_vit())  # stand-in for ViT-B/16
    bb = build_backbone("vit_b_16", pretrained=True, aggregation="cls")
    assert bb.net.cls_token and bb.out_dim == 32
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
                 for n, p in bb.net.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.encoder_layer_1", "norm"}
    assert not build_backbone("vit_b_16", pretrained=False, aggregation="gem").net.cls_token


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnets_are_torchvisions_network_and_initialization(arch: str) -> None:
    """model/resnet.py (built without importing torchvision) against torchvision.models.<arch>: with the same seed,
    the same parameter names and values, the same random draws used, and the same outputs and gradients."""
    import torchvision
    from model.resnet import resnet
    nets, after = [], []
    for build in (lambda: resnet(arch), lambda: getattr(torchvision.models, arch)(weights=None)):
        torch.manual_seed(3)
        nets.append(build())
        after.append(torch.rand(4))  # the generator's state after building
    ours, theirs = (n.state_dict() for n in nets)
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(*after)
    x = torch.randn(2, 3, 64, 96)
    outs = [n(x) for n in nets]  # train mode: batch statistics
    assert torch.equal(*outs)
    for out in outs:
        out.square().sum().backward()
    assert torch.equal(nets[0].layer1[0].conv1.weight.grad, nets[1].layer1[0].conv1.weight.grad)
