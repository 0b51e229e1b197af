"""Data-parallel training under torchrun (`torchrun --nproc_per_node N train.py ...`; README, Multi-GPU training):
process group, rank helpers, sharded encoding, per-rank batch slices, global-batch loss, DDP wrapping (with the
synchronized BatchNorm of training/sync_batchnorm.py).

Without torchrun's RANK / WORLD_SIZE / LOCAL_RANK, init() does nothing and every helper is a no-op or identity.
Invariant: outside train_rank_rng(), the Python / NumPy / torch random states are identical on all ranks, so
every rank samples the same queries and mines the same triplets from the same gathered features.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from dataio.images import collate_images

from commons import UserError, get_rng_state, set_rng_state
from retrieval.evaluation import EvalResult, InferenceConfig, evaluate_descriptors, extract_features
from training.sync_batchnorm import convert_sync_batchnorm

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}  # device → collective backend


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the torchrun job."""
    rank: int
    world_size: int
    local_rank: int
    backend: str


_ENV: DistEnv | None = None


def init(device: str) -> DistEnv | None:
    """Join the process group from torchrun's variables: NCCL on GPUs (one per local rank), gloo on CPU.

    Returns None, touching nothing, when not launched by torchrun.
    """
    global _ENV
    if not all(k in os.environ for k in ENV_KEYS):
        return None
    rank, world, local = (int(os.environ[k]) for k in ENV_KEYS)
    if device == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                            f"lower --nproc_per_node to the number of GPUs")
        torch.cuda.set_device(local)  # "cuda" now means this rank's GPU everywhere
    dist.init_process_group(BACKENDS[device], rank=rank, world_size=world,
                            device_id=torch.device("cuda", local) if device == "cuda" else None)
    _ENV = DistEnv(rank, world, local, BACKENDS[device])
    atexit.register(cleanup)
    return _ENV


def active() -> bool:
    """True inside an initialized multi-process job."""
    return _ENV is not None and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when single-process)."""
    return _ENV.rank if active() else 0


def world_size() -> int:
    """Number of ranks (1 when single-process)."""
    return _ENV.world_size if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that logs and writes checkpoints and results."""
    return rank() == 0


def barrier() -> None:
    """Wait for all ranks."""
    if active():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (idempotent)."""
    global _ENV
    if active():
        dist.destroy_process_group()
    _ENV = None


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _ENV.backend == "nccl" else torch.device("cpu")


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable obj on every rank (identity when single-process)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def all_gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate every rank's N_r×D float32 rows in rank order (N_r may differ, and be 0 with any D)."""
    if not active():
        return local
    dev = _comm_device()
    shape = torch.tensor([local.shape[0], local.shape[1] if local.shape[0] else 0], device=dev)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    n_max, dim = (int(v) for v in torch.stack(shapes).max(0).values)
    padded = torch.zeros(n_max, dim, dtype=torch.float32, device=dev)
    if len(local):
        padded[:len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(dev)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s[0])] for p, s in zip(parts, shapes)]).cpu().numpy()


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of indices (shares in rank order concatenate back to indices)."""
    return np.array_split(np.asarray(indices), world_size())[rank()]


def sharded_encoder(model: nn.Module, dataset, cfg: InferenceConfig) -> Callable[[np.ndarray, str], np.ndarray]:
    """encode(indices, desc) -> N×D: each rank encodes its shard of indices, then all ranks gather all rows."""
    def encode(indices: np.ndarray, desc: str) -> np.ndarray:
        mine = shard(indices)
        local = (extract_features(model, dataset, mine, cfg, desc)
                 if len(mine) else np.zeros((0, 0), dtype=np.float32))
        return all_gather_rows(local)
    return encode


def sharded_test(model: nn.Module, dataset, recall_values, cfg: InferenceConfig,
                 max_k: int | None = None) -> EvalResult:
    """evaluation.test with sharded encoding; rank 0 searches and its result is broadcast, so every rank
    takes the same early-stopping decisions even with a non-deterministic index (hnsw)."""
    encode = sharded_encoder(model, dataset, cfg)
    feats = encode(np.arange(len(dataset)), f"encoding {dataset.split}")
    db = dataset.database_num
    result = evaluate_descriptors(feats[:db], feats[db:], dataset, recall_values, cfg.index, max_k) \
        if is_main() else None
    return broadcast_object(result)


def sync_rng_state() -> None:
    """Give every rank rank 0's random states (needed after a --seed -1 start)."""
    if active():
        set_rng_state(broadcast_object(get_rng_state() if is_main() else None))


def check_same_on_all_ranks(arr: np.ndarray, what: str) -> None:
    """Fail loudly if arr (e.g. the mined triplets) differs between ranks."""
    if not active():
        return
    digest = hashlib.sha1(np.ascontiguousarray(arr).tobytes()).digest()
    h = torch.tensor([int.from_bytes(digest[:7], "little")], dtype=torch.int64, device=_comm_device())
    lo, hi = h.clone(), h.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"{what} differ between ranks: the shared random state was broken")


def _mix_seed(seed: int, rank_: int) -> int:
    """A 63-bit seed for (seed, rank), decorrelated across ranks."""
    return int(np.random.SeedSequence([seed, rank_]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _reseed_worker(worker_id: int, rank_: int) -> None:
    """DataLoader worker_init_fn: workers of different ranks get different augmentation streams."""
    _seed_all(_mix_seed(torch.initial_seed(), rank_))


@contextlib.contextmanager
def train_rank_rng() -> Iterator[None]:
    """Per-rank random streams inside (e.g. for augmentations), the shared states restored on exit."""
    if not active():
        yield
        return
    shared = get_rng_state()
    _seed_all(_mix_seed(int(torch.randint(0, 2**62, (1,))), rank()))
    try:
        yield
    finally:
        set_rng_state(shared)


class RankBatchSampler(Sampler[list[int]]):
    """This rank's slice of every global batch of a shuffled pass.

    The global batches are those of DataLoader(shuffle=True, batch_size=B, generator=g) in one process:
    torch.randperm(n, generator=g) cut into B-sized batches. Rank r takes the r-th of the W near-equal
    contiguous slices of each batch (possibly empty when the batch has fewer than W items).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank_: int, world: int):
        super().__init__()
        self.n, self.batch_size, self.generator, self.rank, self.world = n, batch_size, generator, rank_, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in torch.randperm(self.n, generator=self.generator).split(self.batch_size):
            yield batch.tensor_split(self.world)[self.rank].tolist()

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def _collate_or_empty(batch: list, empty_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """images.collate_images (channels-last batches, as in one process), or an empty (images 0×…, ids 0×…) pair
    for an empty slice."""
    if batch:
        return tuple(collate_images(batch))
    return torch.zeros(empty_shape), torch.zeros(empty_shape[:2], dtype=torch.int64)


def rank_loader(ds, batch_size: int, generator: torch.Generator, num_workers: int, pin_memory: bool,
                item_shape: tuple[int, ...]) -> DataLoader:
    """DataLoader over this rank's slices of the global batches (RankBatchSampler). generator is consumed as by
    the single-process loader (worker base seed, then permutation); item_shape (2+K)×3×H×W serves empty slices."""
    sampler = RankBatchSampler(len(ds), batch_size, generator, rank(), world_size())
    return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=generator, worker_init_fn=functools.partial(_reseed_worker, rank_=rank()),
                      collate_fn=functools.partial(_collate_or_empty, empty_shape=(0, *item_shape)))


def global_mean_loss(criterion: Callable, feats: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Loss to backpropagate on this rank, and the loss of the whole global batch.

    feats: b×(2+K)×D descriptors of this rank's b queries (b may be 0). Every criterion is a mean of
    per-query terms, so the global-batch loss is Σ_r b_r·mean_r / Σ_r b_r; scaling the local mean by
    W·b_r/B makes DDP's gradient average (Σ_r / W) the exact gradient of the global-batch mean.
    """
    b = feats.shape[0]
    local = criterion(feats[:, 0], feats[:, 1], feats[:, 2:]) if b else feats.sum() * 0
    stats = torch.tensor([local.item() * b if b else 0.0, float(b)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(stats)
    total, count = stats.tolist()
    return local * (world_size() * b / count), total / count


def wrap(model: nn.Module, device: str) -> DistributedDataParallel:
    """Synchronize BatchNorm and wrap for gradient all-reduce; rank 0's weights are broadcast to all ranks."""
    convert_sync_batchnorm(model, device)
    ids = [torch.cuda.current_device()] if device == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
