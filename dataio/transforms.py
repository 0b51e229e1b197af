"""Image tensors without importing torchvision (its import pulls in torch._dynamo: seconds of every start-up).

`to_image` and `resize` give exactly the pixels of torchvision's `ToImage()` and `Resize(size, antialias=True)`
(bilinear) on the same input: the same operations, including torchvision's choice between resizing uint8 natively
and through float32 (tests/test_transforms.py compares both). The augmentations, which need torchvision's random
transforms, import it themselves (training/augmentations.py).
"""
from __future__ import annotations

import platform

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INTEGER_TYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def to_image(img: Image.Image | torch.Tensor) -> torch.Tensor:
    """PIL image → uint8 tensor C×H×W, a view of its H×W×C pixels (channels last in memory); a tensor as is."""
    if isinstance(img, torch.Tensor):
        return img
    pixels = torch.as_tensor(np.array(img, copy=True))
    return pixels.view(img.height, img.width, len(img.getbands())).permute(2, 0, 1)


def _uint8_native() -> bool:
    """Whether torch resizes uint8 images natively here (bilinear, antialiased): torchvision's test."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """…×C×H×W → …×C×h×w at size (h, w), bilinear with antialiasing, dtype and memory format kept."""
    shape, numel = image.shape, image.numel()
    c, h0, w0 = shape[-3:]
    h, w = size
    if (h, w) == (h0, w0):
        return image
    if numel == 0:
        return image.reshape(*shape[:-3], c, h, w)
    x = image.reshape(-1, c, h0, w0)
    strides = x.stride()
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[0] == 1 and numel != strides[0]:
        # one channels-last image: restrided so that interpolate keeps channels last (torch issue 68430)
        x = x.as_strided((1, c, h0, w0), (numel, *strides[1:]))
    native = x.dtype in (torch.float32, torch.float64) or (
        x.dtype == torch.uint8 and x.device.type == "cpu" and _uint8_native())
    out = F.interpolate(x if native else x.to(torch.float32), size=[h, w], mode="bilinear", align_corners=False,
                        antialias=True)
    if not native:
        out = (out.round_() if image.dtype in INTEGER_TYPES else out).to(image.dtype)
    return out.reshape(*shape[:-3], c, h, w)
