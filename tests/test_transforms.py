"""dataio/transforms.py against torchvision, which it replaces on the data path: the same pixels, bit for bit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image

from dataio.transforms import resize, to_image

ROOT = Path(__file__).resolve().parents[1]


def pil_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_to_image_is_torchvisions_pixels_and_layout() -> None:
    img = pil_image(37, 53)
    ours, theirs = to_image(img), T.ToImage()(img)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 37, 53) and torch.equal(ours, theirs)
    assert ours.stride() == theirs.stride()  # channels last in memory, as decoding gives
    x = torch.zeros(3, 4, 5, dtype=torch.uint8)
    assert to_image(x) is x


@pytest.mark.parametrize("native", [True, False], ids=["uint8_native", "through_float32"])
@pytest.mark.parametrize("src, size", [((480, 640), (32, 32)), ((37, 53), (24, 40)), ((20, 30), (48, 64)),
                                       ((32, 32), (32, 32))])
def test_resize_equals_torchvisions_resize(src, size, native, monkeypatch) -> None:
    """PIL images and uint8 / float tensors, single and batched: torchvision's Resize(size, antialias=True) exactly.
    Without native uint8 resizing (torch's capability DEFAULT), both go through float32 and round."""
    if not native:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    reference = T.Compose([T.ToImage(), T.Resize(list(size), antialias=True)])
    img = pil_image(*src)
    ours = resize(to_image(img), size)
    assert ours.dtype == torch.uint8 and torch.equal(ours, reference(img))
    assert ours.is_contiguous(memory_format=torch.channels_last) == reference(img).is_contiguous(
        memory_format=torch.channels_last)
    batch = torch.stack([to_image(pil_image(*src, seed=s)) for s in range(3)])  # 3×3×H×W, contiguous
    assert torch.equal(resize(batch, size), T.Resize(list(size), antialias=True)(batch))
    floats = batch.float() / 255
    assert torch.equal(resize(floats, size), T.Resize(list(size), antialias=True)(floats))


def test_eval_and_train_import_no_torchvision() -> None:
    """Start-up: train.py and eval.py (and the model of a checkpoint, a ResNet) import no torchvision."""
    code = ("import sys, train, eval; from network import build_model; "
            "build_model({'backbone': 'resnet18conv4', 'aggregation': 'gem'}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'torch._dynamo')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
