"""Evaluate trained checkpoints: recall@N on a split of a datasets_vg dataset.

Example: python eval.py --resume logs/default/<run>/best_model.pth --datasets_folder data --dataset_name st_lucia
The architecture is rebuilt from the args stored in the checkpoint; no architecture flags are needed.
"""
from __future__ import annotations

import logging

import torch

from commons import prepare_model, run_cli, setup_logging, tune_allocator, make_deterministic
from datasets_ws import BaseDataset
from evaluation import EvalResult, test
from network import build_model, load_model_state
from parser import parse_eval_args, resolve_device
from util import arch_summary, load_checkpoint, log_args, new_run_folder, write_json


def load_trained_model(path: str, device: str, precision: str) -> torch.nn.Module:
    """Rebuild the architecture stored in checkpoint `path` and load its weights."""
    ckpt = load_checkpoint(path)
    logging.info(f"{path}: {arch_summary(ckpt['args'])}")
    model = build_model(ckpt["args"])
    load_model_state(model, ckpt["model_state_dict"], path)
    return prepare_model(model, device, precision)


def recall_table(result: EvalResult) -> str:
    """A two-row text table of recall@N."""
    ns = sorted(result.recalls)
    head = " | ".join(f"R@{n:<4}" for n in ns)
    vals = " | ".join(f"{result.recalls[n]:6.2f}" for n in ns)
    return f"{head}\n{vals}"


def main(argv: list[str] | None = None) -> dict:
    """Evaluate and write results.json in logs/<save_dir>/<timestamp>/."""
    args = parse_eval_args(argv)
    tune_allocator()
    folder = new_run_folder(args.save_dir)
    setup_logging(folder, args.log_level)
    log_args(args, folder)
    make_deterministic(args.seed)
    device = resolve_device(args)
    ds = BaseDataset(args.datasets_folder, args.dataset_name, args.split, tuple(args.test_resize or args.resize),
                     args.val_positive_dist_threshold)
    logging.info(f"evaluating on {ds}")
    model = load_trained_model(args.resume[0], device, args.precision)
    result = test(model, ds, args.recall_values, args.infer_batch_size, args.num_workers, device,
                  args.precision, args.index)
    logging.info(f"recalls at {args.val_positive_dist_threshold} m on {ds}:\n{recall_table(result)}")
    results = {**result.info, "recalls": {str(k): v for k, v in result.recalls.items()},
               "checkpoint": args.resume if len(args.resume) > 1 else args.resume[0], "args": vars(args)}
    write_json(folder / "results.json", results)
    return results


if __name__ == "__main__":
    run_cli(main)
