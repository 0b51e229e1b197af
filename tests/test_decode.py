"""dataio.images.decode_rgb / load_image (simplejpeg) against open_image (PIL): the same pixels, the same errors.

Tolerance: over 64 480×640 views of the synthetic world (quality 90, 4:2:0) at targets none, 480×640, 240×320,
120×160 and 60×80 (draft scales 1, 2, 4), and over every kind below, simplejpeg's pixels are bit-identical to
PIL's (max and mean |difference| 0: both are libjpeg-turbo with the accurate integer IDCT and fancy
upsampling; PIL 13.0.0 bundles 3.2.0, simplejpeg 1.9.0 bundles 3.1.2). The test allows 1 grey level (mean 0.01) for a
rounding change of a libjpeg-turbo update, and still fails for the fast IDCT (max 6, mean 1.0) or fast upsampling
(max 117, mean 5.2) measured on the same views.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

import dataio.images as images
from commons import UserError
from dataio.images import ImageReadError, build_resize, decode_rgb, load_image, open_image

MAX_DIFF, MEAN_DIFF = 1, 0.01
TARGETS = [None, (24, 32), (60, 80), (120, 160), (480, 640)]


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """h×w×3 uint8: smooth gradients plus solid rectangles (edges and flat areas, like the synthetic world)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([128 + 100 * np.sin(6 * x + c) * np.cos(5 * y - c) for c in range(3)], -1)
    for _ in range(12):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        img[y0:y0 + rng.integers(2, h // 2 + 3), x0:x0 + rng.integers(2, w // 2 + 3)] = rng.integers(0, 256, 3)
    return img.clip(0, 255).astype(np.uint8)


KINDS = {  # name: (H, W, PIL mode, save options)
    "420 q90": (480, 640, "RGB", {"quality": 90}),
    "444 q95": (97, 131, "RGB", {"quality": 95, "subsampling": 0}),
    "422 q75 odd": (61, 83, "RGB", {"quality": 75, "subsampling": 1}),
    "progressive": (240, 320, "RGB", {"quality": 90, "progressive": True}),
    "grey": (120, 160, "L", {"quality": 90}),
    "large": (1000, 1500, "RGB", {"quality": 85}),  # draft scale 8 at 60×80
}


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("jpegs")
    paths = {}
    for i, (name, (h, w, mode, options)) in enumerate(KINDS.items()):
        paths[name] = folder / f"{i}.jpg"
        Image.fromarray(scene(h, w, i)).convert(mode).save(paths[name], **options)
    return paths


def pil_pixels(path: Path, target) -> torch.Tensor:
    return F.pil_to_tensor(open_image(path, target))


@pytest.mark.parametrize("kind", KINDS)
def test_decode_gives_pils_pixels(jpegs, kind) -> None:
    for target in TARGETS:
        ours, ref = decode_rgb(jpegs[kind], target), pil_pixels(jpegs[kind], target)
        assert ours.dtype == torch.uint8 and ours.shape == ref.shape  # the same draft scale
        assert ours.stride() == ref.stride()  # the same memory layout: 3×h×w view of h×w×3
        diff = (ours.int() - ref.int()).abs()
        assert diff.max() <= MAX_DIFF and diff.float().mean() <= MEAN_DIFF, (kind, target)
        if target is not None:
            ours, ref = load_image(jpegs[kind], target), build_resize(target)(open_image(jpegs[kind], target))
            assert ours.shape == ref.shape == (3, *target)
            assert (ours.int() - ref.int()).abs().max() <= MAX_DIFF


def test_draft_scale_is_pils(jpegs) -> None:
    for kind, (h, w, _, _) in KINDS.items():
        for target in TARGETS:
            s = images.draft_scale((h, w), target)
            assert open_image(jpegs[kind], target).size == ((w + s - 1) // s, (h + s - 1) // s)


def test_jpegs_take_the_fast_path(jpegs, monkeypatch) -> None:
    monkeypatch.setattr(images, "open_image", lambda *a: pytest.fail("fell back to PIL"))
    assert decode_rgb(jpegs["420 q90"], (120, 160)).shape == (3, 240, 320)


def _fallback_cases(folder: Path) -> dict[str, Path]:
    """Files simplejpeg must leave to PIL: another format, CMYK, damaged in the middle (PIL decodes it anyway)."""
    cases = {"png": folder / "a.png", "cmyk": folder / "cmyk.jpg", "corrupt": folder / "corrupt.jpg"}
    Image.fromarray(scene(30, 40)).save(cases["png"])
    Image.fromarray(scene(30, 40)).convert("CMYK").save(cases["cmyk"], quality=90)
    data = io.BytesIO()
    Image.fromarray(scene(64, 48)).save(data, "JPEG", quality=90)
    raw = data.getvalue()
    cases["corrupt"].write_bytes(raw[:200] + bytes(50) + raw[250:])  # libjpeg warns, PIL goes on
    return cases


def test_what_simplejpeg_refuses_is_decoded_by_pil(tmp_path) -> None:
    for name, path in _fallback_cases(tmp_path).items():
        assert images._decode_jpeg(path.read_bytes(), None) is None, name  # refused by simplejpeg
        for target in (None, (8, 10)):
            assert torch.equal(decode_rgb(path, target), pil_pixels(path, target)), name


def _same_error(path: Path, target=None) -> str:
    with pytest.raises(ImageReadError) as theirs:
        open_image(path, target)
    with pytest.raises(ImageReadError) as ours:
        decode_rgb(path, target)
    assert str(ours.value) == str(theirs.value) and ours.value.reason == theirs.value.reason
    return ours.value.reason


def test_damaged_and_missing_files_keep_open_images_errors(jpegs, tmp_path) -> None:
    raw = jpegs["420 q90"].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8" + bytes(100))
    assert "truncated" in _same_error(tmp_path / "truncated.jpg", (24, 32))
    _same_error(tmp_path / "garbage.jpg")
    _same_error(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError):
        load_image(tmp_path / "truncated.jpg", (24, 32))


def test_pixel_limit_still_applies(jpegs, monkeypatch) -> None:
    monkeypatch.setenv(images.PIXEL_LIMIT_ENV, str(480 * 640 - 1))
    assert _same_error(jpegs["420 q90"]).startswith(images.OVERSIZE)
    monkeypatch.setenv(images.PIXEL_LIMIT_ENV, str(480 * 640))
    assert decode_rgb(jpegs["420 q90"]).shape == (3, 480, 640)
    monkeypatch.setenv(images.PIXEL_LIMIT_ENV, "many")
    with pytest.raises(UserError, match="not a positive number"):
        decode_rgb(jpegs["420 q90"])


def test_collate_images_keeps_channels_last_memory(jpegs) -> None:
    from torch.utils.data import DataLoader, default_collate
    from dataio.images import collate_images
    items = [(load_image(jpegs["420 q90"], (24, 32)), 0), (load_image(jpegs["progressive"], (24, 32)), 1)]
    ours, theirs = collate_images(items), default_collate(items)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert ours[0].is_contiguous(memory_format=torch.channels_last)  # to_input lays nothing out again
    triplets = [(torch.stack([items[0][0]] * 2), torch.tensor([0, 1]))] * 3  # TripletsDataset items: 5-D batches
    assert torch.equal(collate_images(triplets)[0], default_collate(triplets)[0])
    worker = next(iter(DataLoader(items, batch_size=2, num_workers=1, collate_fn=collate_images)))
    assert torch.equal(worker[0], theirs[0]) and worker[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["channels_last", "nchw", "hwc image", "chw image", "strided"])
def test_normalize_is_the_same_multiply_add_in_every_layout(layout) -> None:
    from dataio.images import _SCALE, _SHIFT, normalize
    g = torch.Generator().manual_seed(0)
    x = {"channels_last": lambda t: t.permute(0, 3, 1, 2), "nchw": lambda t: t.permute(0, 3, 1, 2).contiguous(),
         "hwc image": lambda t: t[0].permute(2, 0, 1), "chw image": lambda t: t[0].permute(2, 0, 1).contiguous(),
         "strided": lambda t: t.permute(0, 3, 1, 2)[:, :, 1:, ::2]}[layout](
        torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, generator=g))
    before = x.clone()
    out, ref = normalize(x), torch.mul(x, _SCALE).add_(_SHIFT)  # the formula before the row-wise loop
    assert torch.equal(out, ref) and out.stride() == ref.stride() and torch.equal(x, before)


def _thread_of(barrier):
    """A task that waits (at most 10 s) until `barrier.parties` tasks run at once (the first item, loaded alone,
    does not wait), then names its thread."""
    def task(x: int) -> tuple[int, str]:
        if x != 0:
            barrier.wait(timeout=10)
        return x, threading.current_thread().name
    return task


@pytest.fixture
def two_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(images, "PARALLEL_MIN_S", 0.0)  # every first item counts as slow: the rest go to threads
    yield
    torch.set_num_threads(before)


def test_map_loading_runs_the_items_at_once_in_order_and_raises_their_error(two_torch_threads) -> None:
    out = images.map_loading(_thread_of(threading.Barrier(2)), [0, 5, 7])  # 5 and 7 would time out one by one
    assert [x for x, _ in out] == [0, 5, 7] and all(name.startswith("load") for _, name in out[1:])

    def fail_on_3(x: int) -> int:
        if x == 3:
            raise ValueError("damaged: 3")
        return x
    with pytest.raises(ValueError, match="damaged: 3"):
        images.map_loading(fail_on_3, [1, 2, 3, 4])


def _names(items: list[int]) -> list[tuple[int, str]]:
    return images.map_loading(lambda x: (x, threading.current_thread().name), items)


def test_map_loading_is_one_by_one_with_one_torch_thread_or_fast_items(monkeypatch) -> None:
    here = threading.current_thread().name
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as in a DataLoader worker
        monkeypatch.setattr(images, "PARALLEL_MIN_S", 0.0)
        assert _names([1, 2, 3]) == [(x, here) for x in (1, 2, 3)]
        torch.set_num_threads(2)
        monkeypatch.setattr(images, "PARALLEL_MIN_S", 1e9)  # the first item was fast: no hand-off to threads
        assert _names([1, 2, 3]) == [(x, here) for x in (1, 2, 3)]
    finally:
        torch.set_num_threads(before)


def test_map_loading_works_in_a_forked_child_of_a_process_that_used_it(two_torch_threads) -> None:
    images.map_loading(_thread_of(threading.Barrier(2)), [0, 1, 2])  # the parent's pool has all its threads;
    # none survives a fork: a child reusing the pool would wait forever for threads it thinks are idle
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=lambda: child.send(images.map_loading(abs, [-3, -4, -5, -6])))
    proc.start()
    ready = parent.poll(timeout=30)
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
    assert ready and parent.recv() == [3, 4, 5, 6]
