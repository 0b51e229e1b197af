"""Initialization of a fresh training run: weights from --init_from, and data-dependent aggregation parameters
(NetVLAD k-means on local descriptors of training database images)."""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from commons import autocast
from datasets_ws import BaseDataset
from dataio.images import collate_images, to_input
from network import initialize_aggregation, load_init_state
from runs import profile
from util import load_checkpoint


def init_aggregation(model, ds: BaseDataset, args, device: str) -> None:
    """Data-dependent initialization (NetVLAD k-means) from up to 1000 random database images of ds (train.py: the
    training database; eval.py's untrained model: the evaluated one)."""
    ids = np.random.permutation(ds.database_num)[:1000]  # drawn for every aggregation: same random streams
    if not getattr(model.aggregation, "needs_init", False):
        return
    loader = DataLoader(Subset(ds.as_images(), ids.tolist()), batch_size=args.infer_batch_size,
                        num_workers=args.num_workers, collate_fn=collate_images)
    with profile.phase("netvlad_init") as record, autocast(device, args.precision):
        def batches() -> Iterator[torch.Tensor]:  # model inputs B×3×H×W, counted as read
            for images, _ in profile.timed_iter(loader):
                record.images += len(images)
                yield to_input(images, device, "fp32")
        initialize_aggregation(model, batches(), seed=max(args.seed, 0), ratio=args.netvlad_alpha_ratio)


def init_weights(model, args) -> bool:
    """Fresh run: load --init_from weights when given. Returns whether the aggregation still needs its k-means
    initialization (NetVLAD without weights from the checkpoint; attention layers such as CRN excluded)."""
    missing = set(model.state_dict())
    if args.init_from:
        missing = set(load_init_state(model, load_checkpoint(args.init_from)["model_state_dict"], args.init_from))
        logging.info(f"weights from {args.init_from}; kept at initialization: {sorted(missing) or 'none'}")
    att = {id(p) for p in model.attention_parameters()}
    return bool({f"aggregation.{n}" for n, p in model.aggregation.named_parameters() if id(p) not in att} & missing)
