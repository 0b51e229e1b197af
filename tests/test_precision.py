"""The fast path keeps results: bf16 autocast and channels_last descriptors, --precision in training and
evaluation, and JPEG draft decoding."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import commons
import eval as eval_cli
from retrieval import evaluation
import train
from commons import autocast, prepare_model
from dataio.images import to_input
from conftest import tiny_train_flags
from dataio.images import build_resize, normalize, open_image
from model.aggregations import AGGREGATIONS
from network import GeoLocalizationNet
from tools.synthetic_world import make_map, to_uint8


def random_model(aggregation: str) -> GeoLocalizationNet:
    torch.manual_seed(0)
    return GeoLocalizationNet("resnet18conv4", aggregation, netvlad_clusters=8).eval()


def smooth_images(n: int, size: int) -> torch.Tensor:
    """n×3×size×size normalized crops of a synthetic map (image-like statistics, unlike white noise)."""
    world = make_map(4 * size, seed=3)  # 3×M×M, standardized
    return torch.stack([world[:, i * size // 2:i * size // 2 + size, i * size // 3:i * size // 3 + size]
                        for i in range(n)])


@pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
def test_bf16_autocast_descriptors_match_fp32(aggregation: str) -> None:
    model, x = random_model(aggregation), smooth_images(4, 64)
    with torch.no_grad():
        ref = model(x)  # B×D, fp32
        fast_model = prepare_model(copy.deepcopy(model), "cpu", "bf16")
        with autocast("cpu", "bf16"):
            fast = fast_model(to_input(x, "cpu", "bf16")).float()
    cos = torch.nn.functional.cosine_similarity(fast, ref, dim=1)  # descriptors are L2-normalized
    assert cos.min() > 0.99
    # each bf16 descriptor is nearest to the fp32 descriptor of its own image, not of another one
    assert torch.equal((fast @ ref.T).argmax(1), torch.arange(len(x)))


@pytest.mark.parametrize("arch", [("resnet18conv4", agg, "none") for agg in sorted(set(AGGREGATIONS) - {"cls"})]
                         + [("resnet18conv4", "gem", "cbam"), ("vgg16", "netvlad", "none")])
def test_channels_last_gives_the_same_descriptors_and_gradients(arch: tuple[str, str, str]) -> None:
    """The CPU path runs every model in channels_last: same descriptors and gradients as NCHW (train mode)."""
    backbone, aggregation, attention = arch
    torch.manual_seed(0)
    model = GeoLocalizationNet(backbone, aggregation, netvlad_clusters=8, attention=attention).train()
    x = smooth_images(3, 64)
    results = []
    for net, inp in ((model, x), (prepare_model(copy.deepcopy(model), "cpu", "fp32"), to_input(x, "cpu", "fp32"))):
        desc = net(inp)  # B×D
        (desc[:, :7] ** 2).sum().backward()
        results.append((desc.detach(), {k: p.grad for k, p in net.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (cl, cl_grads) = results
    assert torch.allclose(cl, ref, atol=1e-5)
    assert ref_grads.keys() == cl_grads.keys() and len(ref_grads) > 0
    scale = max(g.norm() for g in ref_grads.values())  # some gradients are ~0 (a bias before a normalization)
    for k, g in ref_grads.items():  # fp32 sums in another order: equal up to rounding
        assert (cl_grads[k] - g).norm() <= 1e-2 * g.norm() + 1e-4 * scale, k


def test_channels_last_on_cpu_always_on_cuda_in_reduced_precision() -> None:
    x = torch.zeros(1, 3, 8, 8)
    for precision in ("fp32", "bf16"):
        assert to_input(x, "cpu", precision).is_contiguous(memory_format=torch.channels_last)
        model = prepare_model(torch.nn.Conv2d(3, 4, 3), "cpu", precision)
        assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous(memory_format=torch.channels_last)  # the check above is not vacuous
    assert commons.uses_channels_last("cuda", "fp16") and commons.uses_channels_last("cuda", "bf16")
    assert not commons.uses_channels_last("cuda", "fp32")
    assert type(autocast("cpu", "bf16")) is torch.autocast and type(autocast("cpu", "fp32")) is not torch.autocast


def test_precision_reaches_training_and_evaluation_and_bf16_keeps_recall(tiny_world: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    seen: list[tuple[str, str]] = []
    for module in (train, evaluation):
        def spy(device: str, precision: str, _name: str = module.__name__):
            seen.append((_name, precision))
            return commons.autocast(device, precision)
        monkeypatch.setattr(module, "autocast", spy)
    small = ["--queries_per_epoch", "8", "--cache_refresh_rate", "8", "--epochs_num", "1", "--log_level", "warning"]
    trained = train.main(tiny_train_flags(tiny_world, "precision") + small + ["--precision", "bf16"])
    assert {("train", "bf16"), ("retrieval.evaluation", "bf16")} <= set(seen)
    assert all(p == "bf16" for _, p in seen)
    seen.clear()
    fp32 = eval_cli.main(["--resume", trained["test"]["checkpoint"], "--datasets_folder", str(tiny_world),
                          "--dataset_name", "synthetic", "--resize", "32", "32", "--device", "cpu", "--num_workers",
                          "0", "--precision", "fp32", "--save_dir", "eval_fp32", "--log_level", "warning"])
    assert seen and all(p == "fp32" for _, p in seen)
    bf16 = trained["test"]["recalls"]  # the final test of training ran the same checkpoint in bf16
    assert fp32["recalls"].keys() == bf16.keys()
    for n in bf16:  # 40 test queries: one query is 2.5 points
        assert abs(fp32["recalls"][n] - bf16[n]) <= 7.5, (n, fp32["recalls"], bf16)


def write_jpeg(path: Path, height: int, width: int) -> None:
    world = to_uint8(make_map(2 * max(height, width), seed=5)[None])[0].numpy()  # M×M×3 uint8
    Image.fromarray(world[:height, :width]).save(path, quality=90)


def test_draft_decoding_is_close_to_a_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    write_jpeg(path, 256, 320)
    assert open_image(path, (32, 40)).size == (80, 64)  # 1/4 scale: still 2× the target
    assert open_image(path, (200, 200)).size == (320, 256)  # less than 2× reduction: full decode
    full, draft = (build_resize((32, 40))(img) for img in (open_image(path), open_image(path, (32, 40))))
    assert full.shape == draft.shape == (3, 32, 40)
    assert (full.float() - draft.float()).abs().mean() < 2.0  # grey levels of 255


def test_draft_leaves_png_alone(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.full((256, 256, 3), 7, dtype=np.uint8)).save(path)
    assert open_image(path, (32, 32)).size == (256, 256)


@pytest.mark.parametrize("n_db", [40, 400])  # candidates a large share of the database (matmul) or not (gather)
def test_mining_distances_equal_the_definition(n_db: int) -> None:
    from training.mining import DENSE_FACTOR, gathered_distances
    g = torch.Generator().manual_seed(0)
    q, db = torch.randn(7, 16, generator=g), torch.randn(n_db, 16, generator=g)
    cand = np.random.default_rng(0).integers(-1, n_db, (7, 20))
    assert (cand.shape[1] * DENSE_FACTOR >= n_db) == (n_db == 40)
    ref = ((db[np.maximum(cand, 0)] - q[:, None]) ** 2).sum(-1).masked_fill(torch.from_numpy(cand < 0), float("inf"))
    assert torch.allclose(gathered_distances(q, db, cand), ref, atol=1e-4)


def test_to_input_normalizes_uint8_batches_into_the_model_layout() -> None:
    """Datasets give uint8 pixels; to_input gives the normalized float batch, channels_last on a CPU."""
    u8 = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = to_input(u8, "cpu", "fp32")
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    expected = torch.stack([normalize(img) for img in u8])  # per image, NCHW
    assert torch.allclose(x, expected, atol=1e-6)
    floats = expected.clone()  # already-normalized floats (test-method views) are only laid out
    assert torch.equal(to_input(floats, "cpu", "fp32"), expected)
