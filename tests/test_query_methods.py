"""Test-time variants: ensembles, multi-scale, query test methods (merges checked against per-query references)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
from commons import UserError
from retrieval import evaluation
from retrieval.evaluation import InferenceConfig
from datasets_ws import BaseDataset
from network import build_model
from retrieval.query_methods import (TEST_METHODS, Ensemble, MultiScale, central_crop, five_crops, hard_resize,
                          majority_voting, merge_nearest, rescale, run_test_method)
from util import save_checkpoint

ARCH = {"backbone": "resnet18conv4", "aggregation": "gem", "netvlad_clusters": 4, "fc_output_dim": None,
        "attention": "none"}


def reference_merge_nearest(dist: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Per query: sort all crops' results by distance, keep the first occurrence of each id, top k."""
    out = []
    for d, p in zip(dist, pred):
        ranked = p[np.argsort(d, kind="stable")]
        _, first = np.unique(ranked, return_index=True)
        out.append(ranked[np.sort(first)][:k])
    return np.array(out)


def reference_voting(dist: np.ndarray, pred: np.ndarray, weight: float) -> np.ndarray:
    """Per query and depth n: each id seen c > 1 times among the crops' top-n gets weight·c/n off its distances."""
    dist = dist.astype(np.float64).copy()
    for q in range(len(pred)):
        for n in (1, 5, 10):
            values, counts = np.unique(pred[q, :, :n], return_counts=True)
            for v, c in zip(values, counts):
                if c > 1:
                    dist[q, :, :n][pred[q, :, :n] == v] -= weight * c / n
    return dist


def random_crop_results(seed: int, q: int = 7, m: int = 5, k: int = 12, db: int = 15):
    rng = np.random.default_rng(seed)
    pred = np.stack([[rng.choice(db, k, replace=False) for _ in range(m)] for _ in range(q)])  # few ids: many repeats
    dist = np.sort(rng.random((q, m, k)).astype(np.float32), axis=2)
    return dist, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_nearest_matches_reference(seed: int) -> None:
    dist, pred = random_crop_results(seed)
    merged_d, merged_p = merge_nearest(dist.reshape(7, -1), pred.reshape(7, -1), 10)
    assert np.array_equal(merged_p, reference_merge_nearest(dist.reshape(7, -1), pred.reshape(7, -1), 10))
    assert np.all(np.diff(merged_d, axis=1) >= 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_majority_voting_matches_reference(seed: int) -> None:
    dist, pred = random_crop_results(seed)
    assert np.allclose(majority_voting(dist, pred, 0.05), reference_voting(dist, pred, 0.05), atol=1e-6)


def test_query_transforms() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8))
    assert central_crop((32, 32))(img).shape == (3, 32, 32)
    assert central_crop((20, 80))(img).shape == (3, 20, 80)
    crops = five_crops((32, 48))(img)  # shorter side 32: image 32×64, five 32×32 crops
    assert crops.shape == (15, 32, 32)
    resized = hard_resize((32, 64))(img)  # the 40×80 image with its shorter side at 32
    assert torch.allclose(crops[:3], resized[:, :, :32])  # top-left (= bottom-left: full height)
    assert torch.allclose(crops[3:6], resized[:, :, 32:])  # top-right
    assert torch.allclose(crops[12:], resized[:, :, 16:48])  # centre


def test_ensemble_and_multiscale_descriptors() -> None:
    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(MultiScale(model, [1.0]).eval()(x), plain)
        assert torch.allclose(Ensemble([model, model], "mean")(x), plain, atol=1e-6)
        both = Ensemble([model, model], "concat")(x)
        assert both.shape == (3, 512) and torch.allclose(both * 2 ** 0.5, torch.cat([plain, plain], 1), atol=1e-6)
        two = MultiScale(model, [1.0, 0.5], "concat")(x)
        assert two.shape == (3, 512) and torch.allclose(two[:, :256] * 2 ** 0.5, plain, atol=1e-6)
    assert rescale(torch.zeros(1, 3, 48, 64), 0.707, multiple=16).shape[-2:] == (32, 48)
    with pytest.raises(UserError, match="equal descriptor sizes"):
        Ensemble([model, build_model({**ARCH, "fc_output_dim": 8})], "mean")


def test_every_test_method_on_native_size_images(tiny_world) -> None:
    """tiny_world images are 32×32: at --test_resize 32 32 every crop/resize is the whole image, so all methods
    (five identical crops merged, voting preserving the order) must reproduce hard_resize exactly."""
    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    ds = BaseDataset(tiny_world, "synthetic", "test", (32, 32))
    ref = evaluation.test(model, ds, [1, 5, 10], InferenceConfig(64))
    for method in TEST_METHODS:
        res = run_test_method(model, ds, method, (32, 32), [1, 5, 10], InferenceConfig(64))
        assert res.recalls == ref.recalls, method
        assert np.array_equal(res.predictions, ref.predictions), method


def test_eval_ensemble_of_a_model_with_itself(tiny_world, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_checkpoint({"model_state_dict": build_model(ARCH).state_dict(), "args": ARCH}, tmp_path, is_best=False)
    ckpt = str(tmp_path / "last_model.pth")
    flags = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resize", "32", "32",
             "--device", "cpu", "--num_workers", "0", "--infer_batch_size", "64"]
    alone = eval_cli.main(flags + ["--resume", ckpt])
    twice = eval_cli.main(flags + ["--resume", ckpt, ckpt, "--ensemble", "concat", "--multiscale", "1"])
    assert twice["recalls"] == alone["recalls"] and twice["ensemble"] == "concat"
    with pytest.raises(UserError, match="multiscale"):
        eval_cli.main(flags + ["--resume", ckpt, "--multiscale", "1", "0"])
