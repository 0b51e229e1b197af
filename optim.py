"""Optimizer and learning-rate scheduler registries."""
from __future__ import annotations

import argparse
import math
from typing import Callable, Iterable

import torch

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda groups, a: torch.optim.Adam(groups, lr=a.lr, weight_decay=a.weight_decay),
    "adamw": lambda groups, a: torch.optim.AdamW(groups, lr=a.lr, weight_decay=a.weight_decay),
    "sgd": lambda groups, a: torch.optim.SGD(groups, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay),
}


def build_optimizer(param_groups: Iterable[dict], args: argparse.Namespace) -> torch.optim.Optimizer:
    """The optimizer named by --optim over the given parameter groups (each may carry its own lr)."""
    return OPTIMIZERS[args.optim](list(param_groups), args)


def lr_factor(step: float, total: float, args: argparse.Namespace) -> float:
    """Multiplier of the base lr after `step` of `total` epochs (fractions allowed).

    Linear warm-up over --warmup_epochs, then: none → 1; step → gamma^(epochs // step_size);
    cosine → half-cosine from 1 down to 0 over the remaining epochs.
    """
    warm = args.warmup_epochs
    if warm > 0 and step < warm:
        return max(step / warm, 0.01)
    if args.scheduler == "step":
        return args.gamma ** int(step // args.step_size)
    if args.scheduler == "cosine":
        span = max(total - warm, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))
    return 1.0


SCHEDULERS = ("none", "step", "cosine")


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    """Set each parameter group's lr to its base lr times factor."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
