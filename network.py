"""The geo-localization network: backbone → optional attention → aggregation → optional FC + L2."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model.aggregations import build_aggregation
from model.aggregations_dvgl import SHALLOW_AGGREGATIONS, pool_with_l2
from model.attention import build_attention
from model.backbones import build_backbone
from cli.arch import ARCH_DEFAULTS
from commons import UserError
from runs import profile


class GeoLocalizationNet(nn.Module):
    """Images B×3×H×W → L2-normalized descriptors B×D (D = self.out_dim)."""

    def __init__(self, backbone: str = ARCH_DEFAULTS["backbone"], aggregation: str = ARCH_DEFAULTS["aggregation"],
                 netvlad_clusters: int = ARCH_DEFAULTS["netvlad_clusters"], fc_output_dim: int | None = None,
                 attention: str = ARCH_DEFAULTS["attention"], l2: str = ARCH_DEFAULTS["l2"],
                 trunc_te: int | None = None, pretrained: bool | str = False, train_all_layers: bool = False,
                 freeze_te: int | None = None, gem_p: float = ARCH_DEFAULTS["gem_p"],
                 rmac_levels: int = ARCH_DEFAULTS["rmac_levels"]):
        super().__init__()
        bb = build_backbone(backbone, pretrained, aggregation, train_all_layers, trunc_te, freeze_te)
        self.backbone = bb.net
        self.attention = build_attention(attention, bb.out_dim)
        self.aggregation = build_aggregation(aggregation, bb.out_dim, netvlad_clusters=netvlad_clusters, gem_p=gem_p,
                                             rmac_levels=rmac_levels)
        self.fc = nn.Linear(self.aggregation.out_dim, fc_output_dim) if fc_output_dim else None
        self.out_dim = fc_output_dim or self.aggregation.out_dim
        self.l2 = l2 if aggregation in SHALLOW_AGGREGATIONS else "after_pool"  # dVGL's --l2: shallow poolings only

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Local feature map B×C×H'×W' (after attention)."""
        return self.attention(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = pool_with_l2(self.aggregation, self.features(x), self.l2)
        if self.fc is not None:
            desc = F.normalize(self.fc(desc), p=2, dim=1)
        return desc

    def attention_parameters(self) -> list[nn.Parameter]:
        """Parameters of attention layers (CBAM, CRN), which may get their own learning rate."""
        params = list(self.attention.parameters())
        if hasattr(self.aggregation, "attention_parameters"):
            params += list(self.aggregation.attention_parameters())
        return params


def arch_config(args: Any) -> dict:
    """The architecture keys of an argparse namespace or a stored args dict."""
    get = args.get if isinstance(args, Mapping) else lambda k, d: getattr(args, k, d)
    return {k: get(k, d) for k, d in ARCH_DEFAULTS.items()}


def build_model(args: Any, pretrained: bool = False) -> GeoLocalizationNet:
    """Build the network described by args (namespace or dict with ARCH_DEFAULTS keys).

    pretrained: start from the weights of args' --pretrain (imagenet, places, gldv2; "none" gives random weights).
    """
    get = args.get if isinstance(args, Mapping) else lambda k, d=None: getattr(args, k, d)
    source = get("pretrain", "imagenet") if pretrained else False
    return GeoLocalizationNet(**arch_config(args), pretrained=False if source == "none" else source,
                              train_all_layers=bool(get("train_all_layers", False)), freeze_te=get("freeze_te", None))


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load weights, stopping with a clear message if they belong to another architecture."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or ["shape/key mismatch"]
        raise UserError(f"checkpoint {source} does not match the model architecture ({lines[0][:160]}); "
                        f"pass a checkpoint written by this toolkit for that architecture (train.py --resume "
                        f"takes the architecture flags stored in it)") from None


def load_init_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load the weights of `state` into model, allowing model keys absent from it (e.g. the CRN of a CRN model
    started from NetVLAD); returns those keys. Keys the model lacks or other shapes stop with a UserError."""
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if unexpected or wrong:
        raise UserError(f"--init_from {source} does not fit this model (unknown keys {unexpected[:3]}, other shapes "
                        f"{wrong[:3]}); use a checkpoint with the same backbone and aggregation (NetVLAD for crn)")
    return list(model.load_state_dict(state, strict=False).missing_keys)


@torch.no_grad()
def sample_local_descriptors(model: GeoLocalizationNet, batches: Iterable[torch.Tensor], num: int,
                             seed: int) -> np.ndarray:
    """Sample `num` L2-normalized local descriptors (num×C) from backbone feature maps of `batches`, model inputs
    B×3×H×W on the model's device (the caller loads and normalizes the images); stops reading at 2·num."""
    rng = np.random.default_rng(seed)
    chunks, total = [], 0
    model.eval()
    for x in tqdm(batches, desc="NetVLAD init: local descriptors", ncols=100, leave=False):
        fmap = model.features(x).float()  # B×C×H×W (autocast, if any, outside)
        local = F.normalize(fmap.flatten(2).transpose(1, 2).reshape(-1, fmap.shape[1]), dim=1)  # (B·H·W)×C
        chunks.append(local.cpu().numpy())
        total += len(local)
        if total >= num * 2:
            break
    descs = np.concatenate(chunks)
    return descs[rng.choice(len(descs), size=min(num, len(descs)), replace=False)].astype(np.float32)


def initialize_aggregation(model: GeoLocalizationNet, batches: Iterable[torch.Tensor], seed: int,
                           num_descriptors: int = 50000, ratio: float = 100.0) -> None:
    """Run data-dependent initialization (NetVLAD k-means; soft-assignment top1/top2 `ratio`) when the aggregation
    needs it, from model inputs B×3×H×W (see sample_local_descriptors)."""
    agg = model.aggregation
    if not getattr(agg, "needs_init", False):
        return
    descs = sample_local_descriptors(model, batches, num_descriptors, seed)
    logging.info(f"initializing {type(agg).__name__} from {len(descs)} local descriptors (k-means)")
    with tqdm(desc=f"NetVLAD init: k-means of {len(descs)} descriptors", bar_format="{desc}: {elapsed}",
              leave=False) as bar, _ticking(bar), profile.phase("kmeans"):
        agg.init_params(descs, niter=100, seed=seed, ratio=ratio)


@contextlib.contextmanager
def _ticking(bar: tqdm, every_s: float = 1.0) -> Iterator[None]:
    """Refresh bar (its elapsed time) every every_s seconds while the block runs, for a step without progress
    callbacks (faiss k-means releases the GIL)."""
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every_s):
            bar.refresh()
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
