"""Model flags shared by train.py and eval.py (parser.py assembles the parsers): architecture, starting weights,
freezing. eval.py takes the architecture flags without defaults, to check them against a checkpoint.
"""
from __future__ import annotations

import argparse

from cli.arch import ARCH_DEFAULTS
from cli.dvgl_compat import backbone_name
from cli.static_names import constant_keys, registered_names



def add_arch_args(g: argparse._ActionsContainer, suppress: bool) -> None:
    """Architecture flags; with suppress (eval.py) they are absent unless given: the checkpoint's architecture, or
    ARCH_DEFAULTS for a fresh model."""
    names = registered_names()  # read from the sources: importing the components would import torch
    d = {k: argparse.SUPPRESS if suppress else v for k, v in ARCH_DEFAULTS.items()}
    g.add_argument("--backbone", type=backbone_name, choices=names["backbone"], default=d["backbone"])
    g.add_argument("--aggregation", choices=names["aggregation"], default=d["aggregation"])
    g.add_argument("--netvlad_clusters", type=int, default=d["netvlad_clusters"])
    g.add_argument("--fc_output_dim", type=int, default=d["fc_output_dim"], help="optional linear projection + L2")
    g.add_argument("--attention", choices=names["attention"], default=d["attention"])
    g.add_argument("--l2", choices=constant_keys("model.aggregations_dvgl", "L2_MODES"), default=d["l2"],
                   help="mac/spoc/gem/rmac: L2 after pooling, of each local descriptor before it, or none (dVGL)")
    g.add_argument("--gem_p", type=float, default=d["gem_p"], help="GeM's initial exponent p (learned)")
    g.add_argument("--rmac_levels", type=int, default=d["rmac_levels"], help="R-MAC's number of region scales")
    g.add_argument("--trunc_te", type=int, default=d["trunc_te"], metavar="N",
                   help="transformer backbones: keep only the first N blocks")


def add_pretrain_arg(g: argparse._ActionsContainer, off_the_shelf: bool = False) -> None:
    """--pretrain (alias --pretrained, dVGL's README spelling): the starting weights; for eval.py also dVGL's
    --off_the_shelf networks."""
    g.add_argument("--pretrain", "--pretrained", dest="pretrain", choices=["imagenet", "none", "places", "gldv2"],
                   default="imagenet", help="starting weights; places/gldv2: files of the VG benchmark authors in "
                                            "data/pretrained_nets/ (README: Coming from the VG benchmark)")
    if off_the_shelf:
        g.add_argument("--off_the_shelf", choices=constant_keys("model.external_weights", "OFF_THE_SHELF"),
                       default="imagenet",
                       help="without --resume: the weights of a landmark-retrieval network (dVGL)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """train.py's model group: architecture, starting weights and what is frozen."""
    g = p.add_argument_group("model")
    add_arch_args(g, suppress=False)
    add_pretrain_arg(g)
    g.add_argument("--train_all_layers", action="store_true",
                   help="train the whole backbone (by default, blocks before the last are frozen when pretrained)")
    g.add_argument("--freeze_te", type=int, default=None, metavar="N",
                   help="transformer backbones: freeze everything up to block N (0-based; -1: only the stem)")
