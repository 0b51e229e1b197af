"""PCA of descriptors: isometry at full dimension, projection vs an eigen-decomposition, whitening, storage, eval."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import eval as eval_cli
from commons import UserError
from network import build_model
from retrieval.pca import PCA, PCAHead, fit_pca
from util import save_checkpoint


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) + 0.5  # off-centre, like descriptors
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)


def test_full_dimension_preserves_neighbour_ranking() -> None:
    db, q = unit_rows(200, 16, 0), unit_rows(30, 16, 1)
    pca = fit_pca(db, 16)
    # without re-normalization a full-dimension PCA is a rotation of the centred descriptors: distances kept
    d_orig, d_pca = sq_dists(q, db), sq_dists(pca.transform(q, normalize=False), pca.transform(db, normalize=False))
    assert np.allclose(d_orig, d_pca, atol=1e-4)
    assert np.array_equal(np.argsort(d_orig, 1)[:, :10], np.argsort(d_pca, 1)[:, :10])
    # re-normalized: the ranking is that of the cosine between centred descriptors (hand computation)
    qc, dbc = q - db.mean(0), db - db.mean(0)
    cos = (qc @ dbc.T) / np.linalg.norm(qc, axis=1)[:, None] / np.linalg.norm(dbc, axis=1)[None]
    assert np.array_equal(np.argsort(-cos, 1)[:, :10], np.argsort(sq_dists(pca.transform(q), pca.transform(db)), 1)[:, :10])


def test_reduced_projection_matches_eigendecomposition() -> None:
    db = unit_rows(300, 24, 2)
    pca = fit_pca(db, 6)
    centred = db.astype(np.float64) - db.mean(0)
    evals, evecs = np.linalg.eigh(centred.T @ centred / (len(db) - 1))
    top = evecs[:, ::-1][:, :6]  # 24×6, largest variance first
    assert np.allclose(pca.explained_variance, evals[::-1][:6], rtol=1e-3)
    ref = centred @ top
    assert np.allclose(np.abs(pca.transform(db, normalize=False)), np.abs(ref), atol=1e-4)  # up to component signs
    assert np.allclose(np.linalg.norm(pca.transform(db), axis=1), 1.0, atol=1e-5)


def test_whitening_gives_identity_covariance() -> None:
    db = unit_rows(400, 12, 3)
    y = fit_pca(db, 8, whiten=True).transform(db, normalize=False)
    assert np.allclose(np.cov(y.T), np.eye(8), atol=1e-3)


def test_save_load_and_errors(tmp_path) -> None:
    pca = fit_pca(unit_rows(50, 10, 4), 5, whiten=True)
    pca.save(tmp_path / "pca.npz")
    back = PCA.load(tmp_path / "pca.npz")
    assert back.whiten and np.array_equal(back.components, pca.components) and np.array_equal(back.mean, pca.mean)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="not a PCA file"):
        PCA.load(tmp_path / "other.npz")
    with pytest.raises(UserError, match="exceeds"):
        fit_pca(unit_rows(5, 10, 5), 8)
    with pytest.raises(UserError, match="expects 10-D"):
        PCAHead(build_model({"backbone": "resnet18conv4", "aggregation": "gem"}), pca)


def test_eval_fits_stores_and_reuses_pca(tiny_world, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    arch = {"backbone": "resnet18conv4", "aggregation": "gem"}
    save_checkpoint({"model_state_dict": build_model(arch).state_dict(), "args": arch}, tmp_path, is_best=False)
    flags = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resize", "32", "32",
             "--device", "cpu", "--num_workers", "0", "--infer_batch_size", "64",
             "--resume", str(tmp_path / "last_model.pth")]
    fitted = eval_cli.main(flags + ["--pca_dim", "16", "--pca_whiten", "--pca_split", "val"])
    assert fitted["pca"]["out_dim"] == 16 and fitted["pca"]["whiten"]
    reused = eval_cli.main(flags + ["--pca_file", fitted["pca"]["file"]])
    assert reused["recalls"] == fitted["recalls"]
    assert PCA.load(fitted["pca"]["file"]).in_dim == 256
