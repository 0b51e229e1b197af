"""Command-line arguments of train.py and eval.py, and their validation.

Arguments are never modified after parsing; derived values are computed where they are used.
"""
from __future__ import annotations

import argparse
import os
import sys

from cli.augmentation_flags import add_augmentation_args, validate_augmentation_args
from cli.errors import CliParser, UserError
from cli.errors import check as _check
from cli.static_names import constant_keys, registered_names
from cli.dvgl_compat import (DVGLArgumentParser, add_common_flags, add_train_flags, crn_net_lr,
                             default_notes, explicit_dests, ignored_notes, mirror_training_flags, validate_eval,
                             validate_train)
from cli.model_flags import add_arch_args, add_model_args, add_pretrain_arg
from cli.test_variant_flags import add_test_variant_args, validate_test_variant_args  # noqa: F401 (API)



class _Parser(CliParser, DVGLArgumentParser):
    """The parser of train.py and eval.py: dVGL's `--opt=v1 v2` form, and errors as one line (commons.CliParser)."""


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--datasets_folder", default=os.environ.get("DATASETS_FOLDER"),
                   help="folder holding <dataset_name>/images/...; defaults to $DATASETS_FOLDER")
    g.add_argument("--dataset_name", default="pitts30k", help="e.g. pitts30k, st_lucia, synthetic")
    g.add_argument("--resize", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                   help="training (and default evaluation) image size")
    g.add_argument("--test_resize", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="evaluation image size; defaults to --resize")
    g.add_argument("--val_positive_dist_threshold", "--val_positives_dist_threshold", type=float,
                   default=25.0, dest="val_positive_dist_threshold",
                   help="metres: evaluation success radius and negatives exclusion radius")
    g.add_argument("--recall_values", type=int, nargs="+", default=[1, 5, 10, 20])
    g.add_argument("--skip_corrupt", action="store_true", help="drop unreadable images with a warning")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                   help="autocast precision for forward passes (bf16: fast on CPUs with AVX-512 BF16/AMX, and GPUs; "
                        "auto: bf16 where the device runs it natively, else fp32; the choice is stored in the run)")
    g.add_argument("--num_workers", type=int, default=None,
                   help="data-loading processes; default: 0 on a CPU (the model keeps every core, faster there: "
                        "benchmark.py's extract_inline), 2 on CUDA")
    g.add_argument("--infer_batch_size", type=int, default=16)
    g.add_argument("--pixel_cache", default=None, metavar="DIR",
                   help="folder of decoded-pixel caches: each split's uint8 images at its size in one memory-mapped "
                        "file (H·W·3 bytes per image, 0.92 MB at 480×640), built once, reused by every refresh, "
                        "epoch and run, rebuilt when a file changes; same pixels as decoding (README: Speed)")
    g.add_argument("--seed", type=int, default=0, help="-1 for a non-deterministic run")
    g.add_argument("--save_dir", "--exp_name", dest="save_dir", default="default",
                   help="runs are written to logs/<save_dir>/<timestamp>/ (--exp_name: project_vg's name)")
    g.add_argument("--index", choices=["flat", "ivfpq", "hnsw"], default="flat", help="faiss index kind")
    g.add_argument("--log_level", choices=["debug", "info", "warning"], default="info")


def _train_args(p: argparse.ArgumentParser) -> None:
    names = registered_names()
    g = p.add_argument_group("training")
    g.add_argument("--train_batch_size", type=int, default=4, help="queries per batch")
    g.add_argument("--negs_num_per_query", type=int, default=10)
    g.add_argument("--neg_samples_num", type=int, default=1000, help="random database candidates per query")
    g.add_argument("--cache_refresh_rate", type=int, default=1000, help="queries per cache refresh")
    g.add_argument("--queries_per_epoch", type=int, default=5000)
    g.add_argument("--epochs_num", type=int, default=1000)
    g.add_argument("--patience", type=int, default=3, help="epochs without R@5 gain before stopping")
    g.add_argument("--mining", choices=names["miner"], default="full")
    g.add_argument("--criterion", choices=names["criterion"], default="triplet")
    g.add_argument("--margin", type=float, default=None,
                   help="margin of triplet/contrastive; default: the loss's own (triplet 0.1 as dVGL, contrastive 0.5)")
    g.add_argument("--criterion_args", nargs="+", default=[], metavar="KEY=VALUE",
                   help="other settings of the loss, e.g. alpha=2 beta=50 base=0.5 for multi_similarity")
    g.add_argument("--train_positives_dist_threshold", type=float, default=10.0)
    g.add_argument("--optim", choices=sorted(constant_keys("training.optim", "OPTIMIZERS")), default="adam")
    g.add_argument("--lr", type=float, default=1e-5)
    g.add_argument("--attention_lr", "--lr_crn_layer", dest="attention_lr", type=float, default=None,
                   help="lr of attention layers (CRN, CBAM); --lr_crn_layer: dVGL's name")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=0.0)
    g.add_argument("--scheduler", choices=sorted(constant_keys("training.optim", "SCHEDULERS")), default="none")
    g.add_argument("--step_size", type=int, default=5, help="epochs between lr drops (step scheduler)")
    g.add_argument("--gamma", type=float, default=0.5, help="lr factor (step scheduler)")
    g.add_argument("--warmup_epochs", type=float, default=0.0, help="linear lr warm-up length")
    g.add_argument("--resume", default=None, help="last_model.pth of a run to continue")
    g.add_argument("--init_from", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (e.g. a NetVLAD run for --aggregation crn); "
                        "parameters it lacks keep their initialization")
    g.add_argument("--netvlad_alpha_ratio", type=float, default=100.0, metavar="R",
                   help="NetVLAD initialization: alpha makes a local descriptor's soft assignment to its nearest "
                        "centroid R times that to the second nearest, on average (100 as in the NetVLAD paper; a "
                        "softer 10 suits feature maps of a few cells, see README: NetVLAD on small images)")
    g.add_argument("--rolling_period", type=int, default=4, metavar="N",
                   help="--mining rolling: each database descriptor is re-encoded every N cache refreshes")


def train_parser() -> argparse.ArgumentParser:
    """Parser of train.py."""
    p = _Parser(description="Train a visual geo-localization model",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _data_args(p)
    _runtime_args(p)
    add_model_args(p)
    _train_args(p)
    add_augmentation_args(p)
    add_train_flags(p)
    add_common_flags(p)
    return p


def eval_parser() -> argparse.ArgumentParser:
    """Parser of eval.py."""
    p = _Parser(description="Evaluate geo-localization checkpoints, or an untrained (off-the-shelf) model",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           epilog="train.py flags are accepted and ignored, as with dVGL's shared parser")
    _data_args(p)
    _runtime_args(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--resume", nargs="+", default=None,
                   help="checkpoint(s); several make an ensemble; without it, the untrained model of the "
                        "architecture flags is evaluated")
    g.add_argument("--split", default="test")
    g.add_argument("--save_predictions", type=int, default=0, metavar="N",
                   help="write one picture per query with its top-N predictions into <run>/predictions/")
    g.add_argument("--save_only_wrong_predictions", action="store_true",
                   help="with --save_predictions: only queries whose top-1 prediction is wrong")
    g.add_argument("--recall_thresholds", type=float, nargs="+", default=None, metavar="M",
                   help="also compute recall@N at these success radii (metres), e.g. 5 10 15 20 25 50 100")
    add_test_variant_args(p)
    g = p.add_argument_group("architecture: checked against the checkpoint; without --resume, the model evaluated")
    add_arch_args(g, suppress=True)
    add_pretrain_arg(g, off_the_shelf=True)
    add_common_flags(p, pca_folder=True)
    p.training_only_dests = mirror_training_flags(p, train_parser())
    p.set_defaults(resize=None)  # None: the size the checkpoint was trained and tested at (parse_eval_args)
    for action in p._actions:
        if action.dest == "resize":
            action.help = "image size; default: the first checkpoint's training size (480 640 if it has none)"
        elif action.dest == "test_resize":
            action.help = "evaluation image size; default: --resize, or the first checkpoint's --test_resize"
    return p


def exit_on_help(script: str) -> None:
    """`python train.py --help` / `python eval.py -h`: print the help and exit. The scripts call it before their
    heavy imports (torch: seconds); the parsers themselves import no torch (cli/static_names.py)."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        (train_parser() if script == "train" else eval_parser()).parse_args(["--help"])


def validate_common(args: argparse.Namespace) -> None:
    """Checks shared by training and evaluation."""
    _check(all(v > 0 for v in args.resize), f"--resize must be positive, got {args.resize}")
    _check(args.test_resize is None or all(v > 0 for v in args.test_resize),
           f"--test_resize must be positive, got {args.test_resize}")
    _check(args.val_positive_dist_threshold > 0, "--val_positive_dist_threshold must be > 0 metres")
    _check(all(n > 0 for n in args.recall_values), "--recall_values must be positive integers")
    _check(args.num_workers >= 0, "--num_workers must be >= 0")
    _check(args.infer_batch_size > 0, "--infer_batch_size must be > 0")
    _check(args.seed >= -1, "--seed must be >= 0, or -1 for a non-deterministic run")
    _check(not (args.precision == "fp16" and resolve_device(args) == "cpu"),
           "--precision fp16 needs CUDA; on CPU use --precision bf16 or fp32")


def validate_train_args(args: argparse.Namespace) -> None:
    """Raise UserError for out-of-range or mutually inconsistent training flags."""
    validate_common(args)
    for name in ("train_batch_size", "negs_num_per_query", "neg_samples_num", "cache_refresh_rate",
                 "queries_per_epoch", "epochs_num", "patience", "netvlad_clusters"):
        _check(getattr(args, name) > 0, f"--{name} must be > 0, got {getattr(args, name)}")
    _check(args.lr > 0, f"--lr must be > 0, got {args.lr}")
    _check(args.queries_per_epoch % args.cache_refresh_rate == 0,
           f"--queries_per_epoch ({args.queries_per_epoch}) must be a multiple of --cache_refresh_rate "
           f"({args.cache_refresh_rate})")
    _check(args.neg_samples_num >= args.negs_num_per_query,
           f"--negs_num_per_query ({args.negs_num_per_query}) cannot exceed --neg_samples_num "
           f"({args.neg_samples_num}) candidates")
    _check(args.train_positives_dist_threshold <= args.val_positive_dist_threshold,
           "--train_positives_dist_threshold must not exceed --val_positive_dist_threshold")
    _check(args.fc_output_dim is None or args.fc_output_dim > 0, "--fc_output_dim must be > 0")
    _check(args.attention_lr is None or args.attention_lr > 0, "--attention_lr must be > 0")
    _check(args.rolling_period > 0, f"--rolling_period must be > 0, got {args.rolling_period}")
    _check(args.netvlad_alpha_ratio > 1, f"--netvlad_alpha_ratio must be > 1, got {args.netvlad_alpha_ratio}")
    _check(args.gem_p > 0, f"--gem_p must be > 0, got {args.gem_p}")
    _check(args.rmac_levels > 0, f"--rmac_levels must be > 0, got {args.rmac_levels}")
    validate_train(args)
    from model.backbones import input_multiple  # the components import torch: here, not at the top (--help)
    from training.losses import criterion_from_args
    from training.optim import validate_optim_args
    criterion_from_args(args)  # unknown or malformed loss settings stop here, before anything is read
    validate_optim_args(args)
    validate_augmentation_args(args)
    m = input_multiple(args.backbone)
    _check(all(v % m == 0 for v in [*args.resize, *(args.test_resize or [])]),
           f"--backbone {args.backbone} needs image sides multiple of {m}; got --resize {args.resize}"
           f"{f' --test_resize {args.test_resize}' if args.test_resize else ''}, change them")


def resolve_device(args: argparse.Namespace) -> str:
    """The device to use: --device, or cuda when available."""
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _reparse(p: argparse.ArgumentParser, argv: list[str] | None, **defaults) -> argparse.Namespace:
    """argv parsed again with new defaults: flags given on the command line keep their values."""
    p.set_defaults(**defaults)
    return p.parse_args(argv)


def _with_device_defaults(p: argparse.ArgumentParser, args: argparse.Namespace,
                          argv: list[str] | None) -> argparse.Namespace:
    """args parsed again with the values that depend on the device: --num_workers (default 0 on a CPU, 2 on CUDA)
    and --precision auto (bf16 where the device runs it natively, else fp32; `precision_requested` keeps "auto")."""
    from commons import resolve_precision
    device = resolve_device(args)
    if args.num_workers is None:
        args = _reparse(p, argv, num_workers=0 if device == "cpu" else 2)
    requested = getattr(args, "precision_requested", None) or args.precision
    return argparse.Namespace(**{**vars(args), "precision": resolve_precision(args.precision, device),
                                 "precision_requested": requested})


def startup_notes(script: str, args: argparse.Namespace, argv: list[str] | None) -> list[str]:
    """Log lines for the start of train.py / eval.py: each default in effect that differs from dVGL's and was not
    set, and the flags accepted without effect (README: Coming from the VG benchmark)."""
    p = train_parser() if script == "train" else eval_parser()
    training_only = getattr(p, "training_only_dests", set())
    given = explicit_dests(p, argv)
    return default_notes(script, args, given, resolve_device(args)) + ignored_notes(script, args, given, training_only)


def parse_train_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate train.py arguments.

    With --resume, flags not given on the command line take the values stored in the checkpoint, and given flags
    that change the run (all but util.RESUME_SAFE_KEYS) are refused, before anything is written.
    """
    from util import check_resume_compatible, load_checkpoint  # here: util imports torch, which --help needs not
    p = train_parser()
    args = p.parse_args(argv)
    if args.resume:
        stored = load_checkpoint(args.resume)["args"]
        args = _reparse(p, argv, **{k: v for k, v in stored.items() if k in vars(args) and k != "resume"})
        check_resume_compatible(stored, vars(args))
    if args.lr_crn_net is not None and args.aggregation == "crn":  # dVGL: the lr of the non-CRN parameters
        args = _reparse(p, argv, lr=crn_net_lr(args, explicit_dests(train_parser(), argv)))
    args = _with_device_defaults(p, args, argv)
    validate_train_args(args)
    return args


def parse_eval_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate eval.py arguments.

    Without --resize and --test_resize, images are encoded at the size the (first) checkpoint was trained and tested
    at, as its final test in train.py did; with either flag, the flags given decide.
    """
    p = eval_parser()
    args = p.parse_args(argv)
    validate_test_variant_args(args)  # the flags first: no checkpoint is read for a bad flag
    validate_eval(args)
    _check(args.save_predictions >= 0, f"--save_predictions must be >= 0 images, got {args.save_predictions}")
    _check(not args.save_only_wrong_predictions or args.save_predictions > 0,
           "--save_only_wrong_predictions needs --save_predictions N (N > 0)")
    _check(args.recall_thresholds is None or all(t > 0 for t in args.recall_thresholds),
           f"--recall_thresholds must be > 0 metres, got {args.recall_thresholds}")
    if args.resize is None:
        stored = {}
        if args.test_resize is None and args.resume:
            from util import load_checkpoint  # here: util imports torch, which --help needs not
            stored = load_checkpoint(args.resume[0])["args"]
        args = _reparse(p, argv, resize=stored.get("resize") or [480, 640], test_resize=stored.get("test_resize"))
    args = _with_device_defaults(p, args, argv)
    validate_common(args)
    return args
