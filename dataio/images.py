"""Image files to tensors: checking and opening with clear errors, JPEG decoding (simplejpeg, PIL for the rest) with
draft scaling, resize, channels-last batches, normalization."""
from __future__ import annotations

import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import simplejpeg
import torch
from torch.utils.data import default_collate
from PIL import Image, UnidentifiedImageError

from commons import UserError, uses_channels_last
from dataio.transforms import resize, to_image

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


def build_resize(size: tuple[int, int]) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
    """PIL image (or uint8 tensor 3×h×w) → uint8 tensor 3×H×W at the given (H, W): torchvision's ToImage() and
    Resize(size, antialias=True), without importing it (dataio/transforms.py)."""
    return lambda img: resize(to_image(img), tuple(size))


_SCALE = 1 / (255 * torch.tensor(IMAGENET_STD).view(3, 1, 1))  # uint8 → ImageNet-normalized float in one pass:
_SHIFT = -torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / torch.tensor(IMAGENET_STD).view(3, 1, 1)  # x·scale + shift


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 image 3×H×W (or B×3×H×W, any memory format, which the result keeps) → float32 (x/255 − mean)/std.

    Same values as ToDtype(scale=True) + Normalize up to rounding, and cheaper: a conversion and one multiply-add
    over the pixels instead of a conversion, a division and a normalization. Channels-last pixels (what decoding
    and the pixel cache give, and what to_input lays out on a CPU) are taken as rows of W·3 values, multiplied by
    a row of W·3 factors: a vectorized loop, ~2× faster than broadcasting 3 per-channel factors over an innermost
    dimension of 3 (tools/benchmark/decode.py, "to_input").
    """
    x = image.to(torch.float32, copy=True)  # keeps the memory format
    scale, shift = _SCALE.to(x.device), _SHIFT.to(x.device)
    last = x.movedim(-3, -1)  # …×H×W×3: a view, contiguous when the channels are innermost in memory
    if last.is_contiguous() and x.numel():
        rows = last.view(-1, last.shape[-2] * 3)
        rows.mul_(scale.view(3).repeat(last.shape[-2])).add_(shift.view(3).repeat(last.shape[-2]))
        return x
    return x.mul_(scale).add_(shift)


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


def stack_channels_last(images: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.stack of uint8 images …×3×H×W whose memory is channels last (what decode_rgb, load_image and the
    pixel cache give): the result is channels_last too, a plain copy. torch.stack (default_collate) would transpose
    every image to NCHW, which to_input then transposes back: two strided copies per image. out: B×…×H×W×3."""
    return torch.stack([im.movedim(-3, -1) for im in images], out=out).movedim(-1, -3)


def collate_images(batch: list[tuple]) -> list:
    """DataLoader collate_fn for items (image …×3×H×W, anything): default_collate, but the images are stacked by
    stack_channels_last (in shared memory inside a loader worker, as default_collate does)."""
    images, *rest = zip(*batch)
    out = None
    if torch.utils.data.get_worker_info() is not None:  # a worker: build the batch in shared memory, no copy later
        shape = (len(images), *images[0].movedim(-3, -1).shape)
        out = images[0].new(images[0].untyped_storage()._new_shared(math.prod(shape))).view(shape)
    return [stack_channels_last(images, out), *(default_collate(list(r)) for r in rest)]


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


JPEG_START = b"\xff\xd8"  # SOI: the first bytes of every JPEG file


def draft_scale(size: tuple[int, int], target: tuple[int, int] | None) -> int:
    """The DCT scale (1, 2, 4 or 8) open_image's draft decoding picks for an image of size (H, W) resized to target:
    PIL's rule, the largest that keeps both sides >= DRAFT_MARGIN × target."""
    if target is None:
        return 1
    fits = min(size[1] // (DRAFT_MARGIN * target[1]), size[0] // (DRAFT_MARGIN * target[0]))
    return next((s for s in (8, 4, 2, 1) if fits >= s), 1)


def _decode_jpeg(data: bytes, target: tuple[int, int] | None) -> torch.Tensor | None:
    """libjpeg-turbo through simplejpeg: the pixels open_image gives (same library, same IDCT, same draft scale), or
    None for anything it does not take as is: not a JPEG, CMYK/YCCK, a damaged file (strict: libjpeg's warnings are
    errors too), above the pixel limit. open_image then decides, with today's results and errors."""
    if not data.startswith(JPEG_START):
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray", "RGB") or h * w > (_pixel_limit_from_env() or _PIL_PIXEL_LIMIT):
            return None  # PIL converts CMYK its own way, and warns above its guard or refuses with our advice
        s = draft_scale((h, w), target)
        size = ((h + s - 1) // s, (w + s - 1) // s)  # PIL's draft size
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=size[0], min_width=size[1], min_factor=s)
    except ValueError:  # simplejpeg's one error type: unsupported or damaged
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1) if pixels.shape[:2] == size else None


def decode_rgb(path: Path, target: tuple[int, int] | None = None) -> torch.Tensor:
    """The pixels of open_image(path, target) as a uint8 tensor 3×h×w (a view of h×w×3 memory, as
    torchvision's ToImage gives), ~1.5× faster for JPEGs (tools/benchmark/decode.py): JPEGs are decoded by
    simplejpeg, anything else (or any JPEG it refuses) by open_image, with its errors."""
    try:
        with open(path, "rb") as f:
            pixels = _decode_jpeg(f.read(), target)
    except OSError:  # missing, unreadable: open_image's error
        pixels = None
    return pixels if pixels is not None else to_image(open_image(path, target))


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Image file → uint8 tensor 3×H×W at size (H, W): decode_rgb with draft decoding, then the resize."""
    return resize(decode_rgb(path, tuple(size)), tuple(size))


T, R = TypeVar("T"), TypeVar("R")
_pool: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, threads) → the pool of that process
PARALLEL_MIN_S = 3e-4  # an item loaded faster is not worth a hand-off to a thread (~0.1 ms: a 32-px file)


def map_loading(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """[fn(x) for x in items], spread over torch.get_num_threads() threads: JPEG decoding and the resize release the
    GIL, so a batch loaded in the main process (--num_workers 0) uses the cores the model uses, instead of one. The
    first item is loaded here and timed: below PARALLEL_MIN_S (tiny files) the rest follow one by one too. One by one
    where torch has one thread (a DataLoader worker: the workers are the parallelism there). Same results, same
    order, the first error raised."""
    threads = torch.get_num_threads()
    if threads < 2 or len(items) < 3:
        return [fn(x) for x in items]
    start = time.perf_counter()
    first = fn(items[0])
    if time.perf_counter() - start < PARALLEL_MIN_S:
        return [first] + [fn(x) for x in items[1:]]
    key = (os.getpid(), threads)  # a forked child has none of its parent's threads: a pool of its own
    if key not in _pool:
        _pool[key] = ThreadPoolExecutor(threads, thread_name_prefix="load")
    return [first] + list(_pool[key].map(fn, items[1:]))
