"""Tests for model/attention.py: CBAM math against a reference, shapes, training, registry."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import attention as att  # noqa: E402
from commons import UserError  # noqa: E402

torch.set_num_threads(2)


@pytest.mark.parametrize("channels,hw", [(32, (7, 9)), (5, (1, 1)), (64, (13, 6))])
def test_cbam_keeps_shape(channels: int, hw: tuple[int, int]) -> None:
    x = torch.randn(2, channels, *hw)
    assert att.CBAM(channels)(x).shape == x.shape
    assert att.build_attention("cbam", channels)(x).shape == x.shape


def test_cbam_matches_reference() -> None:
    torch.manual_seed(0)
    m = att.CBAM(16, reduction=4, spatial_kernel=3)
    x = torch.randn(2, 16, 5, 7)
    w1, b1 = m.mlp[0].weight[:, :, 0, 0], m.mlp[0].bias
    w2, b2 = m.mlp[2].weight[:, :, 0, 0], m.mlp[2].bias

    def mlp(v: torch.Tensor) -> torch.Tensor:                           # B×C -> B×C
        return F.relu(v @ w1.T + b1) @ w2.T + b2

    gate_c = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.flatten(2).max(dim=2).values))
    y = x * gate_c[:, :, None, None]
    maps = torch.stack([y.mean(dim=1), y.max(dim=1).values], dim=1)     # B×2×H×W
    gate_s = torch.sigmoid(F.conv2d(maps, m.spatial.weight, m.spatial.bias, padding=1))
    with torch.no_grad():
        assert torch.allclose(m(x), y * gate_s, atol=1e-6)


def test_cbam_trains_and_all_parameters_get_gradients() -> None:
    torch.manual_seed(0)
    m = att.CBAM(16, reduction=4)
    x, target = torch.randn(4, 16, 7, 9), torch.randn(4, 16, 7, 9)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    losses = []
    for _ in range(10):
        loss = F.mse_loss(m(x), target)
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_registry() -> None:
    assert {"none", "cbam"} <= set(att.ATTENTIONS)
    x = torch.randn(2, 8, 3, 3)
    ident = att.build_attention("none", 8)
    assert torch.equal(ident(x), x) and not list(ident.parameters())
    with pytest.raises(UserError, match="cbam"):
        att.build_attention("se", 8)
