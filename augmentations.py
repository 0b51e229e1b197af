"""Training-time data augmentation from flags, built from torchvision transforms v2.

Transforms act on uint8 3×H×W tensors before normalization and keep the image size.
"""
from __future__ import annotations

import argparse
import logging

import torch
import torchvision.transforms.v2 as T

# Each knob: flag name → (help, value meaning "off"). Presets set some knobs; explicit flags override.
KNOBS = {
    "brightness": "colour jitter brightness factor range [1-x, 1+x]",
    "contrast": "colour jitter contrast factor range [1-x, 1+x]",
    "saturation": "colour jitter saturation factor range [1-x, 1+x]",
    "hue": "colour jitter hue shift range [-x, x] (<= 0.5)",
    "random_resized_crop": "minimum area scale of a random resized crop (0 = off)",
    "random_perspective": "perspective distortion scale (0 = off)",
    "random_rotation": "maximum rotation in degrees (0 = off)",
    "gaussian_blur": "maximum Gaussian blur sigma (0 = off)",
    "random_erasing": "probability of erasing a random rectangle (0 = off)",
    "grayscale": "probability of converting to grayscale (0 = off)",
    "horizontal_flip": "probability of a horizontal flip (0 = off)",
}
PRESETS = {
    "none": {},
    "light": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "random_resized_crop": 0.8},
    "strong": {"brightness": 0.6, "contrast": 0.6, "saturation": 0.6, "hue": 0.15, "random_resized_crop": 0.5,
               "random_perspective": 0.2, "random_rotation": 10, "gaussian_blur": 1.5, "random_erasing": 0.3,
               "grayscale": 0.1},
}


def add_augmentation_args(p: argparse.ArgumentParser) -> None:
    """Add the augmentation flags to a parser."""
    g = p.add_argument_group("augmentation")
    g.add_argument("--augmentation_preset", choices=sorted(PRESETS), default="none")
    g.add_argument("--augment_targets", choices=["queries", "all"], default="queries",
                   help="augment only the training queries, or queries, positives and negatives")
    for name, text in KNOBS.items():
        g.add_argument(f"--{name}", type=float, default=None, help=f"{text}; overrides the preset")


def augmentation_settings(args: argparse.Namespace) -> dict[str, float]:
    """The effective non-zero knob values: preset values overridden by explicit flags."""
    values = dict(PRESETS[args.augmentation_preset])
    values.update({k: getattr(args, k) for k in KNOBS if getattr(args, k, None) is not None})
    return {k: float(v) for k, v in values.items() if v}


def _transforms(s: dict[str, float], size: tuple[int, int]) -> list[T.Transform]:
    ts: list[T.Transform] = []
    if "random_resized_crop" in s:
        ts.append(T.RandomResizedCrop(list(size), scale=(s["random_resized_crop"], 1.0), antialias=True))
    if "random_perspective" in s:
        ts.append(T.RandomPerspective(distortion_scale=s["random_perspective"], p=1.0))
    if "random_rotation" in s:
        ts.append(T.RandomRotation(s["random_rotation"]))
    if "horizontal_flip" in s:
        ts.append(T.RandomHorizontalFlip(s["horizontal_flip"]))
    jitter = {k: s[k] for k in ("brightness", "contrast", "saturation", "hue") if k in s}
    if jitter:
        ts.append(T.ColorJitter(**jitter))
    if "grayscale" in s:
        ts.append(T.RandomGrayscale(s["grayscale"]))
    if "gaussian_blur" in s:
        sigma = s["gaussian_blur"]
        k = 2 * int(3 * sigma) + 1
        ts.append(T.GaussianBlur(kernel_size=max(3, k), sigma=(0.1, sigma)))
    if "random_erasing" in s:
        ts.append(T.RandomErasing(p=s["random_erasing"], value=0))
    return ts


class Augmentation:
    """callable(img uint8 3×H×W, is_query) → augmented uint8 3×H×W (non-targets pass unchanged)."""

    def __init__(self, settings: dict[str, float], targets: str, size: tuple[int, int]):
        self.targets = targets
        self.transform = T.Compose(_transforms(settings, size))

    def __call__(self, img: torch.Tensor, is_query: bool) -> torch.Tensor:
        if self.targets == "queries" and not is_query:
            return img
        return self.transform(img)

    def __repr__(self) -> str:
        return f"Augmentation(targets={self.targets}, {self.transform})"


def build_augmentation(args: argparse.Namespace) -> Augmentation | None:
    """The augmentation of the training images, or None when no knob is on. Logs what runs."""
    settings = augmentation_settings(args)
    if not settings:
        logging.info("augmentation: none")
        return None
    aug = Augmentation(settings, args.augment_targets, tuple(args.resize))
    logging.info(f"augmentation on {args.augment_targets}: {aug.transform}")
    return aug
