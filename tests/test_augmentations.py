"""Augmentation flags: each knob changes training images as specified; presets, targets, logging, validation."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from training.augmentations import build_augmentation
from commons import UserError
from datasets_ws import TripletsDataset
from parser import parse_train_args, train_parser

H, W = 32, 40


def aug(*flags: str):
    """build_augmentation from train.py flags (images H×W)."""
    return build_augmentation(train_parser().parse_args(["--resize", str(H), str(W), *flags]))


@pytest.fixture
def img() -> torch.Tensor:
    """A random uint8 3×H×W image with no zero pixel."""
    return torch.randint(1, 256, (3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_horizontal_flip_p1_is_torch_flip_and_spares_non_queries(img):
    a = aug("--horizontal_flip", "1")
    assert torch.equal(a(img, True), torch.flip(img, dims=[-1]))
    assert torch.equal(a(img, False), img)  # --augment_targets queries (default)
    assert torch.equal(aug("--horizontal_flip", "1", "--augment_targets", "all")(img, False), torch.flip(img, [-1]))


def test_grayscale_p1_gives_equal_channels(img):
    out = aug("--grayscale", "1")(img, True)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert not torch.equal(out, img)


def test_random_erasing_p1_zeroes_one_rectangle(img):
    torch.manual_seed(0)
    out = aug("--random_erasing", "1")(img, True)
    changed = (out != img).any(0)  # H×W
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert len(rows) > 0
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert (out[:, r0:r1, c0:c1] == 0).all()  # the whole bounding box is erased...
    outside = torch.ones(H, W, dtype=torch.bool)
    outside[r0:r1, c0:c1] = False
    assert torch.equal(out[:, outside], img[:, outside])  # ...and nothing else changed


def test_brightness_scales_all_pixels_by_one_factor(img):
    torch.manual_seed(0)
    out = aug("--brightness", "0.5")(img, True).float()
    ok = out < 255  # not clipped
    factor = (out[ok] / img.float()[ok]).median()
    assert 0.5 <= factor <= 1.5 and abs(factor - 1) > 0.01
    assert (out[ok] - (img.float()[ok] * factor)).abs().max() <= 1.0 + 1e-3  # uint8 rounding


@pytest.mark.parametrize("knob, stat", [
    ("contrast", lambda x: x.float().std()),
    ("saturation", lambda x: (x.float() - x.float().mean(0)).abs().mean()),  # spread across channels
    ("hue", lambda x: (x[0].float() - x[1].float()).mean()),
])
def test_colour_jitter_knobs_change_pixel_statistics(img, knob, stat):
    torch.manual_seed(0)
    out = aug(f"--{knob}", "0.5" if knob != "hue" else "0.3")(img, True)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert abs(float(stat(out)) - float(stat(img))) > 0.5


@pytest.mark.parametrize("flags", [["--random_resized_crop", "0.3"], ["--random_perspective", "0.5"],
                                   ["--random_rotation", "30"]])
def test_geometric_knobs_change_the_image_but_keep_its_size(img, flags):
    torch.manual_seed(0)
    out = aug(*flags)(img, True)
    assert out.shape == (3, H, W) and out.dtype == torch.uint8
    assert (out != img).float().mean() > 0.2


def test_gaussian_blur_smooths(img):
    torch.manual_seed(0)
    out = aug("--gaussian_blur", "2")(img, True)

    def variation(x):
        return (x.float().diff(dim=-1).abs().mean() + x.float().diff(dim=-2).abs().mean()).item()
    assert out.shape == img.shape and variation(out) < 0.8 * variation(img)


def test_preset_none_and_zeroed_knobs_mean_no_augmentation():
    assert aug() is None
    assert aug("--augmentation_preset", "none") is None
    assert aug("--augmentation_preset", "light", "--brightness", "0", "--contrast", "0", "--saturation", "0",
               "--hue", "0", "--random_resized_crop", "0") is None


def transform_names(a) -> list[str]:
    return [type(t).__name__ for t in a.transforms]


def test_presets_and_overrides_pick_the_transforms():
    assert transform_names(aug("--augmentation_preset", "light")) == ["RandomResizedCrop", "ColorJitter"]
    strong = aug("--augmentation_preset", "strong", "--grayscale", "0", "--horizontal_flip", "0.5")
    assert transform_names(strong) == ["RandomResizedCrop", "RandomPerspective", "RandomRotation",
                                       "RandomHorizontalFlip", "ColorJitter", "GaussianBlur", "RandomErasing"]
    jitter = aug("--augmentation_preset", "light", "--hue", "0.2").transforms[1]
    assert jitter.hue == (-0.2, 0.2) and jitter.brightness == (0.7, 1.3)


def test_log_names_exactly_the_transforms_that_run(caplog):
    with caplog.at_level(logging.INFO):
        aug("--horizontal_flip", "1", "--grayscale", "0.5", "--augment_targets", "all")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("augmentation"))
    assert "queries, positives and negatives: RandomHorizontalFlip(p=1.0) -> RandomGrayscale(p=0.5) (" in line
    assert "ColorJitter" not in line and "Crop" not in line
    caplog.clear()
    with caplog.at_level(logging.INFO):
        aug()
    assert any(r.getMessage().startswith("augmentation: none") for r in caplog.records)


@pytest.mark.parametrize("flags", [["--hue", "0.6"], ["--horizontal_flip", "1.5"], ["--brightness", "-1"],
                                   ["--random_resized_crop", "2"], ["--random_rotation", "-5"]])
def test_out_of_range_knobs_are_user_errors(flags):
    with pytest.raises(UserError, match=flags[0]):
        parse_train_args(["--device", "cpu", *flags])


def triplets_ds(world, augmentation):
    ds = TripletsDataset(world, "synthetic", "train", (32, 32), augmentation=augmentation)
    ds.set_triplets(np.array([[0, 1, 2, 3], [1, 0, 4, 5]], dtype=np.int64))
    return ds


def plain_item(ds, index: int) -> torch.Tensor:
    """The un-augmented (2+K)×3×H×W uint8 images of triplet `index`."""
    q, *db = ds.triplets[index].tolist()
    return torch.stack([ds.load_uint8(i) for i in [ds.database_num + q, *db]])


def test_triplets_dataset_augments_only_what_the_flags_say(tiny_world):
    def with_flags(*flags):
        return triplets_ds(tiny_world, build_augmentation(train_parser().parse_args(["--resize", "32", "32", *flags])))
    plain = with_flags("--augmentation_preset", "none")
    assert plain.augmentation is None
    for i in range(2):
        assert torch.equal(plain[i][0], plain_item(plain, i))
    torch.manual_seed(0)
    queries = with_flags("--augmentation_preset", "strong", "--augment_targets", "queries")
    images, expected = queries[0][0], plain_item(queries, 0)
    assert not torch.equal(images[0], expected[0])  # the query is augmented...
    assert torch.equal(images[1:], expected[1:])  # ...positive and negatives are not
    flipped = with_flags("--horizontal_flip", "1", "--augment_targets", "all")
    assert torch.equal(flipped[1][0], torch.flip(plain_item(flipped, 1), dims=[-1]))  # every row
    assert torch.equal(flipped.as_images()[3][0], flipped.load_uint8(3))  # mining/feature images never augmented
