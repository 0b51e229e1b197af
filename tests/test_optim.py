"""Optimizers, lr schedules (incl. warm-up) and their wiring into train.run_epoch, checked against hand values."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from commons import UserError
from training.optim import build_optimizer, lr_factor, set_lr
from parser import parse_train_args, train_parser


def targs(*flags: str):
    """Parsed (not validated) train.py args with the given flags."""
    return train_parser().parse_args(list(flags))


@pytest.mark.parametrize("flags, total, expected", [
    # t (epochs done) → factor, computed by hand
    (["--scheduler", "none"], 10, {0: 1.0, 2.5: 1.0, 9.75: 1.0}),
    (["--scheduler", "step", "--step_size", "2", "--gamma", "0.5"], 10,
     {0: 1.0, 1.5: 1.0, 2: 0.5, 3.9: 0.5, 4: 0.25, 7: 0.125}),
    (["--scheduler", "cosine"], 4, {0: 1.0, 1: 0.5 * (1 + math.cos(math.pi / 4)), 2: 0.5, 3: 0.5 * (1 - math.sqrt(0.5)),
                                    4: 0.0}),
    # warm-up: 0.01 → 1 linearly over 2 epochs, then cosine over the remaining 4
    (["--scheduler", "cosine", "--warmup_epochs", "2"], 6, {0: 0.01, 0.5: 0.2575, 1: 0.505, 2: 1.0, 4: 0.5, 6: 0.0}),
    # warm-up 1 epoch, then step every 2 epochs counted after the warm-up
    (["--scheduler", "step", "--step_size", "2", "--gamma", "0.1", "--warmup_epochs", "1"], 10,
     {0.5: 0.505, 1: 1.0, 2.9: 1.0, 3: 0.1, 5: 0.01}),
    (["--scheduler", "none", "--warmup_epochs", "4"], 10, {0: 0.01, 1: 0.2575, 3: 0.7525, 4: 1.0, 8: 1.0}),
])
def test_lr_factor_matches_hand_values(flags, total, expected):
    args = targs(*flags)
    got = {t: lr_factor(t, total, args) for t in expected}
    assert got == pytest.approx(expected, abs=1e-9)


def test_run_epoch_sets_every_group_lr_before_each_refresh(monkeypatch, tmp_path):
    """train.run_epoch sets lr = base · factor(epoch + refresh/refreshes) for every parameter group."""
    args = targs("--lr", "0.1", "--attention_lr", "0.02", "--scheduler", "cosine", "--warmup_epochs", "1",
                 "--epochs_num", "3", "--queries_per_epoch", "40", "--cache_refresh_rate", "10")
    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = build_optimizer([{"params": [w1], "lr": 0.1}, {"params": [w2], "lr": 0.02}], args)
    seen = []
    monkeypatch.setattr(train, "train_on_triplets",
                        lambda *a, **k: seen.append([g["lr"] for g in optimizer.param_groups]) or 0.0)
    monkeypatch.setattr(train, "make_checkpoint", lambda *a, **k: {})
    monkeypatch.setattr(train, "save_checkpoint", lambda *a, **k: None)
    state = train.TrainState()
    ds, ctx = SimpleNamespace(queries_paths=list(range(30))), SimpleNamespace(neg_cache=None, mine=lambda q: np.zeros((len(q), 3), dtype=np.int64))
    for epoch in range(3):
        state.epoch, state.refresh = epoch, 0
        train.run_epoch(None, ds, optimizer, None, ctx, state, tmp_path, args, "cpu", [0.1, 0.02])

    def hand(t):  # 1 warm-up epoch from 0.01, then half a cosine over 2 epochs
        return 0.01 + 0.99 * t if t < 1 else 0.5 * (1 + math.cos(math.pi * (t - 1) / 2))
    expected = [[0.1 * hand(e + r / 4), 0.02 * hand(e + r / 4)] for e in range(3) for r in range(4)]
    assert np.allclose(seen, expected, atol=1e-12)


def one_param(value: float = 1.0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([value]))


def steps(optimizer, p: torch.nn.Parameter, grads: list[float]) -> list[float]:
    """Apply the given gradients one step each; the parameter value after each step."""
    out = []
    for g in grads:
        optimizer.zero_grad()
        p.grad = torch.tensor([g])
        optimizer.step()
        out.append(p.item())
    return out


def test_sgd_momentum_and_weight_decay_follow_the_update_rule():
    p = one_param(1.0)
    opt = build_optimizer([{"params": [p]}], targs("--optim", "sgd", "--lr", "0.1", "--momentum", "0.9"))
    # v1 = g = 1, p1 = 1 - 0.1 = 0.9; v2 = 0.9·1 + 1 = 1.9, p2 = 0.9 - 0.19 = 0.71
    assert steps(opt, p, [1.0, 1.0]) == pytest.approx([0.9, 0.71])
    p = one_param(2.0)
    opt = build_optimizer([{"params": [p]}], targs("--optim", "sgd", "--lr", "0.1", "--momentum", "0",
                                                   "--weight_decay", "0.5"))
    assert steps(opt, p, [0.0]) == pytest.approx([2.0 - 0.1 * 0.5 * 2.0])  # gradient += wd · p


def test_adam_and_adamw_differ_in_how_weight_decay_acts():
    # AdamW: decoupled decay, with a zero gradient p ← p · (1 - lr · wd) exactly
    p = one_param(2.0)
    opt = build_optimizer([{"params": [p]}], targs("--optim", "adamw", "--lr", "0.1", "--weight_decay", "0.5"))
    assert isinstance(opt, torch.optim.AdamW)
    assert steps(opt, p, [0.0]) == pytest.approx([2.0 * (1 - 0.1 * 0.5)])
    # Adam: decay is added to the gradient, whose normalized first step is lr · sign(g)
    p = one_param(2.0)
    opt = build_optimizer([{"params": [p]}], targs("--optim", "adam", "--lr", "0.1", "--weight_decay", "0.5"))
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert steps(opt, p, [0.0]) == pytest.approx([2.0 - 0.1], abs=1e-6)
    p = one_param(2.0)
    opt = build_optimizer([{"params": [p]}], targs("--optim", "adam", "--lr", "0.1"))
    assert steps(opt, p, [-3.0, -3.0]) == pytest.approx([2.1, 2.2], abs=1e-6)


def test_set_lr_keeps_per_group_ratios():
    args = targs("--optim", "sgd", "--lr", "0.1")
    opt = build_optimizer([{"params": [one_param()], "lr": 0.1}, {"params": [one_param()], "lr": 0.4}], args)
    set_lr(opt, [0.1, 0.4], 0.25)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.025, 0.1])
    assert opt.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("flags, word", [
    (["--gamma", "0"], "--gamma"), (["--gamma", "1.5"], "--gamma"), (["--step_size", "0"], "--step_size"),
    (["--momentum", "1"], "--momentum"), (["--weight_decay", "-1"], "--weight_decay"),
    (["--warmup_epochs", "-1"], "--warmup_epochs"), (["--epochs_num", "3", "--warmup_epochs", "3"], "--warmup_epochs"),
])
def test_bad_optimizer_flags_are_one_line_user_errors(flags, word):
    with pytest.raises(UserError, match=word) as e:
        parse_train_args(["--device", "cpu", *flags])
    assert "\n" not in str(e.value)
