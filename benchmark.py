"""Speed benchmark on the current machine: every figure beside the machine's own limit, measured in the same run.

python benchmark.py [--quick] [--out bench.json] [--device cpu|cuda] [--resize 480 640]

Limit of a pass = its FLOPs (FlopCounterMode) / the matmul rate in that precision (the best of a large torch.matmul
and the same product as a 1×1 convolution, timed in this run). Extraction and training are measured end to end on JPEG files written by the run (decode, resize,
normalize, forward: evaluation.extract_features and train.train_on_triplets) and on in-memory tensors ("model").
A cache refresh is split into forward passes (from the measured rates), loading, and mining (mining.mine_full
with a timed stand-in encoder). Figures are the best of --repeats runs. See docs/performance.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

import train
from commons import UserError, autocast, prepare_model, run_cli, to_input, tune_allocator
from datasets_ws import BaseDataset, TripletsDataset, radius_neighbors
from evaluation import extract_features
from indexing import build_index, search
from losses import build_criterion
from mining import MiningContext, mine_full, mine_random
from network import build_model
from optim import build_optimizer
from parser import train_parser
from util import write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AGGREGATIONS = ("gem", "netvlad")
SIZES = {  # a training step: `queries` queries × (2 + negs) images; cache_queries: queries per cache refresh;
    # warmup: run each measurement once untimed first (one-time costs: oneDNN primitives, worker start-up)
    "full": {"resize": (480, 640), "images": 64, "batch": 16, "queries": 4, "negs": 10, "steps": 6, "repeats": 3,
             "num_workers": 2, "cache_db": 10000, "cache_queries": 1000, "neg_samples": 1000, "matmul_max": 4096,
             "matmul_call_s": 0.25, "warmup": True},
    "quick": {"resize": (32, 32), "images": 6, "batch": 4, "queries": 2, "negs": 1, "steps": 1, "repeats": 1,
              "num_workers": 0, "cache_db": 300, "cache_queries": 30, "neg_samples": 50, "matmul_max": 512,
              "matmul_call_s": 0.02, "warmup": False},
}
OVERRIDES = ("images", "batch", "steps", "repeats", "num_workers", "cache_db")
SEARCH_K = 20
SPACING_M = 30.0  # metres between the benchmark's database images: each query has exactly one positive


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags; a.size holds the sizes of the mode with the overrides applied."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (CI)")
    p.add_argument("--out", default="bench.json", help="JSON file with all figures")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--resize", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 480 640")
    p.add_argument("--precisions", nargs="+", choices=sorted(DTYPES), default=None,
                   help="default: fp32 bf16 (+ fp16 on CUDA)")
    p.add_argument("--aggregations", nargs="+", choices=AGGREGATIONS, default=list(AGGREGATIONS))
    for key in OVERRIDES:
        p.add_argument(f"--{key}", type=int, default=None, help=f"override the mode's {key} (see SIZES)")
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    a.precisions = a.precisions or (["fp32", "bf16", "fp16"] if a.device == "cuda" else ["fp32", "bf16"])
    if "fp16" in a.precisions and a.device == "cpu":
        raise UserError("--precisions fp16 needs CUDA; on CPU use fp32 and bf16")
    a.size = {**SIZES["quick" if a.quick else "full"],
              **{k: getattr(a, k) for k in OVERRIDES if getattr(a, k) is not None}}
    a.size["resize"] = tuple(a.resize or a.size["resize"])
    s = a.size
    if min(s["batch"], s["steps"], s["repeats"], *s["resize"]) < 1 or s["num_workers"] < 0 \
            or min(s["images"], s["cache_db"]) <= s["negs"]:
        raise UserError(f"sizes out of range ({ {k: s[k] for k in OVERRIDES} }, --resize {s['resize']}); use "
                        f"positive values, --num_workers >= 0, --images and --cache_db above {s['negs']}")
    return a


def timed(fn, device: str) -> float:
    """Wall seconds of fn(), with the device synchronized before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def gemm_call(kernel: str, n: int, dtype: torch.dtype, device: str):
    """A call computing one n×n×n matrix product (2·n³ FLOPs) with torch.matmul or as a 1×1 convolution."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    if kernel == "matmul":
        return lambda: torch.matmul(a, b)
    x = a.T.reshape(1, n, n, 1).contiguous(memory_format=torch.channels_last)  # 1×C×H×W with C = H = n
    w = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    return lambda: F.conv2d(x, w)


def gemm_rates(device: str, precision: str, max_n: int, call_s: float) -> dict[str, float]:
    """The machine's compute limit in a precision: best FLOP/s of a square matrix product, by torch.matmul and by
    a 1×1 convolution (the oneDNN/cuDNN route of convolutions; on CPUs without native bf16, torch.matmul falls back
    to a slow kernel and convolutions do not). n doubles from 256 until a call takes call_s or n reaches max_n."""
    rates = {}
    for kernel in ("matmul", "conv1x1"):
        n = 256
        while True:
            fn = gemm_call(kernel, n, DTYPES[precision], device)
            secs = min(timed(fn, device) for _ in range(3))
            rates[kernel] = max(rates.get(kernel, 0.0), 2 * n ** 3 / secs)
            if secs >= call_s or n >= max_n:
                break
            n *= 2
    return rates


def train_args(a: argparse.Namespace, aggregation: str, precision: str, workers: int) -> argparse.Namespace:
    """train.py's defaults with the benchmark's model, sizes, precision and loader workers."""
    s = a.size
    return train_parser().parse_args([
        "--aggregation", aggregation, "--precision", precision, "--num_workers", str(workers), "--pretrain", "none",
        "--resize", *map(str, s["resize"]), "--train_batch_size", str(s["queries"]), "--negs_num_per_query",
        str(s["negs"]), "--neg_samples_num", str(s["neg_samples"]), "--infer_batch_size", str(s["batch"])])


def make_model(args, device: str) -> torch.nn.Module:
    """The model of args, the blocks before the last frozen as in a default (ImageNet-initialized) training run."""
    model = build_model(args)
    for child in list(model.backbone.children())[:-1]:  # what backbones.build_backbone freezes when pretrained
        child.requires_grad_(False)
    return prepare_model(model, device, args.precision)


def count_flops(args, images: int, step: bool) -> int:
    """FLOPs of a forward pass over `images` images, or of a training step (forward, loss, backward)."""
    with torch.device("meta"):
        model = make_model(args, "meta")
        x = torch.empty(images, 3, *args.resize)
    with FlopCounterMode(display=False) as counter:
        if not step:
            with torch.no_grad():
                model(x)
        else:
            feats = model(x).view(args.train_batch_size, -1, model.out_dim)
            build_criterion(args.criterion, args.margin)(feats[:, 0], feats[:, 1], feats[:, 2:]).backward()
    return counter.get_total_flops()


def write_world(root: Path, n_db: int, n_q: int, resize: tuple[int, int]) -> None:
    """Dataset 'bench' (split train, datasets_vg layout) of JPEGs at resize: crops of a synthetic map."""
    from tools.synthetic_world import make_map, to_uint8
    h, w = resize
    world = to_uint8(make_map(2 * max(h, w), seed=0)[None])[0].numpy()  # M×M×3 uint8
    rng = np.random.default_rng(0)
    for kind, n, offset in (("database", n_db, 0.0), ("queries", n_q, 1.0)):
        folder = root / "bench" / "images" / "train" / kind
        folder.mkdir(parents=True)
        for i in range(n):
            y, x = rng.integers(0, world.shape[0] - h + 1), rng.integers(0, world.shape[1] - w + 1)
            name = f"@{500000 + SPACING_M * i + offset:.2f}@{4400000:.2f}@bench@{kind}@{i:05d}@.jpg"
            Image.fromarray(world[y:y + h, x:x + w]).save(folder / name, quality=90)


class TensorTriplets(Dataset):
    """Stand-in for TripletsDataset without files: every item is the same in-memory (2+K)×3×H×W tensor."""

    def __init__(self, images: torch.Tensor):
        self.images, self.triplets = images, np.zeros((0, 2), dtype=np.int64)

    def set_triplets(self, triplets: np.ndarray) -> None:
        self.triplets = triplets

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, torch.from_numpy(self.triplets[i])

    def __len__(self) -> int:
        return len(self.triplets)


def train_rate(model, ds, make_triplets, args, device: str, s: dict) -> float:
    """Triplets/s (query × negative pairs) of train.train_on_triplets over s["steps"] steps.

    make_triplets(n) gives n triplets n×(2+K) of ds.
    """
    optimizer = build_optimizer(train.param_groups(model, args), args)
    criterion = build_criterion(args.criterion, args.margin)

    def run(n_steps: int) -> float:
        triplets = make_triplets(n_steps * args.train_batch_size)
        return timed(lambda: train.train_on_triplets(model, ds, triplets, optimizer, criterion, args, device,
                                                     "benchmark"), device)
    if s["warmup"]:
        run(1)
    return s["steps"] * args.train_batch_size * args.negs_num_per_query / min(run(s["steps"])
                                                                              for _ in range(s["repeats"]))


@torch.no_grad()
def model_rate(model, args, device: str, n: int, s: dict, channels_last: bool = False) -> float:
    """Images/s of the model alone: ceil(n / batch) in-memory batches, run as extract_features' loop runs them."""
    batch = args.infer_batch_size
    model.eval()
    x = torch.randn(batch, 3, *args.resize)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def forward() -> np.ndarray:
        with autocast(device, args.precision):
            return model(to_input(x, device, args.precision)).float().cpu().numpy()
    if s["warmup"]:
        forward()
    batches = -(-n // batch)
    return batches * batch / min(timed(lambda: [forward() for _ in range(batches)], device)
                                 for _ in range(s["repeats"]))


def extract_rate(model, ds, args, device: str, s: dict) -> float:
    """Images/s of evaluation.extract_features over all of ds (JPEG files to descriptors)."""
    extract = lambda ids: extract_features(model, ds, ids, args.infer_batch_size, args.num_workers, device,  # noqa
                                           args.precision)
    if s["warmup"]:
        extract(range(min(args.infer_batch_size, len(ds))))
    return len(ds) / min(timed(lambda: extract(range(len(ds))), device) for _ in range(s["repeats"]))


def loader_rate(ds, device: str, s: dict) -> float:
    """Images/s of the data loader alone (JPEG decode, resize, normalize, collate), built as extract_features does."""
    loader = DataLoader(ds, batch_size=s["batch"], num_workers=s["num_workers"], pin_memory=device == "cuda")
    return len(ds) / min(timed(lambda: [None for _ in loader], "cpu") for _ in range(s["repeats"]))


def mining_seconds(dim: int, n_db: int, n_q: int, args) -> float:
    """Seconds of a mining.mine_full refresh minus its encoder (a timed stand-in giving random descriptors),
    n_db database images at ~20 soft positives per query; the second of two refreshes (negative cache filled)."""
    rng = np.random.default_rng(0)
    db = rng.uniform(0, np.sqrt(n_db * 100.0), (n_db, 2))
    q = db[rng.integers(0, n_db, n_q)] + rng.normal(0, 3.0, (n_q, 2))
    ds = SimpleNamespace(database_num=n_db, positives_per_query=radius_neighbors(db, q, 10.0),
                         soft_positives_per_query=radius_neighbors(db, q, 25.0))
    query_ids = np.array([i for i, p in enumerate(ds.positives_per_query) if len(p)])
    encode_s = 0.0

    def encode(indices: np.ndarray, desc: str) -> np.ndarray:
        nonlocal encode_s
        start = time.perf_counter()
        f = rng.standard_normal((len(indices), dim), dtype=np.float32)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        encode_s += time.perf_counter() - start
        return f
    ctx = MiningContext(None, ds, args, "cpu", np.full((n_q, args.negs_num_per_query), -1), encode=encode)
    mine_full(ctx, query_ids)
    encode_s = 0.0
    return timed(lambda: mine_full(ctx, query_ids), "cpu") - encode_s


def search_seconds(dim: int, n_db: int, n_q: int, repeats: int) -> float:
    """Seconds per query of an exact faiss search (indexing.search, k=SEARCH_K) over n_db random descriptors."""
    rng = np.random.default_rng(1)
    index = build_index(rng.standard_normal((n_db, dim), dtype=np.float32), "flat")
    q = rng.standard_normal((n_q, dim), dtype=np.float32)
    return min(timed(lambda: search(index, q, SEARCH_K), "cpu") for _ in range(repeats)) / n_q


def figure(value: float, unit: str, limit: float | None = None, rate: bool = True) -> dict:
    """One figure; ratio = share of the limit reached (value/limit for rates, limit/value for durations)."""
    ratio = None if not limit else (value / limit if rate else limit / value)
    return {"value": float(value), "unit": unit, "limit": None if limit is None else float(limit), "ratio": ratio}


def measure_models(a, root: Path, limits: dict, figs: dict, notes: list) -> dict[str, dict[str, dict]]:
    """Loader, extraction and training figures for every aggregation × precision; returns rates[agg][precision]."""
    s, rates = a.size, {}
    ds, tds = (cls(str(root), "bench", "train", s["resize"]) for cls in (BaseDataset, TripletsDataset))
    loader = loader_rate(ds, a.device, s)
    figs["loader"] = figure(loader, "img/s")
    for agg in a.aggregations:
        args = train_args(a, agg, "fp32", 0)
        limits["forward_flops_per_image"][agg] = count_flops(args, 1, step=False)
        limits["train_flops_per_triplet"][agg] = count_flops(args, s["queries"] * (2 + s["negs"]), step=True) / (
            s["queries"] * s["negs"])
        rates[agg] = {prec: measure_model(a, agg, prec, ds, tds, limits, figs) for prec in a.precisions}
        for prec, r in rates[agg].items():
            if loader < r["model"]:
                notes.append(f"extract.{agg}.{prec} is loader-bound: the loader gives {loader:.3g} img/s, the model "
                             f"takes {r['model']:.3g}; raise --num_workers or lower --resize")
            if loader < r["train_model"] * (2 + s["negs"]) / s["negs"]:
                notes.append(f"train.{agg}.{prec} is loader-bound: the loader gives {loader:.3g} img/s, the training "
                             f"step takes {r['train_model'] * (2 + s['negs']) / s['negs']:.3g}; raise --num_workers")
    return rates


def measure_model(a, agg: str, prec: str, ds, tds, limits: dict, figs: dict) -> dict[str, float]:
    """Extraction and training rates of one aggregation in one precision, end to end and of the model alone."""
    s = a.size
    args, mem_args = train_args(a, agg, prec, s["num_workers"]), train_args(a, agg, prec, 0)
    torch.manual_seed(0)
    model = make_model(args, a.device)
    r = {"model": model_rate(model, args, a.device, len(ds), s), "extract": extract_rate(model, ds, args, a.device, s)}
    ctx = MiningContext(model, tds, args, a.device, np.full((len(tds.queries_paths), s["negs"]), -1))
    pick = lambda n: mine_random(ctx, np.random.randint(0, len(tds.queries_paths), n))  # noqa: E731
    r["train"] = train_rate(model, tds, pick, args, a.device, s)
    mem = TensorTriplets(torch.randn(2 + s["negs"], 3, *s["resize"]))
    zeros = lambda n: np.zeros((n, 2 + s["negs"]), dtype=np.int64)  # noqa: E731
    r["train_model"] = train_rate(model, mem, zeros, mem_args, a.device, s)
    key, mm = f"{agg}.{prec}", limits["matmul_flops_per_s"][prec]
    per_img, per_triplet = limits["forward_flops_per_image"][agg], limits["train_flops_per_triplet"][agg]
    for name, unit, flops in (("extract", "img/s", per_img), ("model", "img/s", per_img),
                              ("train", "triplets/s", per_triplet), ("train_model", "triplets/s", per_triplet)):
        figs[f"{name}.{key}"] = figure(r[name], unit, mm / flops)
    if prec == "fp32":  # would channels_last (prepare_model uses it for bf16/fp16 only) help fp32 too?
        cl = model_rate(model.to(memory_format=torch.channels_last), args, a.device, len(ds), s, channels_last=True)
        figs[f"model_channels_last.{key}"] = figure(cl, "img/s", mm / per_img)
    return r


def measure_cache(a, rates: dict, limits: dict, figs: dict) -> None:
    """Cache refresh (forward / loading / mining split, at the fastest precision) and faiss search, per aggregation."""
    s = a.size
    n = s["cache_db"] + s["cache_queries"]
    for agg, by_prec in rates.items():
        prec = max(by_prec, key=lambda p: by_prec[p]["extract"])
        args = train_args(a, agg, prec, 0)
        dim = build_model(args).out_dim
        mining = mining_seconds(dim, s["cache_db"], s["cache_queries"], args)
        forward, encode = n / by_prec[prec]["model"], n / by_prec[prec]["extract"]
        refresh = encode + mining
        limit = n * limits["forward_flops_per_image"][agg] / limits["matmul_flops_per_s"][prec]
        figs[f"cache.{agg}.refresh_s"] = figure(refresh, f"s ({prec})", limit, rate=False)
        figs[f"cache.{agg}.forward_s"] = figure(forward, "s", limit, rate=False)
        figs[f"cache.{agg}.loading_s"] = figure(max(0.0, encode - forward), "s")
        figs[f"cache.{agg}.mining_s"] = figure(mining, "s")
        figs[f"cache.{agg}.other_fraction"] = figure(max(0.0, refresh - forward) / refresh, "of refresh")
        search_ms = 1e3 * search_seconds(dim, s["cache_db"], s["cache_queries"], s["repeats"])
        fp32 = limits["matmul_flops_per_s"].get("fp32")  # faiss searches in fp32
        figs[f"search.{agg}"] = figure(search_ms, "ms/query", fp32 and 2e3 * s["cache_db"] * dim / fp32, rate=False)


def machine_info(device: str, allocator_tuned: bool) -> dict:
    """What the figures were measured on, including the load average at the end of the run."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "cpu": next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), ""),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "allocator_tuned": allocator_tuned, "load_average": list(os.getloadavg())}


def format_table(result: dict) -> str:
    """The printed table: figure, measured value, limit, share of the limit; then the notes."""
    m, c, lim = result["machine"], result["config"], result["limits"]
    rows = [f"{m['device']} ({m['gpu'] or m['cpu']}, {m['torch_threads']} threads, {m['cpu_capability']}), torch "
            f"{m['torch']}, {c['resize'][0]}×{c['resize'][1]}, batch {c['batch']}, training step {c['queries']}×"
            f"{2 + c['negs']} images, load average {' '.join(f'{v:.2f}' for v in m['load_average'])}",
            "limits: " + ", ".join(f"{p} {max(r.values()) / 1e9:.3g} GFLOP/s (" + " ".join(
                f"{k} {v / 1e9:.3g}" for k, v in r.items()) + ")" for p, r in lim["gemm_flops_per_s"].items())
            + "; forward " + ", ".join(f"{k} {v / 1e9:.3g} GFLOP/img"
                                       for k, v in lim["forward_flops_per_image"].items()),
            f"{'figure':<33} {'measured':>10} {'limit':>10}  {'unit':<12} {'of limit':>8}"]
    for name, f in result["figures"].items():
        limit = "-" if f["limit"] is None else f"{f['limit']:.4g}"
        ratio = "-" if f["ratio"] is None else f"{100 * f['ratio']:.1f}%"
        rows.append(f"{name:<33} {f['value']:>10.4g} {limit:>10}  {f['unit']:<12} {ratio:>8}")
    return "\n".join(rows + [f"note: {n}" for n in result["notes"]])


def main(argv: list[str] | None = None) -> dict:
    """Run every measurement, print the table, write the JSON file; returns what the JSON holds."""
    tuned = tune_allocator()
    a = parse_args(argv)
    s, figs, notes = a.size, {}, []
    gemm = {p: gemm_rates(a.device, p, s["matmul_max"], s["matmul_call_s"]) for p in a.precisions}
    limits = {"matmul_flops_per_s": {p: max(r.values()) for p, r in gemm.items()}, "gemm_flops_per_s": gemm,
              "forward_flops_per_image": {}, "train_flops_per_triplet": {}}
    with tempfile.TemporaryDirectory(prefix="vg_bench_") as tmp, contextlib.redirect_stderr(io.StringIO()):
        write_world(Path(tmp), s["images"], max(1, s["images"] // 4), s["resize"])  # stderr: progress bars
        rates = measure_models(a, Path(tmp), limits, figs, notes)
    measure_cache(a, rates, limits, figs)
    total_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20
    figs["peak_memory"] = figure(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB", total_mib)
    if a.device == "cuda":
        figs["peak_gpu_memory"] = figure(torch.cuda.max_memory_allocated() / 2 ** 20, "MiB",
                                         torch.cuda.get_device_properties(0).total_memory / 2 ** 20)
    config = {**s, "quick": a.quick, "precisions": a.precisions, "aggregations": a.aggregations,
              "peak_worker_memory_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    result = {"machine": machine_info(a.device, tuned), "config": config, "limits": limits, "figures": figs,
              "notes": notes}
    print(format_table(result))
    write_json(Path(a.out), result)
    return result


if __name__ == "__main__":
    run_cli(main)
