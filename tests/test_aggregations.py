"""Tests for model/aggregations.py: closed forms, R-MAC regions, NetVLAD reference/init, CRN, registry."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import aggregations as agg  # noqa: E402
from model import aggregations_dvgl  # noqa: E402,F401  (registers rrm and seqpool, as network.py and parser.py do)
from commons import UserError  # noqa: E402

torch.set_num_threads(2)


def _rand(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- pooling closed forms
def test_gem_p1_is_average_pooling() -> None:
    x = _rand(2, 5, 7, 9).abs() + 0.1
    assert torch.allclose(agg.gem(x, 1.0), F.adaptive_avg_pool2d(x, 1).flatten(1), atol=1e-6)
    assert torch.allclose(agg.gem(x, torch.tensor([1.0])), x.mean(dim=(2, 3)), atol=1e-6)


def test_gem_matches_naive_formula_and_large_p_approaches_max() -> None:
    x = _rand(2, 5, 7, 9).abs() + 0.1
    naive = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(agg.gem(x, 3.0), naive, rtol=1e-5)
    big = agg.gem(x, 100.0)
    mx = x.amax(dim=(2, 3))
    assert torch.all(big <= mx * (1 + 1e-5))
    assert torch.allclose(big, mx, rtol=0.05)          # >= max·63^(-1/100) ≈ 0.96·max
    tiny = torch.full((1, 1, 3, 3), 0.05)                # 0.05^100 underflows in a naive float32 GeM
    assert torch.allclose(agg.gem(tiny, 100.0), torch.tensor([[0.05]]), rtol=1e-4)


def test_gem_gradients_match_naive_formula() -> None:
    x1 = (_rand(2, 3, 4, 5).abs() + 0.1).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    p1, p2 = torch.tensor([2.5], requires_grad=True), torch.tensor([2.5], requires_grad=True)
    agg.gem(x1, p1).sum().backward()
    x2.pow(p2).mean(dim=(2, 3)).pow(1 / p2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6) and torch.allclose(p1.grad, p2.grad, rtol=1e-4)


def test_mac_and_spoc_closed_forms() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(agg.mac(x), x[:, :, -1, -1])      # increasing values: max is the last one
    assert torch.allclose(agg.spoc(x), x[:, :, 0, 0] + (19 / 2))  # mean of an arithmetic 0..19 ramp
    assert torch.allclose(agg.MAC(3)(x), agg.l2n(x[:, :, -1, -1]))


def test_l2n() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(agg.l2n(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


# --------------------------------------------------------------------------- R-MAC
def test_rmac_regions_square() -> None:
    r = agg.rmac_regions(7, 7, levels=3)
    # level 1: side 7; level 2: side floor(14/3)=4 at 0,3; level 3: side floor(14/4)=3 at 0,2,4
    expected = [(0, 0, 7, 7)]
    expected += [(y, x, y + 4, x + 4) for y in (0, 3) for x in (0, 3)]
    expected += [(y, x, y + 3, x + 3) for y in (0, 2, 4) for x in (0, 2, 4)]
    assert r == expected
    assert agg.rmac_regions(7, 7, levels=1) == [(0, 0, 7, 7)]


def test_rmac_regions_non_square() -> None:
    # 7×9: m=1 (overlap 5/7 beats 6/7 ...); level 1: 1×2 of side 7 at x 0,2; level 2: 2×3 of side 4,
    # y in 0,3, x in 0,floor(5/2)=2,5; level 3: 3×4 of side 3, y in 0,2,4, x in 0,2,4,6
    r = agg.rmac_regions(7, 9)
    assert len(r) == 2 + 6 + 12
    assert r[:2] == [(0, 0, 7, 7), (0, 2, 7, 9)]
    assert r[2:8] == [(y, x, y + 4, x + 4) for y in (0, 3) for x in (0, 2, 5)]
    assert r[8:] == [(y, x, y + 3, x + 3) for y in (0, 2, 4) for x in (0, 2, 4, 6)]
    # transposed map: transposed regions
    assert sorted(agg.rmac_regions(9, 7)) == sorted((x0, y0, x1, y1) for y0, x0, y1, x1 in r)


def test_rmac_regions_wide() -> None:
    # 10×30: overlaps for m=1..4 are -1, 0, 1/3, 1/2 -> m=3; level 1: 4 regions of side 10 at x=floor(i·20/3)
    r = agg.rmac_regions(10, 30, levels=2)
    assert r[:4] == [(0, 0, 10, 10), (0, 6, 10, 16), (0, 13, 10, 23), (0, 20, 10, 30)]
    # level 2: side floor(20/3)=6, 2 rows (0, 4) × 5 cols (0, 6, 12, 18, 24)
    assert r[4:] == [(y, x, y + 6, x + 6) for y in (0, 4) for x in (0, 6, 12, 18, 24)]


def test_rmac_matches_reference() -> None:
    x = _rand(2, 6, 7, 9)
    ref = torch.zeros(2, 6)
    for y0, x0, y1, x1 in agg.rmac_regions(7, 9):
        v = x[:, :, y0:y1, x0:x1].reshape(2, 6, -1).max(dim=2).values
        ref += v / v.norm(dim=1, keepdim=True)
    ref /= ref.norm(dim=1, keepdim=True)
    assert torch.allclose(agg.rmac(x), ref, atol=1e-6)


# --------------------------------------------------------------------------- NetVLAD
def _netvlad_loop_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample, per-cluster, per-location loops (B×C×H×W -> B×K·C)."""
    out = []
    for i in range(x.shape[0]):
        feats = x[i].reshape(x.shape[1], -1).T                          # N×C
        feats = feats / feats.norm(dim=1, keepdim=True)
        logits = feats @ w.reshape(c.shape[0], -1).T + b                # N×K
        a = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        if mask is not None:
            a = a * mask[i].reshape(-1, 1)
        clusters = []
        for k in range(c.shape[0]):
            v = torch.zeros(x.shape[1])
            for n in range(feats.shape[0]):
                v += a[n, k] * (feats[n] - c[k])
            clusters.append(v / v.norm())
        flat = torch.cat(clusters)
        out.append(flat / flat.norm())
    return torch.stack(out)


def test_netvlad_matches_loop_reference() -> None:
    torch.manual_seed(0)
    model = agg.NetVLAD(6, clusters=4)
    x = _rand(2, 6, 3, 5)
    ref = _netvlad_loop_reference(x, model.conv.weight, model.conv.bias, model.centroids)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)
        mask = torch.rand(2, 1, 3, 5)
        got = agg.netvlad(x, model.conv.weight, model.conv.bias, model.centroids, weights=mask)
        assert torch.allclose(got, _netvlad_loop_reference(x, model.conv.weight, model.conv.bias,
                                                           model.centroids, mask), atol=1e-5)


def _init_descriptors(n: int = 2000, c: int = 16, seed: int = 0) -> np.ndarray:
    d = np.random.default_rng(seed).standard_normal((n, c)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def test_netvlad_init_alpha_rule_and_determinism() -> None:
    desc = _init_descriptors()
    model = agg.NetVLAD(16, clusters=8)
    model.init_params(desc, niter=10, seed=3)
    x = torch.from_numpy(desc).T.reshape(1, 16, 1, -1)                  # descriptors as a 1×C×1×N map
    with torch.no_grad():
        a = model.conv(x).softmax(dim=1)[0, :, 0].T                     # N×K
    top2 = a.topk(2, dim=1).values
    mean_log_ratio = torch.log(top2[:, 0] / top2[:, 1]).mean().item()
    assert abs(mean_log_ratio - math.log(100)) < 0.1 * math.log(100)
    # weight = 2·alpha·c_k, bias = -alpha·||c_k||² for one common alpha
    c = model.centroids.detach()
    alpha = model.conv.weight[:, :, 0, 0] / (2 * c)
    assert torch.allclose(alpha, alpha.mean().expand_as(alpha), rtol=1e-4)
    assert torch.allclose(model.conv.bias, -alpha.mean() * (c ** 2).sum(dim=1), rtol=1e-4)
    again = agg.NetVLAD(16, clusters=8)
    again.init_params(desc, niter=10, seed=3)
    assert torch.equal(again.centroids, model.centroids) and torch.equal(again.conv.weight, model.conv.weight)


def test_netvlad_init_rejects_too_few_descriptors() -> None:
    with pytest.raises(UserError):
        agg.NetVLAD(16, clusters=8).init_params(_init_descriptors(n=5))


# --------------------------------------------------------------------------- all modules
@pytest.mark.parametrize("name", sorted(agg.AGGREGATIONS))
@pytest.mark.parametrize("in_dim,hw", [(8, (7, 9)), (5, (1, 1)), (12, (13, 6))])
def test_all_aggregations_output_l2_normalized(name: str, in_dim: int, hw: tuple[int, int]) -> None:
    if name == "cls" and hw != (1, 1):
        with pytest.raises(UserError):
            agg.build_aggregation(name, in_dim)(_rand(2, in_dim, *hw))
        return
    model = agg.build_aggregation(name, in_dim, netvlad_clusters=3, unrelated_option="x", gem_p=None)
    out = model(_rand(3, in_dim, *hw))
    assert out.shape == (3, model.out_dim)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.needs_init == (name in ("netvlad", "crn"))


def test_build_aggregation_options_and_unknown_name() -> None:
    assert agg.build_aggregation("netvlad", 16, netvlad_clusters=5).out_dim == 80
    assert agg.build_aggregation("crn", 16).out_dim == 64 * 16
    assert agg.build_aggregation("gem", 4, gem_p=2.0).p.item() == 2.0
    assert {"mac", "spoc", "gem", "rmac", "netvlad", "crn", "cls", "rrm", "seqpool"} <= set(agg.AGGREGATIONS)
    with pytest.raises(UserError, match="gem"):
        agg.build_aggregation("vlad", 16)


# --------------------------------------------------------------------------- CRN
@pytest.mark.parametrize("hw", [(7, 9), (1, 1), (5, 13), (30, 40)])
def test_crn_mask_has_exact_feature_map_size(hw: tuple[int, int]) -> None:
    model = agg.CRNNetVLAD(8, clusters=4)
    mask = model.context_mask(_rand(2, 8, *hw))
    assert mask.shape == (2, 1, *hw)
    assert torch.all(mask >= 0)


def test_crn_starts_close_to_netvlad_and_loads_netvlad_state() -> None:
    torch.manual_seed(0)
    plain = agg.NetVLAD(8, clusters=4)
    crn = agg.CRNNetVLAD(8, clusters=4)
    missing, unexpected = crn.load_state_dict(plain.state_dict(), strict=False)  # names of shared parts match
    assert not unexpected and missing and all(k.startswith("crn.") for k in missing)
    assert torch.equal(crn.centroids, plain.centroids) and torch.equal(crn.conv.weight, plain.conv.weight)
    x = _rand(2, 8, 7, 9)
    with torch.no_grad():
        assert torch.allclose(crn(x), plain(x), atol=1e-2)              # mask starts ≈ 1


def test_crn_trains_and_attention_parameters_get_gradients() -> None:
    torch.manual_seed(0)
    model = agg.CRNNetVLAD(8, clusters=4)
    crn_ids = {id(p) for p in model.attention_parameters()}
    assert crn_ids == {id(p) for p in model.crn.parameters()} and len(crn_ids) == 8
    x, target = _rand(4, 8, 7, 9, seed=1), agg.l2n(torch.randn(4, model.out_dim))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(15):
        loss = (model(x) - target).pow(2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.attention_parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3


def test_gem_p_and_rmac_levels_reach_the_model_from_the_command_line(tiny_world) -> None:
    from network import build_model
    from parser import parse_train_args
    base = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--pretrain", "none"]
    gem = build_model(parse_train_args(base + ["--gem_p", "4.5"]))
    assert gem.aggregation.p.item() == 4.5
    rmac = build_model(parse_train_args(base + ["--aggregation", "rmac", "--rmac_levels", "2"]))
    assert rmac.aggregation.levels == 2
    x = torch.randn(1, 256, 6, 6)
    torch.testing.assert_close(rmac.aggregation(x), agg.rmac(x, levels=2))
    with pytest.raises(UserError, match="--gem_p must be > 0"):
        parse_train_args(base + ["--gem_p", "0"])
