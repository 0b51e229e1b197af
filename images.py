"""Image files to tensors: checking and opening with clear errors, JPEG draft decoding, resize, normalization."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from PIL import Image, UnidentifiedImageError

from commons import UserError, uses_channels_last

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

IMAGE_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}  # last bytes of a complete file


def image_problem(path: Path) -> str | None:
    """Why `path` is not a readable image, or None.

    Cheap: parses the header and reads the format's end marker (one small read at each end of the file); only
    files lacking the marker (truncated ones, or with trailing bytes) are decoded in full to decide.
    """
    try:
        with Image.open(path) as img:
            marker = IMAGE_END_MARKERS.get(img.format)
            if marker is not None:
                with open(path, "rb") as f:
                    f.seek(-len(marker), os.SEEK_END)
                    if f.read() == marker:
                        return None
            img.load()
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), SyntaxError, DecompressionBombError...
        return f"{type(e).__name__}: {str(e)[:100]}"
    return None


def build_resize(resize: tuple[int, int]) -> T.Compose:
    """PIL image → uint8 tensor 3×H×W at the given (H, W)."""
    return T.Compose([T.ToImage(), T.Resize(list(resize), antialias=True)])


_SCALE = 1 / (255 * torch.tensor(IMAGENET_STD).view(3, 1, 1))  # uint8 → ImageNet-normalized float in one pass:
_SHIFT = -torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / torch.tensor(IMAGENET_STD).view(3, 1, 1)  # x·scale + shift


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 image 3×H×W (or B×3×H×W, any memory format, which the result keeps) → float32 (x/255 − mean)/std.

    Same values as ToDtype(scale=True) + Normalize up to rounding, ~4× cheaper: one multiply-add over the pixels
    (at 480×640 ~1.5 ms of one core instead of ~5, most of the loader's time after the JPEG decode).
    """
    return torch.mul(image, _SCALE.to(image.device)).add_(_SHIFT.to(image.device))


def to_input(images: torch.Tensor, device: str, precision: str) -> torch.Tensor:
    """Image batch B×3×H×W → the model's input on device: float, ImageNet-normalized, in channels_last where
    `commons.uses_channels_last`.

    Datasets give uint8 pixels: they travel (to the GPU, or between loader processes) as bytes, 4× less than
    floats, and are laid out and normalized here in one pass over the whole batch. Float batches (already
    normalized, e.g. the test-method views) are only moved and laid out.
    """
    images = images.to(device, non_blocking=True)
    if uses_channels_last(device, precision):
        images = images.contiguous(memory_format=torch.channels_last)
    return normalize(images) if images.dtype == torch.uint8 else images  # keeps the memory format


DRAFT_MARGIN = 2  # JPEG draft decoding keeps at least this × the target size, so the final resize still antialiases


def open_image(path: Path, target: tuple[int, int] | None = None) -> Image.Image:
    """Open an RGB image, with a clear error for corrupt files.

    target (H, W): the size the image will be resized to. A JPEG much larger than that is decoded at a reduced
    DCT scale (PIL draft mode: 1/2, 1/4 or 1/8) that stays >= DRAFT_MARGIN × target, which is faster and
    within ~1 grey level (mean) of a full decode after the resize.
    """
    try:
        with Image.open(path) as img:
            if target is not None:
                img.draft("RGB", (DRAFT_MARGIN * target[1], DRAFT_MARGIN * target[0]))
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"corrupt or unreadable image {path} ({e}); replace or delete it, "
                        f"or pass --skip_corrupt") from None
