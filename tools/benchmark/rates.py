"""Rates of the model alone, shared by the benchmark's modes: in-memory forward passes and training steps of the
model train.py builds, timed as train.py and extract_features run them."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

import train
from commons import autocast, prepare_model
from network import build_model
from tools.benchmark.limits import timed
from training.losses import criterion_from_args
from training.optim import build_optimizer, param_groups


def make_model(args, device: str, freeze: bool = True) -> torch.nn.Module:
    """The model of args; with freeze, the blocks before the last frozen as in a default (ImageNet-initialized)
    training run (without, as train.py --pretrain none trains it)."""
    model = build_model(args)
    for child in list(model.backbone.children())[:-1] if freeze else []:  # what build_backbone freezes when pretrained
        child.requires_grad_(False)
    return prepare_model(model, device, args.precision)


def train_run(model, ds, make_triplets, args, device: str, s: dict) -> Callable[[bool], float]:
    """run(warmup) → triplets/s (query × negative pairs) of train.train_on_triplets over s["steps"] steps (1 step
    when warming up). make_triplets(n) gives n triplets n×(2+K) of ds."""
    optimizer = build_optimizer(param_groups(model, args), args)
    criterion = criterion_from_args(args)

    def run(warmup: bool) -> float:
        steps = 1 if warmup else s["steps"]
        triplets = make_triplets(steps * args.train_batch_size)
        return steps * args.train_batch_size * args.negs_num_per_query / timed(
            lambda: train.train_on_triplets(model, ds, triplets, optimizer, criterion, args, device, "benchmark"),
            device)
    return run


def model_run(model, args, device: str, n: int, channels_last: bool) -> Callable[[bool], float]:
    """run(warmup) → images/s of the model alone: ceil(n / batch) in-memory batches B×3×H×W in the given memory
    format (the model's weights must be in the same format), as extract_features' loop runs them."""
    batch = args.infer_batch_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, *args.resize).contiguous(memory_format=fmt).to(device)

    @torch.no_grad()
    def forward() -> np.ndarray:
        with autocast(device, args.precision):
            return model(x).float().cpu().numpy()

    def run(warmup: bool) -> float:
        model.eval()
        batches = 1 if warmup else -(-n // batch)
        return batches * batch / timed(lambda: [forward() for _ in range(batches)], device)
    return run
