"""PCA (optionally with whitening) of global descriptors, as used by eval.py --pca_dim / --pca_file.

Fitted on the database descriptors of a chosen split, then applied to database and queries:
y = L2((x - mean) · Wᵀ), W = components (D_out×D_in), divided row-wise by sqrt(variance) when whitening.
Stored as an .npz of plain arrays (np.load(..., allow_pickle=False) reads it; no code runs on load).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runs.atomic_files import atomic_write
from commons import UserError
from datasets_ws import BaseDataset
from retrieval.evaluation import InferenceConfig, extract_features

WHITEN_EPS = 1e-9  # variances are clamped below at WHITEN_EPS · largest variance before whitening
PCA_KEYS = ("mean", "components", "explained_variance", "whiten")


@dataclass
class PCA:
    """A fitted PCA: mean (D_in), orthonormal components (D_out×D_in), explained variance (D_out), whiten flag."""
    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    whiten: bool

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[0])

    def projection(self) -> np.ndarray:
        """The D_out×D_in matrix applied to centered descriptors (whitening folded in)."""
        if not self.whiten:
            return self.components.astype(np.float32)
        var = np.maximum(self.explained_variance, WHITEN_EPS * self.explained_variance.max())
        return (self.components / np.sqrt(var)[:, None]).astype(np.float32)

    def transform(self, x: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Descriptors N×D_in → N×D_out float32, L2-normalized unless normalize=False."""
        y = (np.asarray(x, dtype=np.float32) - self.mean.astype(np.float32)) @ self.projection().T
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12) if normalize else y

    def save(self, path: str | Path) -> None:
        """Write the PCA to an .npz file, atomically (a full disk or Ctrl-C leaves no truncated file)."""
        atomic_write(path, lambda f: np.savez(f, mean=self.mean, components=self.components,
                                              explained_variance=self.explained_variance, whiten=np.array(self.whiten)))

    @classmethod
    def load(cls, path: str | Path) -> "PCA":
        """Read a PCA written by `save`, with a clear error for missing or foreign files."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"PCA file {path} not found; pass the pca.npz of an earlier eval.py run, "
                            f"or fit one with --pca_dim")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in PCA_KEYS}
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{path} is not a PCA file written by eval.py ({type(e).__name__}); "
                            f"fit a new one with --pca_dim") from None
        return cls(arrays["mean"], arrays["components"], arrays["explained_variance"], bool(arrays["whiten"]))


def fit_pca(descriptors: np.ndarray, dim: int, whiten: bool = False, seed: int = 0) -> PCA:
    """Fit a `dim`-component PCA on descriptors N×D (sklearn picks an exact or randomized solver)."""
    from sklearn.decomposition import PCA as SkPCA  # lazy: start-up time

    n, d = descriptors.shape
    if dim > min(n, d):
        raise UserError(f"--pca_dim {dim} exceeds what {n} descriptors of size {d} can give (at most {min(n, d)}); "
                        f"lower --pca_dim or fit on a split with more database images (--pca_split)")
    sk = SkPCA(n_components=dim, random_state=seed).fit(np.asarray(descriptors, dtype=np.float32))
    logging.info(f"PCA {d} -> {dim}{' + whitening' if whiten else ''} fitted on {n} descriptors; "
                 f"explained variance {sk.explained_variance_ratio_.sum() * 100:.1f}%")
    return PCA(sk.mean_.astype(np.float32), sk.components_.astype(np.float32),
               sk.explained_variance_.astype(np.float32), whiten)


class PCAHead(nn.Module):
    """A model followed by a PCA: images B×3×H×W → B×D_out L2-normalized descriptors."""

    def __init__(self, model: nn.Module, pca: PCA):
        super().__init__()
        if pca.in_dim != model.out_dim:
            raise UserError(f"the PCA expects {pca.in_dim}-D descriptors but the model gives {model.out_dim}-D; "
                            f"use a --pca_file fitted with the same model(s) and test options, or refit with --pca_dim")
        self.model, self.out_dim = model, pca.out_dim
        self.register_buffer("mean", torch.from_numpy(pca.mean.astype(np.float32)))
        self.register_buffer("projection", torch.from_numpy(pca.projection()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = self.model(x).float()
        with torch.autocast(device_type=desc.device.type, enabled=False):  # project in fp32 under bf16/fp16
            return F.normalize((desc - self.mean) @ self.projection.T, p=2, dim=1)


def prepare_pca(model: nn.Module, args, folder: Path, device: str) -> tuple[nn.Module, dict]:
    """Wrap model with the PCA of --pca_file, or fit one on the --pca_split database and save it to folder/pca.npz.

    Returns the wrapped model (moved to device) and a summary for results.json.
    """
    if args.pca_file:
        pca, path = PCA.load(args.pca_file), Path(args.pca_file)
        if args.pca_dim and args.pca_dim != pca.out_dim:
            raise UserError(f"--pca_dim {args.pca_dim} differs from the {pca.out_dim} dimensions of {path}; "
                            f"drop --pca_dim or refit")
    else:
        ds = BaseDataset(args.datasets_folder, args.dataset_name, args.pca_split,
                         tuple(args.test_resize or args.resize), args.val_positive_dist_threshold, args.skip_corrupt)
        feats = extract_features(model, ds, range(ds.database_num), InferenceConfig.from_args(args, device),
                                 desc=f"encoding {args.pca_split} database for PCA")
        pca, path = fit_pca(feats, args.pca_dim, args.pca_whiten, seed=max(args.seed, 0)), folder / "pca.npz"
        pca.save(path)
        logging.info(f"PCA saved to {path}; reuse it with --pca_file {path}")
    info = {"file": str(path), "in_dim": pca.in_dim, "out_dim": pca.out_dim, "whiten": pca.whiten,
            "fitted_on": None if args.pca_file else f"{args.dataset_name}/{args.pca_split} database"}
    return PCAHead(model, pca).to(device), info
