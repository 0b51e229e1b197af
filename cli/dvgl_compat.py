"""Command lines of the VG benchmark (dVGL, gmberton/deep-visual-geo-localization-benchmark) and of the course
skeleton (gmberton/project_vg), flag for flag: aliases, dVGL flags accepted (or accepted and ignored), refusals that
name the equivalent, and start-up notes where a default that differs from dVGL's is in effect (README: Coming from
the VG benchmark). parser.py builds the parsers with these pieces.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from cli.arch import ARCH_DEFAULTS
from cli.errors import UserError
from cli.errors import check as _check
from cli.static_names import constant_keys

# dVGL's defaults that differ from this toolkit's (see the README table for why each was kept).
DVGL_DEFAULTS = {"aggregation": "netvlad", "mining": "partial", "num_workers": 8, "l2": "before_pool"}
DVGL_CRN_LRS = {"lr_crn_layer": 5e-3, "lr_crn_net": 5e-4}
# dVGL's earlier backbone names (its README still uses r101l4): ResNet-D through layer L = resnetDconv(L+1).
BACKBONE_ALIASES = {f"r{depth}l{layer}": f"resnet{depth}conv{layer + 1}" for depth in (18, 50, 101) for layer in (3, 4)}
# Flags of project_vg forks, refused with the equivalent here.
REFUSED_FLAGS = {"--use_netvlad": "--aggregation netvlad", "--use_gem": "--aggregation gem"}
TRAIN_IGNORED = ("pca_dim", "pca_dataset_folder", "majority_weight", "off_the_shelf")  # eval.py's business
UNTRAINED_EVAL_USES = ("netvlad_alpha_ratio",)  # train.py flags that eval.py's untrained NetVLAD does use
TEST_METHODS = constant_keys("retrieval.query_methods", "TEST_METHODS")  # eval.py's --test_method choices
SHALLOW_AGGREGATIONS = constant_keys("model.aggregations_dvgl", "SHALLOW_AGGREGATIONS")  # those --l2 applies to


def backbone_name(value: str) -> str:
    """argparse type of --backbone: dVGL's earlier names (r101l4: ResNet-101 through layer4) as the current ones."""
    return BACKBONE_ALIASES.get(value, value)


class RefusedFlag(argparse.Action):
    """A flag of another code base: refused at once, naming this toolkit's equivalent."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        raise UserError(f"{option_string} is not a flag of this toolkit; use {REFUSED_FLAGS[option_string]}")


class PcaFolderAction(argparse.Action):
    """eval.py's --pca_dataset_folder <dataset>/images/<split> (dVGL): stored, and its last part sets --pca_split."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, "pca_split", Path(values).name)


class DVGLArgumentParser(argparse.ArgumentParser):
    """ArgumentParser that also reads `--opt=v1 v2` for options taking several values (dVGL's README writes
    `--resize=384 512`, which plain argparse refuses)."""

    def parse_known_args(self, args: list[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        multi = {s for a in self._actions if a.nargs in ("+", "*") or (isinstance(a.nargs, int) and a.nargs > 1)
                 for s in a.option_strings}
        argv = []
        for token in sys.argv[1:] if args is None else args:
            name, eq, value = str(token).partition("=")
            argv += [name, value] if eq and name in multi else [token]
        return super().parse_known_args(argv, namespace)


def add_common_flags(p: argparse.ArgumentParser, pca_folder: bool = False) -> None:
    """dVGL flags of both scripts that need no counterpart here, the refused project_vg flags, and for eval.py
    dVGL's --pca_dataset_folder."""
    g = p.add_argument_group("VG benchmark (dVGL) compatibility")
    if pca_folder:
        g.add_argument("--pca_dataset_folder", action=PcaFolderAction, default=None, metavar="DATASET/images/SPLIT",
                       help="dVGL's form of --pca_split: the PCA is fitted on that split's database")
    g.add_argument("--efficient_ram_testing", action="store_true",
                   help="accepted, no effect: evaluation keeps only descriptors in memory, streaming the images")
    for flag in REFUSED_FLAGS:
        g.add_argument(flag, nargs="?", action=RefusedFlag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """dVGL's shared-parser flags that train.py accepts: --test_method (hard_resize only) and --lr_crn_net;
    the PCA and off-the-shelf flags are accepted and ignored, as by dVGL's train.py."""
    g = p.add_argument_group("VG benchmark (dVGL) flags of eval.py, accepted by train.py")
    g.add_argument("--test_method", choices=TEST_METHODS, default="hard_resize",
                   help="the final test always uses hard_resize; other methods: eval.py --test_method")
    g.add_argument("--majority_weight", type=float, default=0.01, help="ignored (eval.py)")
    g.add_argument("--pca_dim", type=int, default=None, help="ignored (eval.py)")
    g.add_argument("--pca_dataset_folder", default=None, help="ignored (eval.py)")
    g.add_argument("--off_the_shelf", default="imagenet", help="ignored (eval.py)")
    g.add_argument("--lr_crn_net", type=float, default=None,
                   help="dVGL: with --aggregation crn, the lr of every non-CRN parameter (= --lr there)")


def mirror_training_flags(p: argparse.ArgumentParser, train_p: argparse.ArgumentParser) -> set[str]:
    """Add to eval.py's parser every train.py flag it lacks, absent unless given: dVGL's two scripts share one
    parser, so its eval command lines may carry training flags. Returns their dests (eval.py ignores them)."""
    own = {s for a in p._actions for s in a.option_strings}
    g = p.add_argument_group("train.py flags (accepted as by dVGL's shared parser, ignored by eval.py)")
    dests = set()
    for action in train_p._actions:
        if action.option_strings and not own & set(action.option_strings):
            clone = copy.copy(action)
            clone.default, clone.help = argparse.SUPPRESS, argparse.SUPPRESS
            g._add_action(clone)
            dests.add(action.dest)
    return dests


def explicit_dests(p: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests set on the command line argv (argparse abbreviations and aliases included). Changes the defaults
    of p: pass a freshly built parser."""
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def crn_net_lr(args: argparse.Namespace, given: set[str]) -> float:
    """dVGL's --lr_crn_net of a --aggregation crn run: the lr of every non-CRN parameter, which is --lr here
    (refused when --lr is also given with another value); given: the dests set on the command line."""
    _check("lr" not in given or args.lr == args.lr_crn_net,
           f"--lr {args.lr} and --lr_crn_net {args.lr_crn_net} both set the lr of the non-CRN parameters; pass one")
    return args.lr_crn_net


def torchvision_arch(backbone: str) -> str:
    """The torchvision architecture of a backbone name (resnet50conv4 -> resnet50), as in dVGL's weight files."""
    return backbone.split("conv")[0]


def validate_train(args: argparse.Namespace) -> None:
    """train.py checks of the dVGL flags (before anything is written)."""
    from model import external_weights  # here, not at the top: it imports torch, which --help needs not
    m = args.test_method
    _check(m == "hard_resize", f"train.py tests its best model with hard_resize; for --test_method {m}, evaluate it "
                               f"after training: eval.py --resume logs/{args.save_dir}/<run>/best_model.pth "
                               f"--test_method {m}")
    _check(args.off_the_shelf == "imagenet", f"--off_the_shelf {args.off_the_shelf} is an eval.py flag: eval.py "
                                             f"--off_the_shelf {args.off_the_shelf} --backbone resnet101conv5 "
                                             f"--aggregation gem --fc_output_dim 2048")
    _check(args.freeze_te is None or not args.train_all_layers, "--freeze_te and --train_all_layers contradict; "
                                                               "pass one")
    validate_architecture(vars(args))
    if not args.resume and args.pretrain in external_weights.PRETRAIN_SOURCES:
        external_weights.pretrained_net_path(torchvision_arch(args.backbone), args.pretrain)


def validate_architecture(arch: dict) -> None:
    """--trunc_te / --freeze_te checks on the effective architecture flags (train.py, and eval.py's fresh model)."""
    from model.backbones import TRANSFORMER_BACKBONES  # here: filled as backbones register (torch)
    trunc, freeze = arch.get("trunc_te"), arch.get("freeze_te")
    _check(trunc is None or trunc >= 1, f"--trunc_te {trunc} would keep no transformer block (dVGL ignores 0); "
                                        f"omit --trunc_te to keep them all")
    _check(freeze is None or freeze >= -1, f"--freeze_te must be >= -1 (-1: every block trains), got {freeze}")
    _check((trunc is None and freeze is None) or arch["backbone"] in TRANSFORMER_BACKBONES,
           f"--trunc_te/--freeze_te apply to transformer backbones ({', '.join(sorted(TRANSFORMER_BACKBONES))}), "
           f"not {arch['backbone']}; drop them")


def validate_eval(args: argparse.Namespace) -> None:
    """eval.py checks of the dVGL flags: off-the-shelf and other-source weights exist, --pca_dataset_folder maps."""
    from model import external_weights
    arch = {k: getattr(args, k, d) for k, d in ARCH_DEFAULTS.items()}  # external_weights: torch, so here
    if not args.resume:
        validate_architecture(arch)
    if args.off_the_shelf != "imagenet":
        _check(not args.resume, f"--off_the_shelf {args.off_the_shelf} and --resume both give the weights; pass one")
        external_weights.check_off_the_shelf(args.off_the_shelf, arch)
    elif not args.resume and args.pretrain in external_weights.PRETRAIN_SOURCES:
        external_weights.pretrained_net_path(torchvision_arch(arch["backbone"]), args.pretrain)
    folder = args.pca_dataset_folder
    if folder is not None:
        parts = Path(folder).parts
        _check(len(parts) == 3 and parts[:2] == (args.dataset_name, "images") and parts[2] == args.pca_split,
               f"--pca_dataset_folder {folder}: the PCA is fitted here on the database of a split of the evaluated "
               f"dataset ({args.dataset_name}/images/<split>, i.e. --pca_split <split>); for another dataset, fit it "
               f"once with eval.py --dataset_name <name> --pca_dim N --pca_split <split> and pass its pca.npz "
               f"with --pca_file")
        _check(args.pca_dim is not None or args.pca_file is not None,
               "--pca_dataset_folder needs --pca_dim N (or --pca_file)")


def default_notes(script: str, args: argparse.Namespace, given: set[str], device: str) -> list[str]:
    """One line per default in effect that differs from dVGL's and was not set on the command line."""
    if script == "train" and args.resume:  # the flags are the stored run's
        return []
    fresh = not args.resume
    value = {k: getattr(args, k, ARCH_DEFAULTS.get(k)) for k in DVGL_DEFAULTS}
    applies = {"num_workers": True, "aggregation": fresh, "mining": script == "train",
               "l2": fresh and value["aggregation"] in SHALLOW_AGGREGATIONS}
    notes = [f"note: --{k} {value[k]} is this toolkit's default{f' on {device}' if k == 'num_workers' else ''}; "
             f"dVGL's is {v} (pass --{k} {v} for it; README: Coming from the VG benchmark)"
             for k, v in DVGL_DEFAULTS.items() if applies[k] and k not in given and value[k] != v]
    if script == "train" and value["aggregation"] == "crn" and not given & {"attention_lr", "lr_crn_net"}:
        notes.append(f"note: --aggregation crn trains the CRN layer and the rest at --lr {args.lr}; dVGL's defaults "
                     f"are --lr_crn_layer {DVGL_CRN_LRS['lr_crn_layer']} and --lr_crn_net {DVGL_CRN_LRS['lr_crn_net']}")
    if script == "eval":
        notes.append(f"note: results go to logs/{args.save_dir}/<timestamp>/ (dVGL's eval.py writes to "
                     f"test/{args.save_dir}/<timestamp>/)")
    return notes


def ignored_notes(script: str, args: argparse.Namespace, given: set[str], training_only: set[str]) -> list[str]:
    """One line naming the flags that were given but have no effect in this script, with why."""
    used = set(UNTRAINED_EVAL_USES) if script == "eval" and not args.resume else set()
    why = {d: "a train.py flag" for d in given & training_only - used}
    if script == "train":
        why.update({d: "an eval.py flag" for d in given & set(TRAIN_IGNORED)})
        if "lr_crn_net" in given and args.aggregation != "crn":
            why["lr_crn_net"] = "only used with --aggregation crn"
    if "efficient_ram_testing" in given:
        why["efficient_ram_testing"] = "evaluation here keeps only descriptors in memory, streaming the images"
    if not why:
        return []
    return [f"accepted, no effect in {script}.py: " + "; ".join(f"--{d} ({why[d]})" for d in sorted(why))]
