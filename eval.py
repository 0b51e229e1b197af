"""Evaluate trained checkpoints, or an untrained model: recall@N on a split of a datasets_vg dataset.

Example: python eval.py --resume logs/default/<run>/best_model.pth --datasets_folder data --dataset_name st_lucia
The architecture is rebuilt from the args stored in the checkpoint; architecture flags, when given, must match it.
Without --resume the model of the architecture flags is evaluated untrained (ImageNet, --off_the_shelf or random
weights), as dVGL's eval.py does.
"""
from __future__ import annotations

from runs import profile  # first: the run's start-up time includes the imports below
from parser import exit_on_help

if __name__ == "__main__":
    exit_on_help("eval")  # before the imports below: --help answers without importing torch

import argparse
import logging

import torch

from model.aggregations_dvgl import SHALLOW_AGGREGATIONS
from commons import (UserError, log_precision, log_to_folder, make_deterministic, prepare_model, run_cli, set_stop_hint,
                     setup_logging, tune_allocator)
from datasets_ws import BaseDataset, split_folder
from retrieval.evaluation import (EvalResult, InferenceConfig, hits_matrix, prediction_distances, recalls_by_threshold,
                                  recalls_from_hits)
from model.external_weights import load_off_the_shelf
from network import arch_config, build_model, load_model_state
from parser import parse_eval_args, resolve_device, startup_notes, train_parser
from retrieval.pca import PCA, prepare_pca
from retrieval.query_methods import Ensemble, MultiScale, run_test_method
from training.initialization import init_aggregation
from util import (arch_summary, check_finite_radii, check_recall_values, load_checkpoint, log_args, new_run_folder,
                  write_json)
from runs.visualize import plot_recall_curve, plot_recall_vs_threshold, save_prediction_pictures

CURVE_MAX_N = 100  # recall_curve.png: recall@N for N = 1..100 (clipped to the database size)


def check_architecture_flags(args, stored: dict, path: str) -> None:
    """The architecture flags given to eval.py must be those stored in checkpoint `path`: one line naming the
    mismatch, silent when they match (--l2 is compared only for the poolings it applies to)."""
    ckpt = arch_config(stored)
    keys = [k for k in ckpt if hasattr(args, k) and (k != "l2" or ckpt["aggregation"] in SHALLOW_AGGREGATIONS)]
    wrong = [k for k in keys if getattr(args, k) != ckpt[k]]
    if wrong:
        raise UserError(f"{path} does not match the architecture flags: "
                        + ", ".join(f"--{k} {getattr(args, k)} given, {ckpt[k]} in the checkpoint" for k in wrong)
                        + "; drop them (eval.py reads the architecture from the checkpoint) or pass another checkpoint")


def load_trained_model(path: str, device: str, precision: str, args=None) -> torch.nn.Module:
    """Rebuild the architecture stored in checkpoint `path` (checked against args' architecture flags, if any) and
    load its weights."""
    ckpt = load_checkpoint(path)
    if args is not None:
        check_architecture_flags(args, ckpt["args"], path)
    logging.info(f"{path}: {arch_summary(arch_config(ckpt['args']))}")
    model = build_model(ckpt["args"])
    load_model_state(model, ckpt["model_state_dict"], path)
    return prepare_model(model, device, precision)


def build_test_model(args, models: list[torch.nn.Module], folder, device: str) -> tuple[torch.nn.Module, dict]:
    """The --resume model(s) (loaded) as one encoder: ensemble, multi-scale and PCA as requested; plus a summary."""
    model = models[0] if len(models) == 1 else Ensemble(models, args.ensemble)
    if list(args.multiscale) != [1.0]:
        model = MultiScale(model, args.multiscale, args.multiscale_combine)
    info = {"test_method": args.test_method, "ensemble": args.ensemble if len(models) > 1 else None,
            "multiscale": list(args.multiscale)}
    if args.pca_dim or args.pca_file:
        with profile.phase("pca"):
            model, info["pca"] = prepare_pca(model, args, folder, device)
    return model, info


def recall_table(recalls: dict, first: str = "", rows: dict | None = None) -> str:
    """A text table of recall@N: one row of `recalls` ({N: %}), or one row per key of `rows` ({label: {N: %}}),
    labelled in a first column headed `first`."""
    rows = rows if rows is not None else {"": recalls}
    ns = sorted(int(n) for n in next(iter(rows.values())))
    width = max(len(first), *(len(label) for label in rows))
    lines = [" | ".join(([first.ljust(width)] if width else []) + [f"R@{n:<4}" for n in ns])]
    for label, r in rows.items():
        values = {int(n): v for n, v in r.items()}
        lines.append(" | ".join(([label.ljust(width)] if width else []) + [f"{values[n]:6.2f}" for n in ns]))
    return "\n".join(lines)


def prediction_reports(result: EvalResult, ds: BaseDataset, args) -> dict:
    """Recall curve and recalls at several radii, all from the predictions of one search."""
    preds, q_utms, db_utms = result.predictions, ds.queries_utms, ds.database_utms  # preds: Q×K
    thr = args.val_positive_dist_threshold
    curve = recalls_from_hits(hits_matrix(preds, q_utms, db_utms, thr), range(1, min(CURVE_MAX_N, preds.shape[1]) + 1))
    out = {"recall_curve": {str(n): v for n, v in curve.items()}}
    if args.recall_thresholds:
        by_thr = recalls_by_threshold(preds, q_utms, db_utms, sorted(set(args.recall_thresholds)), args.recall_values)
        out["recalls_by_threshold"] = {f"{t:g}": {str(n): v for n, v in r.items()} for t, r in by_thr.items()}
        logging.info(f"recalls by success radius on {ds}:\n"
                     f"{recall_table({}, 'radius', {f'{t} m': r for t, r in out['recalls_by_threshold'].items()})}")
    return out


def write_pictures(reports: dict, result: EvalResult, ds: BaseDataset, args, folder) -> dict:
    """recall_curve.png, recall_vs_threshold.png and the prediction pictures; returns {"predictions_saved": n}."""
    thr, title = args.val_positive_dist_threshold, f"{ds.dataset_name} {ds.split}"
    plot_recall_curve({int(n): v for n, v in reports["recall_curve"].items()}, folder / "recall_curve.png",
                      f"{title}: success within {thr:g} m")
    if "recalls_by_threshold" in reports:
        by_thr = {float(t): {int(n): v for n, v in r.items()} for t, r in reports["recalls_by_threshold"].items()}
        plot_recall_vs_threshold(by_thr, folder / "recall_vs_threshold.png", title)
    if not args.save_predictions:
        return {}
    top = result.predictions[:, :args.save_predictions]
    saved = save_prediction_pictures(ds.queries_paths, ds.database_paths, top,
                                     prediction_distances(top, ds.queries_utms, ds.database_utms), thr,
                                     folder / "predictions", args.save_only_wrong_predictions)
    logging.info(f"wrote {saved} prediction pictures to {folder / 'predictions'}")
    return {"predictions_saved": saved}


def untrained_model(args, ds: BaseDataset, device: str) -> torch.nn.Module:
    """The model of the architecture flags, not trained (dVGL's eval.py without --resume): --off_the_shelf, --pretrain
    (ImageNet, places, gldv2) or random weights. NetVLAD/CRN centroids come from k-means on local descriptors of
    the evaluated database, as train.py initializes them on the training database (no query is used). Random
    weights are drawn right after seeding with --seed."""
    off_the_shelf = args.off_the_shelf != "imagenet"
    if args.seed >= 0:  # random weights depend on --seed alone, not on what drew random numbers before
        torch.manual_seed(args.seed)
    model = build_model(args, pretrained=args.pretrain != "none" and not off_the_shelf)
    if off_the_shelf:
        load_off_the_shelf(model, args.off_the_shelf, arch_config(args)["backbone"])
    weights = f"--off_the_shelf {args.off_the_shelf}" if off_the_shelf else f"--pretrain {args.pretrain}"
    logging.info(f"untrained model ({weights}): {arch_summary(arch_config(args))}")
    model = prepare_model(model, device, args.precision)
    if getattr(model.aggregation, "needs_init", False):  # train.py's initialization flags: given, else their defaults
        init_aggregation(model, ds, argparse.Namespace(**{**vars(train_parser().parse_args([])), **vars(args)}), device)
    return model


def load_inputs(args, device: str) -> tuple[BaseDataset, list[torch.nn.Module]]:
    """The dataset and the --resume models (or the untrained one), checked (with --pca_file or --pca_split) before
    the run folder exists."""
    with profile.phase("datasets"):  # file names and image checks
        ds = BaseDataset(args.datasets_folder, args.dataset_name, args.split, tuple(args.test_resize or args.resize),
                         args.val_positive_dist_threshold, args.skip_corrupt, args.pixel_cache)
    check_recall_values(args.recall_values, [ds])
    with profile.phase("model"):
        models = [load_trained_model(path, device, args.precision, args) for path in args.resume or []]
        models = models or [untrained_model(args, ds, device)]
    if args.pca_file:
        PCA.load(args.pca_file)
    elif args.pca_dim:
        split_folder(args.datasets_folder, args.dataset_name, args.pca_split)
    return ds, models


def main(argv: list[str] | None = None) -> dict:
    """Evaluate and write results.json in logs/<save_dir>/<timestamp>/ (first, then the pictures)."""
    profile.begin()
    args = parse_eval_args(argv)
    check_finite_radii(val_positive_dist_threshold=args.val_positive_dist_threshold,
                       recall_thresholds=args.recall_thresholds)
    tune_allocator()
    setup_logging(None, args.log_level, hold=True)
    make_deterministic(args.seed)
    device = resolve_device(args)
    log_precision(args.precision, args.precision_requested, device)
    ds, models = load_inputs(args, device)
    logging.info(f"evaluating on {ds}")
    folder = new_run_folder(args.save_dir)  # the inputs are valid: a failed invocation leaves no folder
    log_to_folder(folder)
    logging.info(f"run folder: {folder}")
    log_args(args, folder)
    for line in startup_notes("eval", args, argv):
        logging.info(line)
    set_stop_hint(lambda e: f"run folder: {folder} (incomplete: no results.json); run the same command again")
    profile.mark_startup()
    model, variants = build_test_model(args, models, folder, device)
    with profile.phase("test"):
        result = run_test_method(model, ds, args.test_method, tuple(args.test_resize or args.resize),
                                 args.recall_values, InferenceConfig.from_args(args, device), args.majority_weight,
                                 max_k=max(CURVE_MAX_N, args.save_predictions))
    logging.info(f"recalls at {args.val_positive_dist_threshold} m on {ds}:\n{recall_table(result.recalls)}")
    results = {**result.info, **variants, "recalls": {str(k): v for k, v in result.recalls.items()},
               "checkpoint": args.resume[0] if len(args.resume or []) == 1 else args.resume, "args": vars(args),
               **prediction_reports(result, ds, args)}
    write_json(folder / "results.json", results)  # the numbers first: a failure in the pictures loses none
    set_stop_hint(lambda e: f"run folder: {folder}; results.json is complete, the pictures are not")
    with profile.phase("pictures"):
        results.update(write_pictures(results, result, ds, args, folder))
    results["time_profile"] = profile.current().summary()
    for line in profile.format_summary(results["time_profile"]):
        logging.info(line)
    write_json(folder / "results.json", results)
    return results


if __name__ == "__main__":
    run_cli(main)
