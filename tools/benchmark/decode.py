"""JPEG decoders side by side, and the non-forward part of an encode pass, against the ResNet-18-conv4 forward
pass they feed (issue 17).

    python -m tools.benchmark.decode [--images N] [--size H W] [--targets 480x640 240x320] [--repeats R]

Writes N JPEGs of H×W (random crops of tools/synthetic_world.py's map, quality 90, PIL's default 4:2:0). Per
target size, in `repeats` interleaved rounds (medians): each decoder installed, from file to a uint8 3×h×w tensor
at the target (1 thread, as a dataset item is read), the pixel cache's read (dataio/pixel_cache.py), and the
forward alone (batch 16 in memory, fp32 and bf16, --threads). share = t / (t + forward) per image: the part of an
encode pass (a mining refresh, a test) that is not forward with --num_workers 0. At the first target also the
whole non-forward part of such a pass (load, collate, to_input; --threads) from each image source, and the pass
from the pixel cache with glibc's heap kept (mallopt) against its default, where every tensor above 32 MiB (a
batch's input and activations at 480×640) is mapped fresh and page-faulted in, page by page, on every batch.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from commons import autocast
from dataio import images as images_mod
from dataio.images import build_resize, collate_images, load_image, open_image, to_input


def write_jpegs(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n JPEGs of size (H, W): random crops of a synthetic map (smooth noise + rectangles), quality 90."""
    from tools.synthetic_world import make_map, to_uint8
    h, w = size
    world = to_uint8(make_map(2 * max(h, w), seed=0)[None])[0].numpy()  # M×M×3 uint8
    rng, paths = np.random.default_rng(0), []
    for i in range(n):
        y, x = rng.integers(0, world.shape[0] - h + 1), rng.integers(0, world.shape[1] - w + 1)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(world[y:y + h, x:x + w]).save(paths[-1], quality=90)
    return paths


def decoders(target: tuple[int, int]) -> dict:
    """name → fn(path) → uint8 3×h×w tensor at `target`, for each decoder installed; the same final resize."""
    resize = build_resize(target)
    mh, mw = images_mod.DRAFT_MARGIN * target[0], images_mod.DRAFT_MARGIN * target[1]
    found = {"PIL": lambda p: resize(open_image(p, target)),
             "dataio.images.load_image": lambda p: load_image(p, target)}
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    found["torchvision.io"] = lambda p: resize(decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB))
    try:
        import simplejpeg
        found["simplejpeg"] = lambda p: resize(torch.from_numpy(simplejpeg.decode_jpeg(
            p.read_bytes(), "RGB", min_height=mh, min_width=mw)).permute(2, 0, 1))
    except ImportError:
        pass
    try:
        import cv2
        cv2.setNumThreads(1)
        found["opencv"] = lambda p: resize(torch.from_numpy(cv2.imdecode(
            np.fromfile(p, np.uint8), cv2.IMREAD_COLOR_RGB)).permute(2, 0, 1))
    except (ImportError, AttributeError):
        pass
    try:
        import imagecodecs
        found["imagecodecs"] = lambda p: resize(torch.from_numpy(imagecodecs.jpeg8_decode(
            p.read_bytes(), outcolorspace="RGB")).permute(2, 0, 1))
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG
        tj = TurboJPEG()  # needs the system's libturbojpeg
        found["PyTurboJPEG"] = lambda p: resize(torch.from_numpy(tj.decode(p.read_bytes(), TJPF_RGB)).permute(2, 0, 1))
    except (ImportError, RuntimeError, OSError) as e:
        print(f"  PyTurboJPEG skipped: {type(e).__name__}: {e}")
    return found


def one_round(runs: dict, items: list, threads: int, offset: int) -> dict[str, float]:
    """Seconds per item of each run(item), the runs taking turns on every item (their order rotated by offset):
    a slow spell of the shared machine hits every run alike."""
    torch.set_num_threads(threads)
    if not runs:
        return {}
    names, spent = list(runs)[offset % len(runs):] + list(runs)[:offset % len(runs)], dict.fromkeys(runs, 0.0)
    for item in items:
        for name in names:
            start = time.perf_counter()
            runs[name](item)
            spent[name] += time.perf_counter() - start
    return {k: v / len(items) for k, v in spent.items()}


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def set_heap(keep: bool) -> None:
    """glibc's malloc: keep freed memory in the heap (blocks up to 1 GiB from the heap, never trimmed), or its
    default's steady state (blocks above 32 MiB mapped fresh, each page faulted in on first touch, and unmapped)."""
    libc, limit = ctypes.CDLL(None), (1 << 30) if keep else (32 << 20)
    libc.mallopt(-3, limit), libc.mallopt(-1, 2 * limit)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    libc.malloc_trim(0)


def old_to_input(images: torch.Tensor, device: str, precision: str) -> torch.Tensor:
    """to_input before issue 17: a channels_last copy, then 3 factors broadcast over an innermost dimension of 3."""
    return torch.mul(images.contiguous(memory_format=torch.channels_last), images_mod._SCALE).add_(images_mod._SHIFT)


def measure(paths: list[Path], target: tuple[int, int], repeats: int, cache_dir: Path, encode: bool,
            cpus: int) -> None:
    """Print the table of one target size (see the module's doc)."""
    from dataio.pixel_cache import PixelCache
    from model.backbones import build_backbone
    cands = decoders(target)
    cache, index = PixelCache(paths, target, cache_dir), {p: i for i, p in enumerate(paths)}
    cands["pixel cache (read)"] = lambda p: cache.read(index[p])
    ref = [build_resize(target)(open_image(p, target)) for p in paths]
    for name, fn in cands.items():  # every candidate gives PIL's pixels within a few grey levels
        diffs = [(fn(p).int() - r.int()).abs().float() for p, r in zip(paths, ref)]
        print(f"  {name}: |pixel - PIL's| max {max(d.max().item() for d in diffs):.0f}, "
              f"mean {statistics.mean(d.mean().item() for d in diffs):.4f}")
    net = build_backbone("resnet18conv4", False, "gem").net.eval().to(memory_format=torch.channels_last)
    batches = [list(range(i, i + 16)) for i in range(0, len(paths) - 15, 16)] or [list(range(len(paths)))]
    xs = {p: to_input(torch.stack([ref[i] for i in batches[0]]), "cpu", p) for p in ("fp32", "bf16")}

    def forward(precision: str) -> None:
        with torch.no_grad(), autocast("cpu", precision):
            net(xs[precision]).mean((2, 3)).float()  # the mean stands in for the aggregation

    def prepare(load, collate, prep, batch: list[int]) -> None:
        prep(collate([(load(i), i) for i in batch])[0], "cpu", "fp32")
    forwards = {"fp32": lambda b: forward("fp32"), "bf16": lambda b: forward("bf16")}
    pil = build_resize(target)
    sources = {name: functools.partial(prepare, *how) for name, how in {
        "today: PIL, default_collate, old to_input": (lambda i: pil(open_image(paths[i], target)), default_collate,
                                                      old_to_input),
        "load_image, default_collate, to_input": (lambda i: load_image(paths[i], target), default_collate, to_input),
        "load_image, collate_images, to_input": (lambda i: load_image(paths[i], target), collate_images, to_input),
        "pixel cache, collate_images, to_input": (cache.read, collate_images, to_input)}.items()} if encode else {}
    [fn(batches[0][:1]) for fn in [*forwards.values(), *sources.values()]]  # warm-up: oneDNN builds its primitives
    t = medians([{**one_round(cands, paths, 1, r),  # a decoder runs in one thread whatever torch's setting
                  **{k: s / len(batches[0]) for k, s in one_round(forwards, batches[:1], cpus, r).items()},
                  **{k: s / len(batches[0]) for k, s in one_round(sources, batches, cpus, r).items()}}
                 for r in range(repeats)])
    print(f"\ntarget {target[0]}x{target[1]}, medians of {repeats} rounds: forward alone (batch 16, {cpus} threads) "
          f"fp32 {1 / t['fp32']:.1f} images/s, bf16 {1 / t['bf16']:.1f} images/s")
    for title, names in (("decoder (1 thread)", cands), ("non-forward part of a pass", sources)):
        print(f"{title:<42} {'images/s':>9} {'vs first':>9} {'share fp32':>11} {'share bf16':>11}")
        for name in names:
            print(f"{name:<42} {1 / t[name]:9.1f} {t[next(iter(names))] / t[name]:9.2f} "
                  f"{t[name] / (t[name] + t['fp32']):11.1%} {t[name] / (t[name] + t['bf16']):11.1%}")
    if encode:  # the same pass with glibc's heap kept: no fresh pages (and page faults) for every big tensor
        runs, rounds = {**forwards, "non-forward": sources["pixel cache, collate_images, to_input"]}, []
        for r in range(repeats):
            rounds.append({})
            for keep in (r % 2 == 0, r % 2 == 1):
                set_heap(keep)
                rounds[-1] |= {(k, keep): s / 16 for k, s in one_round(runs, batches[:2], cpus, r).items()}
        set_heap(False)
        h = medians(rounds)
        print(f"{'from the pixel cache, with the heap':<42} {'fp32 img/s':>11} {'bf16 img/s':>11} {'share fp32':>11} "
              f"{'share bf16':>11}")
        for keep, title in ((False, "glibc's steady state (32 MiB)"), (True, "kept (mallopt 1 GiB)")):
            n, f, b = h["non-forward", keep], h["fp32", keep], h["bf16", keep]
            print(f"{title:<42} {1 / f:11.1f} {1 / b:11.1f} {n / (n + f):11.1%} {n / (n + b):11.1%}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"), help="of the JPEGs")
    p.add_argument("--targets", nargs="+", default=["480x640", "240x320"], help="resize targets HxW")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="of the forward and the non-forward "
                   "part (default: all); 1 gives shares that a busy machine does not skew")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images, tuple(args.size))
        for i, t in enumerate(args.targets):
            h, w = (int(v) for v in t.lower().split("x"))
            measure(paths, (h, w), args.repeats, Path(tmp) / f"cache_{h}x{w}", i == 0, args.threads)


if __name__ == "__main__":
    main()
