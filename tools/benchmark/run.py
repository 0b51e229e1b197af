"""Speed benchmark on the current machine: every figure beside the machine's own limit, measured in the same run.

python -m tools.benchmark [--quick] [--end_to_end] [--out bench.json] [--device cpu|cuda] [--resize 480 640]

Limit of a pass = its FLOPs (FlopCounterMode) / the matmul rate in that precision (the best of a large torch.matmul
and the same product as a 1×1 convolution, timed in this run). Extraction and training are measured end to end on
JPEG files written by the run (decode, resize, normalize, forward: evaluation.extract_features and
train.train_on_triplets) and on in-memory tensors ("model"). A cache refresh is split into forward passes (from the
measured rates), loading, and mining (mining.mine_full with a timed stand-in encoder). Figures are the best of
--repeats runs. The README's performance section lists every figure.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from tools.benchmark import end_to_end
from tools.benchmark.limits import DTYPES, LimitSampler, figure, format_table, machine_info, timed
from tools.benchmark.rates import make_model, model_run, train_run
from tools.benchmark.workload import TensorTriplets, mining_seconds, search_seconds, write_world
from commons import CliParser, UserError, run_cli, tune_allocator, uses_channels_last
from datasets_ws import BaseDataset, TripletsDataset
from retrieval.evaluation import InferenceConfig, encoder, extract_features
from training.losses import criterion_from_args
from training.mining import MiningContext, MiningSettings, mine_random
from network import build_model
from parser import train_parser
from util import write_json

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags; a.size holds the sizes of the mode with the overrides applied."""
    p = CliParser(prog="python -m tools.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (CI)")
    p.add_argument("--end_to_end", action="store_true",
                   help="instead: a short train.py epoch on a JPEG world, its time profile beside each phase's "
                        "compute limit, and a Pitts30k-sized epoch estimated (tools/benchmark/end_to_end.py)")
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


def train_args(a: argparse.Namespace, aggregation: str, precision: str, workers: int) -> argparse.Namespace:
    """train.py's defaults with the benchmark's model, sizes, precision and loader workers."""
    s = a.size
    return train_parser().parse_args([
        "--aggregation", aggregation, "--precision", precision, "--num_workers", str(workers), "--pretrain", "none",
        "--resize", *map(str, s["resize"]), "--train_batch_size", str(s["queries"]), "--negs_num_per_query",
        str(s["negs"]), "--neg_samples_num", str(s["neg_samples"]), "--infer_batch_size", str(s["batch"])])


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
            criterion_from_args(args)(feats[:, 0], feats[:, 1], feats[:, 2:]).backward()
    return counter.get_total_flops()


def extract_run(model, ds, args, device: str, workers: int) -> Callable[[bool], float]:
    """run(warmup) → images/s of evaluation.extract_features over all of ds (one batch when warming up): JPEG
    files to descriptors with `workers` loader workers."""
    def run(warmup: bool) -> float:
        n = min(args.infer_batch_size, len(ds)) if warmup else len(ds)
        cfg = InferenceConfig(args.infer_batch_size, workers, device, args.precision)
        return n / timed(lambda: extract_features(model, ds, range(n), cfg), device)
    return run


def interleaved_best(runs: dict[str, Callable[[bool], float]], s: dict, between: Callable[[], None]) -> dict:
    """The best rate of each run over s["repeats"] rounds, every round running each once in turn (after an untimed
    warm-up round): a machine whose speed drifts affects all figures alike. `between` runs before each timed run."""
    if s["warmup"]:
        for run in runs.values():
            run(True)
    best = dict.fromkeys(runs, 0.0)
    for _ in range(s["repeats"]):
        for name, run in runs.items():
            between()
            best[name] = max(best[name], run(False))
    return best


def loader_rate(ds, device: str, s: dict) -> float:
    """Images/s of the data loader alone (JPEG decode, resize, uint8 collate), built as extract_features does."""
    loader = DataLoader(ds, batch_size=s["batch"], num_workers=s["num_workers"], pin_memory=device == "cuda")
    return len(ds) / min(timed(lambda: [None for _ in loader], "cpu") for _ in range(s["repeats"]))


def measure_models(a, root: Path, limits: dict, sampler: LimitSampler, notes: list) -> dict[str, dict[str, dict]]:
    """Loader rate and, for every aggregation × precision, extraction and training rates: rates[agg][precision]
    (rates["loader"] for the loader). Fills the FLOP counts of `limits`."""
    s, rates = a.size, {}
    ds, tds = (cls(str(root), "bench", "train", s["resize"]) for cls in (BaseDataset, TripletsDataset))
    loader = loader_rate(ds, a.device, s)
    for agg in a.aggregations:
        args = train_args(a, agg, "fp32", 0)
        limits["forward_flops_per_image"][agg] = count_flops(args, 1, step=False)
        limits["train_flops_per_triplet"][agg] = count_flops(args, s["queries"] * (2 + s["negs"]), step=True) / (
            s["queries"] * s["negs"])
        rates[agg] = {prec: measure_model(a, agg, prec, ds, tds, sampler) for prec in a.precisions}
        for prec, r in rates[agg].items():
            if r.get("extract_inline", 0.0) > r["extract"]:
                notes.append(f"extract.{agg}.{prec}: loading in the main process is faster on this machine "
                             f"({r['extract_inline']:.3g} vs {r['extract']:.3g} img/s with {s['num_workers']} "
                             f"workers): the workers take cores from the model; use --num_workers 0")
            if loader < r["model"]:
                notes.append(f"extract.{agg}.{prec} is loader-bound: the loader gives {loader:.3g} img/s, the model "
                             f"takes {r['model']:.3g}; raise --num_workers or lower --resize")
            if loader < r["train_model"] * (2 + s["negs"]) / s["negs"]:
                notes.append(f"train.{agg}.{prec} is loader-bound: the loader gives {loader:.3g} img/s, the training "
                             f"step takes {r['train_model'] * (2 + s['negs']) / s['negs']:.3g}; raise --num_workers")
    return {"loader": loader, **rates}


def measure_model(a, agg: str, prec: str, ds, tds, sampler: LimitSampler) -> dict[str, float]:
    """Extraction and training rates of one aggregation in one precision, end to end and of the model alone.

    Also, side by side: the model in the other memory layout than prepare_model's (fp32), and extraction with
    loading in the main process (`extract_inline`, when --num_workers > 0)."""
    s = a.size
    args, mem_args = train_args(a, agg, prec, s["num_workers"]), train_args(a, agg, prec, 0)
    torch.manual_seed(0)
    model = make_model(args, a.device)
    cl = uses_channels_last(a.device, prec)
    x = torch.randn(s["batch"], 3, *s["resize"], device=a.device)
    sampler.add_model(prec, model, x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format))
    ctx = MiningContext.create(encoder(model, tds.as_images(), InferenceConfig.from_args(args, a.device)), tds,
                               MiningSettings.from_args(args), np.full((len(tds.queries_paths), s["negs"]), -1))
    pick = lambda n: mine_random(ctx, np.random.randint(0, len(tds.queries_paths), n))  # noqa: E731
    mem = TensorTriplets(torch.randn(2 + s["negs"], 3, *s["resize"]))
    zeros = lambda n: np.zeros((n, 2 + s["negs"]), dtype=np.int64)  # noqa: E731
    runs = {"model": model_run(model, args, a.device, len(ds), cl),
            "extract": extract_run(model, ds, args, a.device, s["num_workers"]),
            "train": train_run(model, tds, pick, args, a.device, s),
            "train_model": train_run(model, mem, zeros, mem_args, a.device, s)}
    if s["num_workers"] > 0:
        runs["extract_inline"] = extract_run(model, ds, args, a.device, 0)
    if prec == "fp32":
        other = copy.deepcopy(model).to(memory_format=torch.contiguous_format if cl else torch.channels_last)
        runs["model_nchw" if cl else "model_channels_last"] = model_run(other, args, a.device, len(ds), not cl)
    return interleaved_best(runs, s, lambda: sampler.sample(prec))


def rate_figures(rates: dict, limits: dict) -> dict[str, dict]:
    """Figures of measure_models' rates, each beside its limit: matmul rate / FLOPs per image or per triplet."""
    figs = {"loader": figure(rates["loader"], "img/s")}
    for agg, by_prec in rates.items():
        if agg == "loader":
            continue
        per_img, per_triplet = limits["forward_flops_per_image"][agg], limits["train_flops_per_triplet"][agg]
        for prec, r in by_prec.items():
            mm = limits["matmul_flops_per_s"][prec]
            for name, rate in r.items():
                unit, flops = ("triplets/s", per_triplet) if name.startswith("train") else ("img/s", per_img)
                figs[f"{name}.{agg}.{prec}"] = figure(rate, unit, mm / flops)
    return figs


def measure_cache(a, rates: dict, limits: dict, figs: dict) -> None:
    """Cache refresh (forward / loading / mining split, at the fastest precision and way of loading) and faiss search,
    per aggregation."""
    s = a.size
    n = s["cache_db"] + s["cache_queries"]
    for agg, by_prec in rates.items():
        if agg == "loader":
            continue
        extract = {p: max(r["extract"], r.get("extract_inline", 0.0)) for p, r in by_prec.items()}
        prec = max(extract, key=extract.get)  # the fastest precision, with the faster way of loading
        workers = 0 if by_prec[prec].get("extract_inline", 0.0) > by_prec[prec]["extract"] else s["num_workers"]
        args = train_args(a, agg, prec, 0)
        dim = build_model(args).out_dim
        mining = mining_seconds(dim, s["cache_db"], s["cache_queries"], args)
        forward, encode = n / by_prec[prec]["model"], n / extract[prec]
        refresh = encode + mining
        limit = n * limits["forward_flops_per_image"][agg] / limits["matmul_flops_per_s"][prec]
        figs[f"cache.{agg}.refresh_s"] = figure(refresh, f"s ({prec}, {workers}w)", limit, rate=False)
        figs[f"cache.{agg}.forward_s"] = figure(forward, "s", limit, rate=False)
        figs[f"cache.{agg}.loading_s"] = figure(max(0.0, encode - forward), "s")
        figs[f"cache.{agg}.mining_s"] = figure(mining, "s")
        figs[f"cache.{agg}.other_fraction"] = figure(max(0.0, refresh - forward) / refresh, "of refresh")
        search_ms = 1e3 * search_seconds(dim, s["cache_db"], s["cache_queries"], s["repeats"])
        fp32 = limits["matmul_flops_per_s"].get("fp32")  # faiss searches in fp32
        figs[f"search.{agg}"] = figure(search_ms, "ms/query", fp32 and 2e3 * s["cache_db"] * dim / fp32, rate=False)


def main(argv: list[str] | None = None) -> dict:
    """Run every measurement, print the table, write the JSON file; returns what the JSON holds."""
    tuned = tune_allocator()
    a = parse_args(argv)
    if a.end_to_end:
        result = {"machine": machine_info(a.device, tuned), **end_to_end.main(a)}
        write_json(Path(a.out), result)
        return result
    s, notes = a.size, []
    sampler = LimitSampler(a.device, a.precisions, s["matmul_max"], s["matmul_call_s"])
    limits = {"matmul_flops_per_s": {}, "gemm_flops_per_s": sampler.rates, "forward_flops_per_image": {},
              "train_flops_per_triplet": {}}
    with tempfile.TemporaryDirectory(prefix="vg_bench_") as tmp, contextlib.redirect_stderr(io.StringIO()):
        write_world(Path(tmp), s["images"], max(1, s["images"] // 4), s["resize"])  # stderr: progress bars
        rates = measure_models(a, Path(tmp), limits, sampler, notes)
    limits["matmul_flops_per_s"] = sampler.best()  # the best rate seen in the whole run
    figs = rate_figures(rates, limits)
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
    over = [f"{name} is at {100 * f['ratio']:.1f}% of its limit: the limit is not a ceiling on this machine"
            for name, f in figs.items() if f["ratio"] is not None and f["ratio"] > 1.0]
    notes += [f"warning: {o}" for o in over]
    print(format_table(result))
    write_json(Path(a.out), result)
    if over and a.quick:  # a test runs --quick: a limit that a figure beats is a bug of the limit
        print(f"error: {over[0]}{f' (and {len(over) - 1} more)' if len(over) > 1 else ''}", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    run_cli(main)
