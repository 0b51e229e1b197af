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
import torchvision.transforms.v2 as T

from commons import UserError

# knob → (help, lowest allowed value, highest allowed value); 0 always means "off".
KNOBS: dict[str, tuple[str, float, float]] = {
    "brightness": ("colour jitter: brightness factor drawn from [1-x, 1+x]", 0, float("inf")),
    "contrast": ("colour jitter: contrast factor drawn from [1-x, 1+x]", 0, float("inf")),
    "saturation": ("colour jitter: saturation factor drawn from [1-x, 1+x]", 0, float("inf")),
    "hue": ("colour jitter: hue shift drawn from [-x, x]", 0, 0.5),
    "random_resized_crop": ("random resized crop: minimum area fraction of the crop, resized back", 0, 1),
    "random_perspective": ("random perspective: distortion scale, always applied", 0, 1),
    "random_rotation": ("random rotation: maximum angle in degrees", 0, 180),
    "gaussian_blur": ("Gaussian blur: maximum sigma in pixels (drawn from [0.1, x])", 0, float("inf")),
    "random_erasing": ("random erasing: probability of zeroing a random rectangle", 0, 1),
    "grayscale": ("random grayscale: probability", 0, 1),
    "horizontal_flip": ("random horizontal flip: probability; without a value 0.5 (dVGL's bare switch)", 0, 1),
}
PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "random_resized_crop": 0.8},
    "strong": {"brightness": 0.6, "contrast": 0.6, "saturation": 0.6, "hue": 0.15, "random_resized_crop": 0.5,
               "random_perspective": 0.2, "random_rotation": 10, "gaussian_blur": 1.5, "random_erasing": 0.3,
               "grayscale": 0.1},
}
JITTER_KNOBS = ("brightness", "contrast", "saturation", "hue")
# dVGL spellings accepted as well: --rand_perspective, and --horizontal_flipping (as written in dVGL's README).
DVGL_ALIASES: dict[str, tuple[str, ...]] = {"random_perspective": ("--rand_perspective",),
                                            "horizontal_flip": ("--horizontal_flipping",)}
BARE_SWITCH: dict[str, float] = {"horizontal_flip": 0.5}  # knob given without a value (dVGL's bare switch)


def add_augmentation_args(p: argparse.ArgumentParser) -> None:
    """Add the augmentation flags to a parser."""
    g = p.add_argument_group("augmentation (training only; explicit knobs override the preset, 0 turns off)")
    g.add_argument("--augmentation_preset", choices=sorted(PRESETS), default="none",
                   help="; ".join(f"{k}: {v or 'no augmentation'}" for k, v in PRESETS.items()))
    g.add_argument("--augment_targets", choices=["queries", "all"], default="queries",
                   help="augment only the training queries, or queries, positives and negatives")
    for name, (text, _, _) in KNOBS.items():
        bare = {"nargs": "?", "const": BARE_SWITCH[name]} if name in BARE_SWITCH else {}
        g.add_argument(f"--{name}", *DVGL_ALIASES.get(name, ()), dest=name, type=float, default=None, help=text, **bare)


def validate_augmentation_args(args: argparse.Namespace) -> None:
    """Raise UserError for a knob outside its range."""
    for name, (_, lo, hi) in KNOBS.items():
        v = getattr(args, name, None)
        if v is not None and not lo <= v <= hi:
            raise UserError(f"--{name} must be in [{lo}, {hi}], got {v}")


def augmentation_settings(args: argparse.Namespace) -> dict[str, float]:
    """The effective non-zero knob values: preset values overridden by explicit flags."""
    values = dict(PRESETS[args.augmentation_preset])
    values.update({k: getattr(args, k) for k in KNOBS if getattr(args, k, None) is not None})
    return {k: float(v) for k, v in values.items() if v}


def _blur(sigma: float, size: tuple[int, int]) -> T.Transform:
    """Gaussian blur with sigma drawn from [0.1, sigma]; kernel ±3 sigma, clipped to what fits the image."""
    half = min(max(1, int(3 * sigma)), min(size) - 1)
    return T.GaussianBlur(kernel_size=2 * half + 1, sigma=(min(0.1, sigma), sigma))


# (knobs, builder(settings, (H, W))) in application order: geometry, colour, then erasing.
# A transform runs when any of its knobs is on; the colour jitter knobs share one ColorJitter.
STAGES: list[tuple[tuple[str, ...], Callable[[dict, tuple[int, int]], T.Transform]]] = [
    (("random_resized_crop",),
     lambda s, size: T.RandomResizedCrop(list(size), scale=(s["random_resized_crop"], 1.0), antialias=True)),
    (("random_perspective",), lambda s, size: T.RandomPerspective(distortion_scale=s["random_perspective"], p=1.0)),
    (("random_rotation",),
     lambda s, size: T.RandomRotation(s["random_rotation"], interpolation=T.InterpolationMode.BILINEAR)),
    (("horizontal_flip",), lambda s, size: T.RandomHorizontalFlip(s["horizontal_flip"])),
    (JITTER_KNOBS, lambda s, size: T.ColorJitter(**{k: s[k] for k in JITTER_KNOBS if k in s})),
    (("grayscale",), lambda s, size: T.RandomGrayscale(s["grayscale"])),
    (("gaussian_blur",), lambda s, size: _blur(s["gaussian_blur"], size)),
    (("random_erasing",), lambda s, size: T.RandomErasing(p=s["random_erasing"], value=0)),
]


def build_transforms(settings: dict[str, float], size: tuple[int, int]) -> list[T.Transform]:
    """The transforms for the effective (non-zero) knob values, in application order."""
    return [build(settings, size) for knobs, build in STAGES if any(k in settings for k in knobs)]


class Augmentation:
    """callable(img uint8 3×H×W, is_query) → augmented uint8 3×H×W (non-targets pass unchanged)."""

    def __init__(self, settings: dict[str, float], targets: str, size: tuple[int, int]):
        self.targets = targets
        self.transforms = build_transforms(settings, size)
        self.transform = T.Compose(self.transforms)

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
