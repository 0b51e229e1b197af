"""The augmentation flags of train.py (knobs, presets, their checks), torch-free for parser.py; the transforms
themselves are built in training/augmentations.py."""
from __future__ import annotations

import argparse

from cli.errors import UserError

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
