"""Optimizer and learning-rate scheduler registries.

The schedule is stateless: train.run_epoch sets every parameter group's lr to
base_lr · lr_factor(t, epochs_num, args) before each cache refresh, where t = epoch + refresh / refreshes
is the (fractional) number of epochs already trained. Resuming therefore needs no scheduler state.
"""
from __future__ import annotations

import argparse
import logging
import math
from typing import Callable, Iterable

import torch

from commons import UserError

OPTIMIZERS: dict[str, Callable[[list[dict], argparse.Namespace], torch.optim.Optimizer]] = {
    "adam": lambda groups, a: torch.optim.Adam(groups, lr=a.lr, weight_decay=a.weight_decay),
    "adamw": lambda groups, a: torch.optim.AdamW(groups, lr=a.lr, weight_decay=a.weight_decay),
    "sgd": lambda groups, a: torch.optim.SGD(groups, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay),
}
USES_MOMENTUM = {"sgd"}

WARMUP_START = 0.01  # lr factor at t = 0 of a warm-up (a zero lr would waste the first cache refresh)


def _constant(t: float, span: float, args: argparse.Namespace) -> float:
    """--scheduler none: the base lr throughout."""
    return 1.0


def _step(t: float, span: float, args: argparse.Namespace) -> float:
    """--scheduler step: multiply by --gamma every --step_size epochs (counted after the warm-up)."""
    return args.gamma ** math.floor(t / args.step_size)


def _cosine(t: float, span: float, args: argparse.Namespace) -> float:
    """--scheduler cosine: half a cosine from 1 down to 0 over the `span` epochs after the warm-up."""
    if span <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / span)))


# name → factor(t, span, args) with t = epochs since the end of the warm-up, span = epochs_num - warmup_epochs
SCHEDULERS: dict[str, Callable[[float, float, argparse.Namespace], float]] = {
    "none": _constant,
    "step": _step,
    "cosine": _cosine,
}


def lr_factor(step: float, total: float, args: argparse.Namespace) -> float:
    """Multiplier of the base lr after `step` of `total` epochs (fractions allowed).

    During the first --warmup_epochs W the factor rises linearly from WARMUP_START (at step 0) to 1
    (at step W); afterwards the --scheduler runs on step - W over the remaining total - W epochs.
    """
    warm = args.warmup_epochs
    if warm > 0 and step < warm:
        return WARMUP_START + (1.0 - WARMUP_START) * step / warm
    return SCHEDULERS[args.scheduler](step - warm, total - warm, args)


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    """Set each parameter group's lr to its base lr times factor."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


def param_groups(model: torch.nn.Module, args) -> list[dict]:
    """Trainable parameters; attention layers get --attention_lr when given."""
    att = {id(p) for p in model.attention_parameters()} if args.attention_lr else set()
    base = [p for p in model.parameters() if p.requires_grad and id(p) not in att]
    groups = [{"params": base, "lr": args.lr}]
    if att:
        groups.append({"params": [p for p in model.attention_parameters() if p.requires_grad],
                       "lr": args.attention_lr})
    return groups


def build_optimizer(param_groups: Iterable[dict], args: argparse.Namespace) -> torch.optim.Optimizer:
    """The optimizer named by --optim over the given parameter groups (each may carry its own lr)."""
    optimizer = OPTIMIZERS[args.optim](list(param_groups), args)
    momentum = f", momentum {args.momentum}" if args.optim in USES_MOMENTUM else ""
    warmup = f" after {args.warmup_epochs} warm-up epochs" if args.warmup_epochs > 0 else ""
    logging.info(f"optimizer {args.optim}: lr {args.lr}, weight decay {args.weight_decay}{momentum}; "
                 f"lr schedule {args.scheduler}{warmup}")
    return optimizer


def validate_optim_args(args: argparse.Namespace) -> None:
    """Raise UserError for out-of-range optimizer or scheduler flags."""
    checks = [
        (args.weight_decay >= 0, f"--weight_decay must be >= 0, got {args.weight_decay}"),
        (0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}"),
        (args.step_size > 0, f"--step_size must be > 0 epochs, got {args.step_size}"),
        (0 < args.gamma <= 1, f"--gamma must be in (0, 1], got {args.gamma}"),
        (args.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {args.warmup_epochs}"),
        (args.warmup_epochs < args.epochs_num,
         f"--warmup_epochs ({args.warmup_epochs}) must be smaller than --epochs_num ({args.epochs_num})"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
