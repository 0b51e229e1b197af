"""Train a geo-localization network with triplet-style losses and cached hard-negative mining.

Example: python train.py --datasets_folder data --dataset_name pitts30k --aggregation netvlad
"""
from __future__ import annotations

from runs import profile  # first: the run's start-up time includes the imports below
from parser import exit_on_help

if __name__ == "__main__":
    exit_on_help("train")  # before the imports below: --help answers without importing torch

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import distributed
from training.augmentations import build_augmentation
from commons import (autocast, get_rng_state, log_precision, log_to_folder, make_deterministic, prepare_model, run_cli,
                     set_rng_state, set_stop_hint, setup_logging, tune_allocator)
from datasets_ws import BaseDataset, TripletsDataset, build_all
from retrieval.evaluation import EvalResult, InferenceConfig, encoder, format_recalls, test
from dataio.images import collate_images, to_input
from training.losses import criterion_from_args
from training.initialization import init_aggregation, init_weights
from training.mining import MiningContext, MiningSettings
from network import build_model, load_model_state
from training.optim import build_optimizer, lr_factor, param_groups, set_lr
from parser import parse_train_args, resolve_device, startup_notes, train_parser
from util import (BEST, LAST, NonFiniteError, check_finite_radii, check_recall_values, check_resumable,
                  continue_from, load_checkpoint, log_args, new_run_folder, resume_folder,
                  save_checkpoint, train_stop_hint, write_json)
from runs.visualize import plot_training_curves

STOP_METRIC = 5  # early stopping and model selection use recall@5


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a run resumes exactly."""
    epoch: int = 0  # current epoch
    refresh: int = 0  # cache refreshes already done in the current epoch
    best_recall: float = -1.0  # best validation R@5
    not_improved: int = 0  # epochs without R@5 gain
    train_time_s: float = 0.0
    losses: list = field(default_factory=list)  # mean loss of every refresh
    val_history: list = field(default_factory=list)  # validation recalls of every epoch


def train_on_triplets(model, ds: TripletsDataset, triplets: np.ndarray, optimizer, criterion, args,
                      device: str, where: str, ddp_model=None) -> float:
    """One pass over the mined triplets; returns the mean loss. Stops on a non-finite loss.

    With ddp_model (torchrun), each rank trains on its slice of every global batch of --train_batch_size
    queries; gradients and the returned loss are those of the global batches, as in one process.
    """
    ds.set_triplets(triplets)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    if ddp_model is None:
        loader = DataLoader(ds, batch_size=args.train_batch_size, shuffle=True, generator=gen,
                            num_workers=args.num_workers, pin_memory=device == "cuda", drop_last=False,
                            collate_fn=collate_images)
    else:
        loader = distributed.rank_loader(ds, args.train_batch_size, gen, args.num_workers, device == "cuda",
                                         (triplets.shape[1], 3, *args.resize))
    net = model if ddp_model is None else ddp_model
    net.train()
    losses = []
    scaler = torch.amp.GradScaler(device, enabled=args.precision == "fp16")  # fp16 gradients would underflow
    batches = tqdm(profile.timed_iter(loader), total=len(loader), desc=f"training {where}", ncols=100, leave=False,
                   disable=not distributed.is_main())
    with distributed.train_rank_rng():  # per-rank augmentation streams; no-op in one process
        for it, (images, _) in enumerate(batches):
            b, n = images.shape[:2]  # B×(2+K)×3×H×W
            with profile.phase("compute", images=b * n):
                with autocast(device, args.precision):
                    feats = net(to_input(images.flatten(0, 1), device, args.precision))  # (B·(2+K))×D
                feats = feats.float().view(b, n, feats.shape[-1])
                if ddp_model is None:
                    loss = criterion(feats[:, 0], feats[:, 1], feats[:, 2:])
                    value = loss.item()
                else:
                    loss, value = distributed.global_mean_loss(criterion, feats)
                if not math.isfinite(value):
                    raise NonFiniteError(f"loss became {value} at {where}, iteration {it}; the last good "
                                         f"checkpoint is kept; lower --lr or use --precision fp32")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            losses.append(value)
    bad = next((k for k, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()), None)
    if bad is not None:  # the last step can blow up the weights although its loss was finite
        raise NonFiniteError(f"weights became non-finite ({bad}) at {where}, iteration {len(losses) - 1}; the last "
                             f"good checkpoint is kept; lower --lr or use --precision fp32")
    return float(np.mean(losses))


def make_checkpoint(model, optimizer, state: TrainState, neg_cache: np.ndarray, args) -> dict:
    """Everything needed to continue the run as if it had not stopped."""
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "train_state": asdict(state), "neg_cache": torch.from_numpy(neg_cache),
            "rng_state": get_rng_state(), "args": vars(args)}


def evaluator():
    """evaluation.test, or its sharded version (same result on every rank) under torchrun."""
    return distributed.sharded_test if distributed.active() else test


def validate(model, val_ds, args, device: str) -> EvalResult:
    """Recalls on the validation split (always including R@5)."""
    values = sorted(set(args.recall_values) | {STOP_METRIC})
    with profile.phase("validation"):
        return evaluator()(model, val_ds, values, InferenceConfig.from_args(args, device))


def run_epoch(model, ds, optimizer, criterion, ctx: MiningContext, state: TrainState, folder: Path, args,
              device: str, base_lrs: list[float], ddp_model=None) -> None:
    """Train the remaining cache refreshes of state.epoch, checkpointing after each."""
    refreshes = args.queries_per_epoch // args.cache_refresh_rate
    queries_num = len(ds.queries_paths)
    while state.refresh < refreshes:
        where = f"epoch {state.epoch:02d} refresh {state.refresh + 1}/{refreshes}"
        set_lr(optimizer, base_lrs, lr_factor(state.epoch + state.refresh / refreshes, args.epochs_num, args))
        start = time.time()
        query_ids = np.random.choice(queries_num, min(args.cache_refresh_rate, queries_num), replace=False)
        with profile.phase("mining"):
            triplets = ctx.mine(query_ids)
        distributed.check_same_on_all_ranks(triplets, "mined triplets")
        with profile.phase("training"):
            loss = train_on_triplets(model, ds, triplets, optimizer, criterion, args, device, where, ddp_model)
        state.refresh += 1
        state.train_time_s += time.time() - start
        state.losses.append(loss)
        logging.debug(f"{where}: loss {loss:.4f} ({time.time() - start:.1f} s)")
        if distributed.is_main():
            with profile.phase("checkpoint"):
                save_checkpoint(make_checkpoint(model, optimizer, state, ctx.neg_cache, args), folder, is_best=False)


def end_epoch(model, optimizer, val_ds, ctx, state: TrainState, folder: Path, args, device: str) -> bool:
    """Validate, update best model and patience, checkpoint. Returns True when training should stop."""
    result = validate(model, val_ds, args, device)
    recall = result.recalls[STOP_METRIC]
    is_best = recall > state.best_recall
    state.not_improved = 0 if is_best else state.not_improved + 1
    state.best_recall = max(recall, state.best_recall)
    state.val_history.append({str(k): v for k, v in result.recalls.items()})
    losses = state.losses[-(args.queries_per_epoch // args.cache_refresh_rate):]
    logging.info(f"epoch {state.epoch:02d}: loss {np.mean(losses):.4f}, val {format_recalls(result.recalls)}"
                 f"{' (best)' if is_best else ''}")
    state.epoch, state.refresh = state.epoch + 1, 0
    if distributed.is_main():
        with profile.phase("checkpoint"):
            save_checkpoint(make_checkpoint(model, optimizer, state, ctx.neg_cache, args), folder, is_best)
        with profile.phase("plots"):
            plot_training_curves(state.losses, state.val_history, args.queries_per_epoch // args.cache_refresh_rate,
                                 folder / "training_curves.png", STOP_METRIC)
    if state.not_improved >= args.patience:
        logging.info(f"no R@{STOP_METRIC} gain for {args.patience} epochs: stopping")
        return True
    return False


@dataclass
class RunInputs:
    """What a training run starts from, read and checked before its run folder exists."""
    ds: TripletsDataset
    val_ds: BaseDataset
    test_ds: BaseDataset
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    state: TrainState
    neg_cache: np.ndarray  # Q×negs_num_per_query database indices, -1 where none was mined yet
    needs_kmeans: bool  # NetVLAD still needs its k-means initialization (no weights from a checkpoint)


def load_inputs(args, device: str) -> RunInputs:
    """Datasets, model, optimizer, state, negative cache and whether k-means is still needed; restored from --resume
    or --init_from when given. Every input is read and checked here, before the run folder is created."""
    ckpt = load_checkpoint(args.resume) if args.resume else None  # its args were checked by parse_train_args
    where, test_size = (args.datasets_folder, args.dataset_name), tuple(args.test_resize or args.resize)
    with profile.phase("datasets"):  # file names, image checks; unreadable images of all splits reported together
        ds, val_ds, test_ds = build_all(
            lambda: TripletsDataset(*where, "train", tuple(args.resize), args.val_positive_dist_threshold,
                                    args.train_positives_dist_threshold, build_augmentation(args), args.skip_corrupt,
                                    args.pixel_cache),
            lambda: BaseDataset(*where, "val", test_size, args.val_positive_dist_threshold, args.skip_corrupt,
                                args.pixel_cache),
            lambda: BaseDataset(*where, "test", test_size, args.val_positive_dist_threshold, args.skip_corrupt,
                                args.pixel_cache))
    check_recall_values(args.recall_values, (val_ds, test_ds))
    logging.info(f"train: {ds}; val: {val_ds}")
    with profile.phase("model"):
        model = prepare_model(build_model(args, pretrained=args.pretrain != "none" and ckpt is None),
                              device, args.precision)
    optimizer = build_optimizer(param_groups(model, args), args)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    state = TrainState()
    neg_cache = np.full((len(ds.queries_paths), args.negs_num_per_query), -1, dtype=np.int64)
    if ckpt:
        load_model_state(model, ckpt["model_state_dict"], args.resume)
        optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        state = TrainState(**ckpt["train_state"])
        neg_cache = ckpt["neg_cache"].numpy().copy()
        set_rng_state(ckpt["rng_state"])
        logging.info(f"resumed from {args.resume} at epoch {state.epoch}, refresh {state.refresh}")
    return RunInputs(ds, val_ds, test_ds, model, optimizer, base_lrs, state, neg_cache,
                     ckpt is None and init_weights(model, args))


def open_run_folder(args, state: TrainState, main_rank: bool, argv: list[str] | None) -> Path:
    """The run folder, created now that the inputs are valid: a resumed last_model.pth continues in its own folder,
    anything else (a new run, a checkpoint copied elsewhere) gets logs/<save_dir>/<timestamp>/. Rank 0 logs there,
    announces it and registers the stop hint: how to continue after an error, Ctrl-C or SIGTERM."""
    own = resume_folder(args.resume) if args.resume else None
    folder = own or distributed.broadcast_object(new_run_folder(args.save_dir) if main_rank else None)
    if not main_rank:
        return folder
    log_to_folder(folder)
    logging.info(f"run folder: {folder}")
    log_args(args, folder)
    for line in startup_notes("train", args, argv):  # defaults that differ from dVGL's, flags without effect
        logging.info(line)
    if args.resume:
        continue_from(Path(args.resume), folder, state.best_recall)
    set_stop_hint(train_stop_hint(folder, args, sys.argv[1:] if argv is None else argv,
                                  distributed.world_size() if distributed.active() else None,
                                  vars(train_parser().parse_args([]))))
    return folder


def final_test(args, folder: Path, device: str, state: TrainState, test_ds: BaseDataset) -> dict:
    """Test the best model on the test split and write results.json (rank 0 only under torchrun)."""
    distributed.barrier()  # rank 0 has written best_model.pth
    path = next(p for p in (folder / BEST, folder / LAST, Path(args.resume or "")) if p.is_file())
    if path.name != BEST:  # a copied checkpoint resumed without its best_model.pth, and no better epoch since
        logging.warning(f"no {BEST} in {folder} (none was beside {args.resume}, and no epoch since the resume beat "
                        f"its best R@{STOP_METRIC}): testing the last model, {path}")
    best = load_checkpoint(path)
    model = prepare_model(build_model(best["args"]), device, args.precision)
    load_model_state(model, best["model_state_dict"], str(path))
    with profile.phase("test"):
        result = evaluator()(model, test_ds, args.recall_values, InferenceConfig.from_args(args, device))
    logging.info(f"test of best model on {test_ds}: {format_recalls(result.recalls)}")
    results = {"kind": "train", "args": vars(args), "train_time_s": state.train_time_s,
               "epochs": state.epoch, "best_val_recall@5": state.best_recall, "losses": state.losses,
               "val_history": state.val_history,
               "test": {**result.info, "recalls": {str(k): v for k, v in result.recalls.items()},
                        "checkpoint": str(path)},
               "time_profile": profile.current().summary()}
    if distributed.is_main():
        for line in profile.format_summary(results["time_profile"]):
            logging.info(line)
        write_json(folder / "results.json", results)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Train, validate every epoch, stop early on R@5, then test the best model. Under torchrun:
    DistributedDataParallel over the ranks (see training/distributed.py); rank 0 logs and writes files."""
    profile.begin()
    args = parse_train_args(argv)
    check_resumable(args.resume)
    check_finite_radii(val_positive_dist_threshold=args.val_positive_dist_threshold)
    tune_allocator()
    device = resolve_device(args)
    main_rank = distributed.init(device) is None or distributed.is_main()
    setup_logging(None, args.log_level if main_rank else "warning", hold=main_rank)
    if main_rank:
        log_precision(args.precision, args.precision_requested, device)
    make_deterministic(args.seed)
    inputs = load_inputs(args, device)
    ds, val_ds, model, optimizer, state = inputs.ds, inputs.val_ds, inputs.model, inputs.optimizer, inputs.state
    make_encoder = distributed.sharded_encoder if distributed.active() else encoder
    ctx = MiningContext.create(make_encoder(model, ds.as_images(), InferenceConfig.from_args(args, device)), ds,
                               MiningSettings.from_args(args), inputs.neg_cache)
    folder = open_run_folder(args, state, main_rank, argv)
    profile.mark_startup()
    if inputs.needs_kmeans:
        init_aggregation(model, ds, args, device)
    ddp_model = None
    if distributed.active():
        ddp_model = distributed.wrap(model, device)
        distributed.sync_rng_state()
    criterion = criterion_from_args(args)
    stop = state.not_improved >= args.patience
    while not stop and state.epoch < args.epochs_num:
        run_epoch(model, ds, optimizer, criterion, ctx, state, folder, args, device, inputs.base_lrs, ddp_model)
        stop = end_epoch(model, optimizer, val_ds, ctx, state, folder, args, device)
    logging.info(f"trained {state.epoch} epoch{'' if state.epoch == 1 else 's'} in {state.train_time_s:.0f} s; "
                 f"best val R@{STOP_METRIC} {state.best_recall:.1f}")
    return final_test(args, folder, device, state, inputs.test_ds)


if __name__ == "__main__":
    run_cli(main)
