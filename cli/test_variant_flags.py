"""eval.py's test-time variant flags (ensembles, multi-scale, query test methods, PCA) and their checks."""
from __future__ import annotations

import argparse

from cli.dvgl_compat import TEST_METHODS
from cli.errors import check as _check


def add_test_variant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("test-time variants (README: Variations beyond the baselines)")
    g.add_argument("--ensemble", choices=["concat", "mean"], default="concat",
                   help="with several --resume: concatenate or average their L2-normalized descriptors")
    g.add_argument("--multiscale", type=float, nargs="+", default=[1.0], metavar="S",
                   help="encode every image at these scales, e.g. 1 0.707 0.5")
    g.add_argument("--multiscale_combine", choices=["mean", "concat"], default="mean")
    g.add_argument("--test_method", choices=TEST_METHODS, default="hard_resize",
                   help="how queries are processed (the database is always resized to --test_resize/--resize)")
    g.add_argument("--majority_weight", type=float, default=0.01, help="distance bonus per vote (maj_voting)")
    g.add_argument("--pca_dim", type=int, default=None, help="reduce descriptors with a PCA fitted on --pca_split")
    g.add_argument("--pca_whiten", action="store_true", help="whiten the PCA components")
    g.add_argument("--pca_split", default="train", help="split whose database images are encoded to fit the PCA")
    g.add_argument("--pca_file", default=None, help="reuse the pca.npz of an earlier eval run instead of fitting")


def validate_test_variant_args(args: argparse.Namespace) -> None:
    """Checks of the ensemble / multi-scale / test-method / PCA flags of eval.py."""
    _check(all(s > 0 for s in args.multiscale), f"--multiscale scales must be > 0, got {args.multiscale}")
    _check(args.majority_weight >= 0, f"--majority_weight must be >= 0, got {args.majority_weight}")
    _check(args.pca_dim is None or args.pca_dim > 0, f"--pca_dim must be > 0, got {args.pca_dim}")
    _check(not args.pca_whiten or (args.pca_dim and not args.pca_file),
           "--pca_whiten applies when fitting a PCA: pass it with --pca_dim and without --pca_file")
