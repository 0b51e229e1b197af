"""Model pieces behind dVGL's command lines (issue 16): --l2 placements, RRM and SeqPool against direct formulas,
msls_weighted query weights by hand, transformer truncation/freezing, CCT-14/7x2, and weights from other sources
(the VG benchmark's places/gldv2 files, off-the-shelf files loaded by position).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import backbones
from model import external_weights
from model.aggregations import build_aggregation
from model.aggregations_dvgl import pool_with_l2
from model.cct import CCTFeatures
from commons import UserError
from training.mining import msls_query_weights
from network import GeoLocalizationNet

PLACES_FILE = "data/pretrained_nets/resnet18_places.pth"


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch):
    """Weight files are looked up under data/ of the working directory: a temporary one."""
    monkeypatch.chdir(tmp_path)


def test_l2_placements_against_direct_formulas() -> None:
    x = torch.rand(2, 6, 5, 4) + 0.1  # B×C×H×W, positive like post-ReLU features
    unit = x / x.norm(dim=1, keepdim=True)
    spoc, mac, gem = (build_aggregation(n, 6) for n in ("spoc", "mac", "gem"))
    assert torch.allclose(pool_with_l2(spoc, x, "none"), x.mean((2, 3)))
    assert torch.allclose(pool_with_l2(spoc, x, "before_pool"), unit.mean((2, 3)))
    assert torch.allclose(pool_with_l2(mac, x, "after_pool"), F.normalize(x.amax((2, 3))))
    assert torch.allclose(pool_with_l2(gem, x, "before_pool"), unit.pow(3).mean((2, 3)).pow(1 / 3), atol=1e-6)
    net = GeoLocalizationNet(aggregation="mac", l2="none").eval()
    with torch.no_grad():
        img = torch.randn(2, 3, 32, 32)
        assert torch.allclose(net(img), net.features(img).amax((2, 3)))


def test_rrm_and_seqpool_against_references() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 6)
    rrm = build_aggregation("rrm", 5)
    for p in rrm.parameters():
        torch.nn.init.normal_(p)
    v = x.mean((2, 3))
    ln = lambda t, m: (t - t.mean(1, keepdim=True)) / (t.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt() * m.weight + m.bias
    v = ln(v, rrm.norm_in)
    ref = ln(v + torch.relu(v @ rrm.fc1.weight.T + rrm.fc1.bias) @ rrm.fc2.weight.T + rrm.fc2.bias, rrm.norm_out)
    assert torch.allclose(rrm(x), ref / ref.norm(dim=1, keepdim=True), atol=1e-5)
    sp = build_aggregation("seqpool", 5)
    for b in range(3):
        tokens = x[b].reshape(5, -1).T                                   # N×C
        a = torch.softmax(tokens @ sp.attention.weight[0] + sp.attention.bias, dim=0)
        out = (a[:, None] * tokens).sum(0)
        assert torch.allclose(sp(x)[b], out / out.norm(), atol=1e-6)


def test_msls_weights_by_hand_and_refused_without_notes(tiny_world: Path) -> None:
    names = [f"q/@1@2@x@{note}@.jpg" for note in ("day_front", "night_front", "day_sideways", "night_sideways")]
    # Q = 4, 2 night, 2 sideways: weights 1 + [0, 2, 0, 2] + [0, 0, 2, 2], over their sum 12
    assert np.allclose(msls_query_weights(names), np.array([1, 3, 3, 5]) / 12)
    queries = sorted((tiny_world / "synthetic/images/train/queries").glob("*.jpg"))
    with pytest.raises(UserError, match="use --mining partial"):
        msls_query_weights(queries)


def test_trunc_and_freeze_transformer_blocks(monkeypatch) -> None:
    from torchvision.models import VisionTransformer
    tiny = lambda arch, weights: VisionTransformer(64, 16, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64)
    monkeypatch.setattr(backbones, "load_torchvision", tiny)  # stand-in for ViT-B/16 (offline)
    bb = backbones.build_backbone("vit", pretrained=True, aggregation="gem", trunc_te=3)
    assert len(bb.net.blocks) == 3  # pretrained: patch embedding and blocks 0, 1 frozen, the last kept one trains
    assert [any(p.requires_grad for p in b.parameters()) for b in bb.net.blocks] == [False, False, True]
    bb = backbones.build_backbone("vit_b_16", pretrained=False, aggregation="gem", freeze_te=1)
    assert [any(p.requires_grad for p in b.parameters()) for b in bb.net.blocks] == [False, False, True, True]
    assert not any(p.requires_grad for p in bb.net.embed.parameters())
    assert bb.net(torch.randn(1, 3, 32, 48)).shape == (1, 32, 2, 3)


def test_cct384_map_and_authors_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="cct_14_7x2_384_imagenet.pth"):
        backbones.build_backbone("cct384", pretrained=True, aggregation="gem")
    net = backbones.build_backbone("cct384", pretrained=False, aggregation="gem").net
    names = net.state_dict()  # the authors' parameter names, so that their file loads
    assert "classifier.blocks.13.self_attn.qkv.weight" in names and "tokenizer.conv_layers.1.0.weight" in names
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 32)).shape == (1, 384, 4, 2)  # stride 16
    small = lambda: CCTFeatures(layers=2, heads=2, dim=16, image_size=64, tokenizer_channels=(3, 8, 16))
    monkeypatch.setattr(backbones, "CCTFeatures", small)  # the same loading path, on a small CCT
    torch.manual_seed(1)
    state = small().state_dict()
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(external_weights.CCT384_URL).name
    path.parent.mkdir(parents=True)
    torch.save({**state, "classifier.fc.weight": torch.zeros(1000, 16)}, path)  # the head is dropped on load
    bb = backbones.build_backbone("cct384", pretrained=True, aggregation="gem")
    assert all(torch.equal(v, state[k]) for k, v in bb.net.state_dict().items())
    assert not any(p.requires_grad for p in bb.net.tokenizer.parameters())  # pretrained: all but the last block
    assert [any(p.requires_grad for p in b.parameters()) for b in bb.net.classifier.blocks] == [False, True]


def test_places_weights_from_the_placed_file() -> None:
    import torchvision
    with pytest.raises(UserError, match=PLACES_FILE):
        backbones.build_backbone("resnet18conv4", pretrained="places", aggregation="gem")
    torch.manual_seed(2)
    places = torchvision.models.resnet18(num_classes=365)
    Path(PLACES_FILE).parent.mkdir(parents=True)
    torch.save(places.state_dict(), PLACES_FILE)
    bb = backbones.build_backbone("resnet18conv4", pretrained="places", aggregation="gem")
    assert torch.equal(bb.net[0].weight, places.conv1.weight) and torch.equal(bb.net[6][0].conv1.weight,
                                                                               places.layer3[0].conv1.weight)


def test_off_the_shelf_tensors_loaded_by_position() -> None:
    """A Radenović-style file (features.*, pool.p, whiten.*; no BatchNorm counters) fills the model in order."""
    torch.manual_seed(3)
    source = GeoLocalizationNet("resnet18conv5", "gem", fc_output_dim=8)
    renamed = OrderedDict((f"t{i}", v) for i, (k, v) in enumerate(source.state_dict().items())
                          if not k.endswith("num_batches_tracked"))
    target = GeoLocalizationNet("resnet18conv5", "gem", fc_output_dim=8)
    external_weights.load_by_position(target, {"state_dict": renamed, "meta": {}}["state_dict"], "file")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    with pytest.raises(UserError, match="does not fit"):
        external_weights.load_by_position(GeoLocalizationNet("resnet18conv5", "gem"), renamed, "file")
