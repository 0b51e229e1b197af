"""Image files to tensors: checking and opening with clear errors, JPEG draft decoding, resize, normalization."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from PIL import Image, UnidentifiedImageError

from commons import UserError, uses_channels_last

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

IMAGE_END_MARKERS = {"JPEG": b"\xff\xd9"}  # last bytes of a complete file
PIXEL_LIMIT_ENV = "VG_MAX_IMAGE_PIXELS"  # largest image (pixels) accepted; PIL's default guard otherwise
OVERSIZE = "above PIL's pixel limit"  # start of image_problem's text for images refused for their size


class ImageReadError(UserError):
    """An image file that cannot be opened; `path` and `reason` (what PIL said) are kept for the caller's advice."""

    def __init__(self, path: Path, reason: str, message: str):
        self.path, self.reason = Path(path), reason
        super().__init__(message)


_PIL_PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS  # PIL warns above it and refuses above twice it


def _pixel_limit_from_env() -> int | None:
    """$VG_MAX_IMAGE_PIXELS as a number of pixels, None when unset; UserError when it is not a positive number."""
    value = os.environ.get(PIXEL_LIMIT_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) <= 0:
        raise UserError(f"{PIXEL_LIMIT_ENV}={value!r} is not a positive number of pixels; e.g. "
                        f"{PIXEL_LIMIT_ENV}=200000000")
    return int(value)


def pixel_limit() -> int:
    """Images with more pixels than this are refused: $VG_MAX_IMAGE_PIXELS, else PIL's guard against decompression
    bombs."""
    return _pixel_limit_from_env() or 2 * _PIL_PIXEL_LIMIT


def _open(path: Path) -> Image.Image:
    """Image.open under pixel_limit(): DecompressionBombError above it (read from the header, nothing decoded)."""
    limit = _pixel_limit_from_env()
    Image.MAX_IMAGE_PIXELS = None if limit else _PIL_PIXEL_LIMIT  # with a limit of ours, PIL neither warns nor refuses
    img = Image.open(path)
    if limit and img.width * img.height > limit:
        img.close()
        raise Image.DecompressionBombError(f"Image size ({img.width * img.height} pixels) exceeds limit of {limit} "
                                           f"pixels")
    return img


def _oversize_text(e: Exception) -> str:
    """'above PIL's pixel limit: 192,000,000 pixels > 178,956,970' from PIL's DecompressionBombError."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    return f"{OVERSIZE}: {f'{int(found.group(1)):,}' if found else 'too many'} pixels > {pixel_limit():,}"


def oversize_advice(problems: list[str]) -> str:
    """The fix for images refused for their size (problems: their image_problem texts)."""
    sizes = [int(m.replace(",", "")) for p in problems for m in re.findall(r"([\d,]+) pixels", p)]
    return (f"if you trust the files, raise the limit with the environment variable {PIXEL_LIMIT_ENV} (e.g. "
            f"{PIXEL_LIMIT_ENV}={max(sizes, default=4 * pixel_limit())} python ...), or shrink them")


def image_problem(path: Path) -> str | None:
    """Why `path` is not a readable image, or None.

    Cheap: parses the header; a JPEG's end marker is read (one small read at each end of the file), a PNG's chunk
    checksums are verified without decoding (damage anywhere in the file is found); only JPEGs lacking the marker
    (truncated ones, or with trailing bytes) and other formats are decoded in full to decide. Images refused for
    their size start with OVERSIZE.
    """
    try:
        with _open(path) as img:
            if img.format == "PNG":
                img.verify()
                return None
            marker = IMAGE_END_MARKERS.get(img.format)
            if marker is not None:
                with open(path, "rb") as f:
                    f.seek(-len(marker), os.SEEK_END)
                    if f.read() == marker:
                        return None
            img.load()
    except Image.DecompressionBombError as e:
        return _oversize_text(e)
    except UserError:
        raise
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), SyntaxError (bad PNG checksum)...
        return f"{type(e).__name__}: {str(e)[:100]}"
    return None


def build_resize(resize: tuple[int, int]) -> T.Compose:
    """PIL image → uint8 tensor 3×H×W at the given (H, W)."""
    return T.Compose([T.ToImage(), T.Resize(list(resize), antialias=True)])


_SCALE = 1 / (255 * torch.tensor(IMAGENET_STD).view(3, 1, 1))  # uint8 → ImageNet-normalized float in one pass:
_SHIFT = -torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / torch.tensor(IMAGENET_STD).view(3, 1, 1)  # x·scale + shift


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 image 3×H×W (or B×3×H×W, any memory format, which the result keeps) → float32 (x/255 − mean)/std.

    Same values as ToDtype(scale=True) + Normalize up to rounding, and cheaper: one multiply-add over the pixels
    instead of a conversion, a division and a normalization.
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
    """Open an RGB image; ImageReadError naming the real cause (damaged file, or above PIL's pixel limit).

    target (H, W): the size the image will be resized to. A JPEG much larger than that is decoded at a reduced
    DCT scale (PIL draft mode: 1/2, 1/4 or 1/8) that stays >= DRAFT_MARGIN × target, which is faster and
    within ~1 grey level (mean) of a full decode after the resize.
    """
    try:
        with _open(path) as img:
            if target is not None:
                img.draft("RGB", (DRAFT_MARGIN * target[1], DRAFT_MARGIN * target[0]))
            return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, _oversize_text(e), f"image {path} is {_oversize_text(e)} (a guard against "
                             f"decompression bombs); {oversize_advice([_oversize_text(e)])}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(path, f"{type(e).__name__}: {str(e)[:100]}",
                             f"image {path} cannot be decoded ({e}); the file is damaged: replace or delete it"
                             ) from None
