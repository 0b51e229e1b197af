"""End-to-end mode of the benchmark (`python benchmark.py --end_to_end`): a short train.py epoch on a JPEG world, run
as a user runs it (its own process, full mining, one cache refresh), its time profile (runs/profile.py) beside the
compute limit of each phase: the phase's images at the model's own in-memory rate, measured in the same run. Then a
Pitts30k-sized epoch, estimated from the rates the run reached end to end.

The epoch is the default recipe's: ImageNet-initialized, so the backbone's blocks before the last are frozen (for
ResNet-18 conv4: conv1 to layer2 frozen, layer3 trains). No weights can be downloaded here, and the speed does not
depend on their values: random weights of the same architecture stand in for ImageNet's, in a temporary TORCH_HOME.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from commons import uses_channels_last
from model.backbones import RESNET_CUTS
from datasets_ws import BaseDataset, TripletsDataset
from parser import train_parser
from tools.benchmark.rates import make_model, model_run, train_run
from tools.benchmark.workload import TensorTriplets, write_world

ROOT = Path(__file__).resolve().parents[2]
RUN = {  # the epoch: `queries` training queries, one refresh, `database` images per split (train, val, test)
    "full": {"database": 400, "queries": 100, "batch": 16, "train_batch": 4, "negs": 10, "repeats": 3},
    "quick": {"database": 12, "queries": 4, "batch": 4, "train_batch": 2, "negs": 2, "repeats": 1},
}
FEWER_NEGS = 1  # negatives per query of the estimate's second recipe (the study's "negatives" experiment)
# Pitts30k (datasets_vg): train 10k database / 7416 queries, val 10k / 7608; dVGL's training defaults.
PITTS30K = {"database": 10000, "queries_per_epoch": 5000, "refresh": 1000, "val_images": 10000 + 7608,
            "negs": 10, "neg_samples": 1000, "rolling_period": 4}
MINING_ENCODED = {  # images a Pitts30k epoch encodes for its mining cache, by --mining (P = PITTS30K)
    "full": lambda P: P["queries_per_epoch"] // P["refresh"] * (P["database"] + P["refresh"]),
    # the sample and the queries' positives (counted as one each: a lower bound) and the queries, every refresh
    "partial": lambda P: P["queries_per_epoch"] // P["refresh"] * (P["neg_samples"] + 2 * P["refresh"]),
    # the whole database once, then 1/period of it per refresh, plus the queries
    "rolling": lambda P: P["database"] + (P["queries_per_epoch"] // P["refresh"] - 1) * P["database"]
    // P["rolling_period"] + P["queries_per_epoch"],
}


BACKBONE = "resnet18conv4"


def run_flags(world: Path, out: Path, agg: str, precision: str, device: str, resize: tuple, r: dict) -> list[str]:
    """train.py flags of the measured epoch (--pretrain imagenet: see stand_in_imagenet_weights)."""
    return ["--datasets_folder", str(world), "--dataset_name", "bench", "--resize", *map(str, resize),
            "--backbone", BACKBONE, "--pretrain", "imagenet", "--aggregation", agg, "--precision", precision,
            "--device", device,
            "--mining", "full", "--epochs_num", "1", "--queries_per_epoch", str(r["queries"]),
            "--cache_refresh_rate", str(r["queries"]), "--train_batch_size", str(r["train_batch"]),
            "--negs_num_per_query", str(r["negs"]), "--neg_samples_num", str(r["database"] - 1),
            "--infer_batch_size", str(r["batch"]), "--save_dir", str(out),
            "--recall_values", *(str(n) for n in (1, 5, 10, 20) if n <= r["database"])]


def stand_in_imagenet_weights(torch_home: Path) -> None:
    """Random weights of BACKBONE's torchvision model where torchvision looks for its ImageNet file, under torch_home:
    train.py --pretrain imagenet then builds (and freezes) the model as with the real weights, offline."""
    arch = RESNET_CUTS[BACKBONE][0]
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)


def run_epoch(flags: list[str], cwd: Path, torch_home: Path) -> tuple[dict, float]:
    """Run train.py in its own process (TORCH_HOME: torch_home); its results.json and the whole process's wall
    seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "TORCH_HOME": str(torch_home)})
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"train.py failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    results = json.loads(next((cwd / "logs").rglob("results.json")).read_text())
    return results, wall


def step_rate(model, flags: list[str], device: str, r: dict, negs: int):
    """run(warmup) → images/s of in-memory training steps of r["train_batch"] queries × (2 + negs) images."""
    args = train_parser().parse_args([*flags, "--num_workers", "0", "--pretrain", "none",
                                      "--negs_num_per_query", str(negs)])
    mem = TensorTriplets(torch.randn(2 + negs, 3, *args.resize))
    zeros = lambda n: np.zeros((n, 2 + negs), dtype=np.int64)  # noqa: E731
    pairs = train_run(model, mem, zeros, args, device, {"steps": max(1, r["queries"] // (4 * r["train_batch"]))})
    return lambda warmup: pairs(warmup) * (2 + negs) / negs  # query-negative pairs/s → images/s


def model_rates(flags: list[str], device: str, r: dict) -> dict[str, float]:
    """Images/s of the run's model alone, in memory, best of repeats: forward passes (eval), training steps with the
    run's negatives per query ("train") and with FEWER_NEGS ("train_fewer_negs")."""
    # in memory: nothing to load; random weights, frozen as the run's stand-in ImageNet model is
    args = train_parser().parse_args([*flags, "--num_workers", "0", "--pretrain", "none"])
    torch.manual_seed(0)
    model = make_model(args, device, freeze=True)
    runs = {"forward": model_run(model, args, device, 4 * r["batch"], uses_channels_last(device, args.precision)),
            "train": step_rate(model, flags, device, r, r["negs"]),
            "train_fewer_negs": step_rate(model, flags, device, r, FEWER_NEGS)}
    for run in runs.values():
        run(True)  # warm-up: one-time costs (oneDNN primitives)
    best = dict.fromkeys(runs, 0.0)
    for _ in range(r["repeats"]):  # interleaved, so that a slow spell of the machine touches every rate alike
        for name, run in runs.items():
            best[name] = max(best[name], run(False))
    return best


def phase_rows(profile: dict, rates: dict[str, float], wall: float) -> list[dict]:
    """One row per top-level phase (encoding sub-phases named), with its compute limit where it has one."""
    ph = profile["phases"]
    limit = {"encode": rates["forward"], "compute": rates["train"]}

    def row(name: str, keys: list[str], kind: str | None = None) -> dict:
        s = sum(ph.get(k, {}).get("s", 0.0) for k in keys)
        images = sum(ph.get(k, {}).get("images", 0) for k in keys)
        return {"phase": name, "s": s, "limit_s": images / limit[kind] if kind else None, "images": images}
    rows = [row("startup (imports, argument checks)", ["startup"]),
            row("datasets (scan, checks) and model", ["datasets", "model"]),
            row("mining: encoding", ["mining/encode"], "encode"),
            row("mining: search + selection", ["mining/search", "mining/select"]),
            row("training: waiting for data", ["training/data"]),
            row("training: compute", ["training/compute"], "compute"),
            row("validation: encoding", ["validation/encode"], "encode"),
            row("test: encoding", ["test/encode"], "encode"),
            row("searches (validation, test)", ["validation/search", "test/search"]),
            row("checkpoints and plots", ["checkpoint", "plots"])]
    epoch = [row("", ["mining/encode"], "encode"), row("", ["training/compute"], "compute")]  # the epoch's compute
    epoch_s = sum(ph.get(k, {}).get("s", 0.0) for k in ("mining", "training"))
    rows.append({"phase": "epoch (mining + training)", "s": epoch_s, "limit_s": sum(r["limit_s"] for r in epoch),
                 "images": None})
    rows.append({"phase": "whole process", "s": wall, "limit_s": sum(r["limit_s"] or 0 for r in rows[:-1]),
                 "images": None})
    return rows


def pitts30k_estimate(profile: dict, mined_queries: int, rates: dict[str, float]) -> dict[str, dict[str, float]]:
    """Minutes per phase of a Pitts30k-sized epoch per --mining, at the run's end-to-end rates (decoding included),
    with the recipe's negatives per query and with FEWER_NEGS: the training rate of the latter is the run's, scaled
    by the two step rates measured in memory (rates). Search and selection scale with the queries mined."""
    ph = profile["phases"]
    encode = ph["mining/encode"]["images"] / ph["mining/encode"]["s"]
    validate = ph["validation/encode"]["images"] / ph["validation/encode"]["s"]
    train_rate = ph["training/compute"]["images"] / ph["training"]["s"]  # waiting for data included
    per_query = sum(ph.get(k, {}).get("s", 0.0) for k in ("mining/search", "mining/select")) / mined_queries
    P, out = PITTS30K, {}
    recipes = {"": (P["negs"], train_rate),
               f", {FEWER_NEGS} negative": (FEWER_NEGS, train_rate * rates["train_fewer_negs"] / rates["train"])}
    for (suffix, (negs, rate)), (mining, encoded) in itertools.product(recipes.items(), MINING_ENCODED.items()):
        parts = {"cache encoding": encoded(P) / encode, "search + selection": per_query * P["queries_per_epoch"],
                 "training": P["queries_per_epoch"] * (2 + negs) / rate, "validation": P["val_images"] / validate}
        out[mining + suffix] = {k: v / 60 for k, v in parts.items()} | {"total": sum(parts.values()) / 60}
    return out


def around_model_s(phases: dict) -> float:
    """Seconds of the epoch (mining + training) spent outside the model's own work, its forward passes and training
    steps: what the run adds around the model, whatever speed the model ran at in this run."""
    inside = phases["mining/encode/forward"]["s"] + phases["training/compute"]["s"]
    return phases["mining"]["s"] + phases["training"]["s"] - inside


def format_report(runs: list[dict]) -> str:
    """The tables: each run's phases beside their limits, then the Pitts30k estimates."""
    lines = []
    for run in runs:
        lines += [f"\n{run['title']}", f"{'phase':<40} {'measured s':>10} {'limit s':>9} {'ratio':>6}"]
        for r in run["rows"]:
            lim = f"{r['limit_s']:9.2f} {r['s'] / r['limit_s']:6.2f}" if r["limit_s"] else f"{'':>9} {'':>6}"
            lines.append(f"{r['phase']:<40} {r['s']:10.2f} {lim}")
        ph = run["time_profile"]["phases"]
        epoch = next(r for r in run["rows"] if r["phase"].startswith("epoch"))
        lines += [f"model alone, in memory: forward {run['rates']['forward']:.1f} img/s, training step "
                  f"{run['rates']['train']:.1f} img/s ({run['rates']['train_fewer_negs']:.1f} with {FEWER_NEGS} "
                  f"negative per query); training reached "
                  f"{100 * ph['training/compute']['images'] / ph['training']['s'] / run['rates']['train']:.0f}% of "
                  f"that step rate; the epoch took {epoch['s'] / epoch['limit_s']:.2f}× its compute at the model's "
                  f"own rates",
                  f"around the model (the epoch less its forward passes and training steps: loading, search, "
                  f"selection): {around_model_s(ph):.2f} s, {100 * around_model_s(ph) / epoch['s']:.1f}% of the epoch",
                  "Pitts30k-sized epoch (5000 queries, refresh every 1000; validation 10k + 7.6k images), minutes:",
                  f"{'mining':<20}" + "".join(f"{k:>19}" for k in next(iter(run["pitts30k"].values())))]
        for mining, parts in run["pitts30k"].items():
            top = max((k for k in parts if k != "total"), key=parts.get)
            lines.append(f"{mining:<20}" + "".join(f"{v:19.1f}" for v in parts.values()) + f"   (most: {top})")
    lines.append("partial: the queries' positives counted as one image each (a lower bound)")
    return "\n".join(lines)


def build_pixel_caches(world: Path, cache: Path, resize: tuple[int, int]) -> None:
    """The decoded-pixel caches of the three splits, as train.py --pixel_cache builds them (not timed)."""
    with contextlib.redirect_stderr(io.StringIO()):
        TripletsDataset(str(world), "bench", "train", resize, pixel_cache=cache)
        for split in ("val", "test"):
            BaseDataset(str(world), "bench", split, resize, pixel_cache=cache)


def main(a) -> dict:
    """Every aggregation × precision of the benchmark's flags (a: tools.benchmark.parse_args), reading the JPEG files
    and then the pixel cache: the epoch, the model's own rates, the phase table and the estimate. Returns what --out
    receives."""
    r = RUN["quick" if a.quick else "full"]
    resize = tuple(a.resize or ((32, 32) if a.quick else (480, 640)))
    runs = []
    with tempfile.TemporaryDirectory(prefix="vg_e2e_") as tmp:
        world, cache, torch_home = Path(tmp) / "world", Path(tmp) / "pixel_cache", Path(tmp) / "torch_home"
        stand_in_imagenet_weights(torch_home)
        write_world(world, r["database"], r["queries"], resize, splits=("train", "val", "test"))
        build_pixel_caches(world, cache, resize)
        for agg, precision in ((g, p) for g in a.aggregations for p in a.precisions):
            with contextlib.redirect_stderr(io.StringIO()):  # the training steps' progress bars
                rates = model_rates(run_flags(world, Path("e2e"), agg, precision, a.device, resize, r), a.device, r)
            for source, extra in (("JPEG files", []), ("pixel cache", ["--pixel_cache", str(cache)])):
                cwd = Path(tmp) / f"{agg}_{precision}_{len(extra)}"
                cwd.mkdir()
                flags = run_flags(world, Path("e2e"), agg, precision, a.device, resize, r) + extra
                results, wall = run_epoch(flags, cwd, torch_home)
                prof = results["time_profile"]
                runs.append({"title": f"train.py, 1 epoch of {r['queries']} queries, full mining, {BACKBONE} "
                                      f"(conv1-layer2 frozen), {agg}, {precision}, "
                                      f"{resize[0]}×{resize[1]}, {r['database']} database images per split, "
                                      f"{a.device}, reading {source}: whole process {wall:.1f} s",
                             "source": source, "flags": flags, "rows": phase_rows(prof, rates, wall),
                             "rates": rates, "time_profile": prof,
                             "pitts30k": pitts30k_estimate(prof, r["queries"], rates)})
    print(format_report(runs))
    return {"end_to_end": runs}
