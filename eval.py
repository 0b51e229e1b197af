"""Evaluate trained checkpoints: recall@N on a split of a datasets_vg dataset.

Example: python eval.py --resume logs/default/<run>/best_model.pth --datasets_folder data --dataset_name st_lucia
The architecture is rebuilt from the args stored in the checkpoint; no architecture flags are needed.
"""
from __future__ import annotations

import logging

import torch

from commons import log_precision, make_deterministic, prepare_model, run_cli, setup_logging, tune_allocator
from datasets_ws import BaseDataset
from evaluation import EvalResult, hits_matrix, prediction_distances, recalls_by_threshold, recalls_from_hits
from network import build_model, load_model_state
from parser import parse_eval_args, resolve_device
from pca import prepare_pca
from test_methods import Ensemble, MultiScale, run_test_method
from util import arch_summary, load_checkpoint, log_args, new_run_folder, write_json
from visualize import plot_recall_curve, plot_recall_vs_threshold, save_prediction_pictures

CURVE_MAX_N = 100  # recall_curve.png: recall@N for N = 1..100 (clipped to the database size)


def load_trained_model(path: str, device: str, precision: str) -> torch.nn.Module:
    """Rebuild the architecture stored in checkpoint `path` and load its weights."""
    ckpt = load_checkpoint(path)
    logging.info(f"{path}: {arch_summary(ckpt['args'])}")
    model = build_model(ckpt["args"])
    load_model_state(model, ckpt["model_state_dict"], path)
    return prepare_model(model, device, precision)


def build_test_model(args, folder, device: str) -> tuple[torch.nn.Module, dict]:
    """The --resume model(s) as one encoder: ensemble, multi-scale and PCA as requested; plus a summary."""
    models = [load_trained_model(path, device, args.precision) for path in args.resume]
    model = models[0] if len(models) == 1 else Ensemble(models, args.ensemble)
    if list(args.multiscale) != [1.0]:
        model = MultiScale(model, args.multiscale, args.multiscale_combine)
    info = {"test_method": args.test_method, "ensemble": args.ensemble if len(models) > 1 else None,
            "multiscale": list(args.multiscale)}
    if args.pca_dim or args.pca_file:
        model, info["pca"] = prepare_pca(model, args, folder, device)
    return model, info


def recall_table(result: EvalResult) -> str:
    """A two-row text table of recall@N."""
    ns = sorted(result.recalls)
    head = " | ".join(f"R@{n:<4}" for n in ns)
    vals = " | ".join(f"{result.recalls[n]:6.2f}" for n in ns)
    return f"{head}\n{vals}"


def prediction_reports(result: EvalResult, ds: BaseDataset, args, folder) -> dict:
    """Recall curve, recalls at several radii and prediction pictures, all from the predictions of one search."""
    preds, q_utms, db_utms = result.predictions, ds.queries_utms, ds.database_utms  # preds: Q×K
    thr = args.val_positive_dist_threshold
    curve = recalls_from_hits(hits_matrix(preds, q_utms, db_utms, thr), range(1, min(CURVE_MAX_N, preds.shape[1]) + 1))
    plot_recall_curve(curve, folder / "recall_curve.png", f"{ds.dataset_name} {ds.split}: success within {thr:g} m")
    out = {"recall_curve": {str(n): v for n, v in curve.items()}}
    if args.recall_thresholds:
        by_thr = recalls_by_threshold(preds, q_utms, db_utms, sorted(set(args.recall_thresholds)), args.recall_values)
        plot_recall_vs_threshold(by_thr, folder / "recall_vs_threshold.png", f"{ds.dataset_name} {ds.split}")
        out["recalls_by_threshold"] = {f"{t:g}": {str(n): v for n, v in r.items()} for t, r in by_thr.items()}
    if args.save_predictions:
        top = preds[:, :args.save_predictions]
        out["predictions_saved"] = save_prediction_pictures(
            ds.queries_paths, ds.database_paths, top, prediction_distances(top, q_utms, db_utms), thr,
            folder / "predictions", args.save_only_wrong_predictions)
        logging.info(f"wrote {out['predictions_saved']} prediction pictures to {folder / 'predictions'}")
    return out


def main(argv: list[str] | None = None) -> dict:
    """Evaluate and write results.json in logs/<save_dir>/<timestamp>/."""
    args = parse_eval_args(argv)
    tune_allocator()
    folder = new_run_folder(args.save_dir)
    setup_logging(folder, args.log_level)
    log_args(args, folder)
    make_deterministic(args.seed)
    device = resolve_device(args)
    log_precision(args.precision, args.precision_requested, device)
    ds = BaseDataset(args.datasets_folder, args.dataset_name, args.split, tuple(args.test_resize or args.resize),
                     args.val_positive_dist_threshold, args.skip_corrupt)
    logging.info(f"evaluating on {ds}")
    model, variants = build_test_model(args, folder, device)
    result = run_test_method(model, ds, args.test_method, tuple(args.test_resize or args.resize), args.recall_values,
                             args.infer_batch_size, args.num_workers, device, args.precision, args.index,
                             args.majority_weight, max_k=max(CURVE_MAX_N, args.save_predictions))
    logging.info(f"recalls at {args.val_positive_dist_threshold} m on {ds}:\n{recall_table(result)}")
    results = {**result.info, **variants, "recalls": {str(k): v for k, v in result.recalls.items()},
               "checkpoint": args.resume if len(args.resume) > 1 else args.resume[0], "args": vars(args),
               **prediction_reports(result, ds, args, folder)}
    write_json(folder / "results.json", results)
    return results


if __name__ == "__main__":
    run_cli(main)
