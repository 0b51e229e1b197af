"""Training variants: each trains through train.py's setup, miners and training loop, and its loss goes down."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import backbones
import train
from training import initialization
from commons import UserError
from conftest import tiny_train_flags
from dataio.images import to_input
from training.losses import criterion_from_args
from retrieval.evaluation import InferenceConfig, encoder
from training.mining import MiningContext, MiningSettings
from network import build_model
from parser import parse_train_args
from util import save_checkpoint

NETVLAD = {"backbone": "resnet18conv4", "aggregation": "netvlad", "netvlad_clusters": 4}


def fixed_loss(model, ds, triplets: np.ndarray, criterion) -> float:
    """Loss of the model (train mode, no update) on the images of `triplets` (T×(2+K))."""
    ds.set_triplets(triplets)
    images = torch.stack([ds[i][0] for i in range(len(triplets))])  # T×(2+K)×3×H×W
    model.train()
    with torch.no_grad():
        feats = model(to_input(images.flatten(0, 1), "cpu", "fp32")).view(*images.shape[:2], -1)
    return float(criterion(feats[:, 0], feats[:, 1], feats[:, 2:]))


def loss_before_after(flags: list[str], passes: int = 3) -> tuple[float, float]:
    """Mine triplets for 4 queries with the run's miner, train `passes` times on them with train_on_triplets."""
    args = parse_train_args(flags)
    torch.manual_seed(0)
    np.random.seed(0)
    inputs = train.load_inputs(args, "cpu")
    ds, model, optimizer = inputs.ds, inputs.model, inputs.optimizer
    if inputs.needs_kmeans:
        initialization.init_aggregation(model, ds, args, "cpu")
    ctx = MiningContext.create(encoder(model, ds.as_images(), InferenceConfig.from_args(args, "cpu")), ds,
                               MiningSettings.from_args(args), inputs.neg_cache)
    triplets = ctx.mine(np.arange(4))
    criterion = criterion_from_args(args)
    before = fixed_loss(model, ds, triplets, criterion)
    for p in range(passes):
        train.train_on_triplets(model, ds, triplets, optimizer, criterion, args, "cpu", f"pass {p}")
    return before, fixed_loss(model, ds, triplets, criterion)


VARIANTS = {
    "rmac": ["--aggregation", "rmac"],
    "crn": ["--aggregation", "crn", "--netvlad_clusters", "4", "--attention_lr", "1e-2"],
    "cbam": ["--attention", "cbam", "--attention_lr", "1e-2"],
    "sare_joint": ["--criterion", "sare_joint"],
    "rolling_miner": ["--mining", "rolling", "--rolling_period", "2"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_loss_decreases(variant: str, tiny_world, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before, after = loss_before_after(tiny_train_flags(tiny_world, "v") + ["--mining", "random"] + VARIANTS[variant])
    assert np.isfinite(before) and before > 0
    assert after < before, (variant, before, after)


def test_vit_cls_loss_decreases(tiny_world, tmp_path, monkeypatch) -> None:
    """ViT-B/16 with its CLS token, 16×16 images (one patch), pretrained layout: only the last block trains."""
    monkeypatch.chdir(tmp_path)
    real = backbones.load_torchvision
    monkeypatch.setattr(backbones, "load_torchvision", lambda arch, weights: real(arch, None))  # offline stand-in
    flags = tiny_train_flags(tiny_world, "v") + ["--backbone", "vit_b_16", "--aggregation", "cls", "--resize",
                                                 "16", "16", "--pretrain", "imagenet", "--lr", "1e-4",
                                                 "--mining", "random"]
    before, after = loss_before_after(flags, passes=2)
    assert after < before


def make_netvlad_checkpoint(tmp_path) -> str:
    torch.manual_seed(1)
    save_checkpoint({"model_state_dict": build_model(NETVLAD).state_dict(), "args": NETVLAD}, tmp_path, False)
    return str(tmp_path / "last_model.pth")


def test_crn_starts_from_netvlad_checkpoint(tiny_world, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = make_netvlad_checkpoint(tmp_path)
    state = torch.load(ckpt, weights_only=True)["model_state_dict"]
    flags = tiny_train_flags(tiny_world, "crn") + ["--aggregation", "crn", "--netvlad_clusters", "4",
                                                   "--init_from", ckpt, "--attention_lr", "1e-2"]
    inputs = train.load_inputs(parse_train_args(flags), "cpu")
    model, optimizer = inputs.model, inputs.optimizer
    assert not inputs.needs_kmeans  # the NetVLAD layer comes from the checkpoint
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())  # backbone and NetVLAD weights, no k-means
    assert torch.allclose(own["aggregation.crn.accumulate.bias"], torch.tensor([np.log(np.e - 1)], dtype=torch.float32))
    crn = {id(p) for p in model.aggregation.crn.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == crn and optimizer.param_groups[1]["lr"] == 1e-2
    with pytest.raises(UserError, match="does not fit this model"):
        train.load_inputs(parse_train_args(flags[:-4] + ["--backbone", "resnet18conv5", "--init_from", ckpt]), "cpu")


def test_train_main_crn_sare_rolling(tiny_world, tmp_path, monkeypatch) -> None:
    """One short end-to-end run combining CRN from a NetVLAD checkpoint, SARE and the rolling miner."""
    monkeypatch.chdir(tmp_path)
    flags = tiny_train_flags(tiny_world, "e2e") + [
        "--aggregation", "crn", "--netvlad_clusters", "4", "--init_from", make_netvlad_checkpoint(tmp_path),
        "--criterion", "sare_joint", "--mining", "rolling", "--rolling_period", "2", "--epochs_num", "1"]
    results = train.main(flags)
    assert len(results["losses"]) == 2 and all(np.isfinite(results["losses"]))
    assert 0 <= results["test"]["recalls"]["1"] <= 100
