"""Training-time data augmentation from flags, built from torchvision transforms v2.

Transforms act on uint8 3×H×W tensors (after the resize, before normalization) and keep the image size.
Only training triplets are augmented (queries only, or queries, positives and negatives with
--augment_targets all); mining features, validation and test images never are.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable

import torch

from cli.augmentation_flags import augmentation_settings

JITTER_KNOBS = ("brightness", "contrast", "saturation", "hue")


def v2():
    """torchvision.transforms.v2, imported on first use: importing torchvision costs seconds (torch._dynamo), which
    a run without augmentation does not pay."""
    import torchvision.transforms.v2 as T
    return T


def _blur(sigma: float, size: tuple[int, int]) -> Callable:
    """Gaussian blur with sigma drawn from [0.1, sigma]; kernel ±3 sigma, clipped to what fits the image."""
    half = min(max(1, int(3 * sigma)), min(size) - 1)
    return v2().GaussianBlur(kernel_size=2 * half + 1, sigma=(min(0.1, sigma), sigma))


# (knobs, builder(settings, (H, W))) in application order: geometry, colour, then erasing.
# A transform runs when any of its knobs is on; the colour jitter knobs share one ColorJitter.
STAGES: list[tuple[tuple[str, ...], Callable[[dict, tuple[int, int]], Callable]]] = [
    (("random_resized_crop",),
     lambda s, size: v2().RandomResizedCrop(list(size), scale=(s["random_resized_crop"], 1.0), antialias=True)),
    (("random_perspective",), lambda s, size: v2().RandomPerspective(distortion_scale=s["random_perspective"], p=1.0)),
    (("random_rotation",),
     lambda s, size: v2().RandomRotation(s["random_rotation"], interpolation=v2().InterpolationMode.BILINEAR)),
    (("horizontal_flip",), lambda s, size: v2().RandomHorizontalFlip(s["horizontal_flip"])),
    (JITTER_KNOBS, lambda s, size: v2().ColorJitter(**{k: s[k] for k in JITTER_KNOBS if k in s})),
    (("grayscale",), lambda s, size: v2().RandomGrayscale(s["grayscale"])),
    (("gaussian_blur",), lambda s, size: _blur(s["gaussian_blur"], size)),
    (("random_erasing",), lambda s, size: v2().RandomErasing(p=s["random_erasing"], value=0)),
]


def build_transforms(settings: dict[str, float], size: tuple[int, int]) -> list[Callable]:
    """The transforms for the effective (non-zero) knob values, in application order."""
    return [build(settings, size) for knobs, build in STAGES if any(k in settings for k in knobs)]


class Augmentation:
    """callable(img uint8 3×H×W, is_query) → augmented uint8 3×H×W (non-targets pass unchanged)."""

    def __init__(self, settings: dict[str, float], targets: str, size: tuple[int, int]):
        self.targets = targets
        self.transforms = build_transforms(settings, size)
        self.transform = v2().Compose([v2().ToImage(), *self.transforms])  # the tensor marked as an image

    def __call__(self, img: torch.Tensor, is_query: bool) -> torch.Tensor:
        if self.targets == "queries" and not is_query:
            return img
        return self.transform(img)

    def describe(self) -> str:
        """One line naming every transform that runs, with its parameters, in order."""
        who = "queries only" if self.targets == "queries" else "queries, positives and negatives"
        return f"augmentation of {who}: " + " -> ".join(repr(t) for t in self.transforms)

    def __repr__(self) -> str:
        return f"Augmentation(targets={self.targets}, transforms={self.transforms})"


def build_augmentation(args: argparse.Namespace) -> Augmentation | None:
    """The augmentation of the training images, or None when no knob is on. Logs what runs."""
    settings = augmentation_settings(args)
    if not settings:
        logging.info("augmentation: none (training images are only resized and normalized)")
        return None
    aug = Augmentation(settings, args.augment_targets, tuple(args.resize))
    logging.info(f"{aug.describe()} (preset {args.augmentation_preset}; validation, test and mining images "
                 f"are not augmented)")
    return aug
