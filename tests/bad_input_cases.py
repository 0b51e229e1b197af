"""The bad invocations of tests/test_bad_input.py, for every command-line tool, and what they need: small inputs,
bad checkpoints, a full disk and a read-only folder (tests/helpers.py), no network."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable
from urllib.error import URLError

import pytest
import torch

from helpers import fill_disk, read_only, write_image
from conftest import tiny_train_flags
from network import GeoLocalizationNet
from parser import parse_train_args
from util import save_checkpoint

ONE_REFRESH = ["--negs_num_per_query", "2", "--neg_samples_num", "20", "--cache_refresh_rate", "10",
               "--queries_per_epoch", "10", "--epochs_num", "1", "--infer_batch_size", "64", "--recall_values", "1", "5"]
WORLD_SIZES = ["--map_size", "512"] + [f for s in ("train", "val", "test") for f in (f"--{s}_db", "4", f"--{s}_q", "2")]


# ------------------------------------------------------------------------------------------------ inputs

def mini_dataset(e: SimpleNamespace) -> Path:
    """e.data/mini with train/val/test: 2 database images 100 m apart and 1 query 1 m from the first."""
    for split in ("train", "val", "test"):
        base = e.data / "mini" / "images" / split
        write_image(base / "database" / "@500000.00@4400000.00@.jpg", size=32)
        write_image(base / "database" / "@500100.00@4400000.00@.png", size=32)
        write_image(base / "queries" / "@500001.00@4400000.00@.jpg", size=32)
    return e.data


def make_checkpoints(tiny_world: Path, folder: Path) -> dict[str, Path]:
    """A good checkpoint in a run folder (last and best), and bad ones: truncated, another architecture, a tensor of
    the wrong shape, a dict that is not a checkpoint, a text file, a missing file."""
    run = folder / "run"
    run.mkdir()
    args = parse_train_args(tiny_train_flags(tiny_world, "bad") + ONE_REFRESH)
    torch.manual_seed(0)
    save_checkpoint({"model_state_dict": GeoLocalizationNet().state_dict(), "args": vars(args)}, run, is_best=True)
    (run / "args.json").write_text(json.dumps(vars(args)))
    paths = {"good": run / "best_model.pth", "last": run / "last_model.pth", "truncated": folder / "truncated.pth",
             "other": folder / "netvlad.pth", "edited": folder / "edited.pth", "dict": folder / "dict.pth",
             "text": folder / "notes.pth", "missing": folder / "missing.pth"}
    good = paths["good"].read_bytes()
    paths["truncated"].write_bytes(good[: len(good) // 2])
    netvlad = GeoLocalizationNet(aggregation="netvlad", netvlad_clusters=4)
    torch.save({"model_state_dict": netvlad.state_dict(), "args": {"aggregation": "gem"}}, paths["other"])
    edited = {**netvlad.state_dict(), "aggregation.centroids": torch.zeros(2, 256)}  # 2 clusters, the args say 4
    torch.save({"model_state_dict": edited, "args": {"aggregation": "netvlad", "netvlad_clusters": 4}}, paths["edited"])
    torch.save({"weights": torch.ones(3)}, paths["dict"])
    paths["text"].write_text("hello\n")
    return paths


def offline_hub(e: SimpleNamespace, mp: pytest.MonkeyPatch) -> None:
    """No ImageNet weights cached (an empty TORCH_HOME) and no network (a download fails as offline)."""
    (e.tmp / "torch_home").mkdir()
    mp.setenv("TORCH_HOME", str(e.tmp / "torch_home"))
    mp.setattr(torch.hub, "_hub_dir", None)

    def offline(*args, **kwargs):
        raise URLError("offline")
    mp.setattr(torch.hub, "download_url_to_file", offline)


def damaged_png(e: SimpleNamespace) -> None:
    """A PNG whose data is overwritten in the middle: header and end marker intact."""
    path = mini_dataset(e) / "mini/images/val/database/@500100.00@4400000.00@.png"
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4] = b"\x00\xff\x00\xff"
    path.write_bytes(bytes(data))


def layout(mutate: Callable[[Path], None]) -> Callable[[SimpleNamespace, pytest.MonkeyPatch], None]:
    return lambda e, mp: mutate(mini_dataset(e) / "mini" / "images")


def run_folder(e: SimpleNamespace, mp: pytest.MonkeyPatch) -> None:
    """A finished train run below e.tmp/runs, for collect_results."""
    folder = e.tmp / "runs" / "a" / "2026-01-01_00-00-00"
    folder.mkdir(parents=True)
    args = {"save_dir": "a", "seed": 0, "optim": "adam", "dataset_name": "synthetic", "epochs_num": 1}
    (folder / "results.json").write_text(json.dumps({"kind": "train", "args": args, "epochs": 1, "test": {
        "dataset": "synthetic", "split": "test", "recalls": {"1": 50.0, "5": 70.0}}}))


# ------------------------------------------------------------------------------------------------ the cases

@dataclass(frozen=True)
class Case:
    """A bad invocation: the tool, its arguments (from the test's paths), a text the message must contain, what to
    prepare first, what may be left: "nothing" new, or only "complete" files (results written before a failure), and
    a path (from the test's paths) the message must name."""
    cli: str
    argv: Callable[[SimpleNamespace], list[str]]
    expect: str
    prepare: Callable[[SimpleNamespace, pytest.MonkeyPatch], None] = lambda e, mp: None
    leaves: str = "nothing"
    names: Callable[[SimpleNamespace], Path] | None = None


def T(*extra: str) -> Callable:
    return lambda e: tiny_train_flags(e.world, "bad") + ONE_REFRESH + list(extra)


def TM(*extra: str) -> Callable:
    return lambda e: tiny_train_flags(e.data, "bad") + ["--dataset_name", "mini"] + ONE_REFRESH + list(extra)


def TR(name: str, *extra: str) -> Callable:
    return lambda e: tiny_train_flags(e.world, "bad") + ["--resume", str(e.ck[name]), *extra]


def R(name: str, *extra: str) -> Callable:
    return lambda e: ["--resume", str(e.ck[name]), *extra]


def E(*extra: str, ckpt: str = "good") -> Callable:
    return lambda e: ["--datasets_folder", str(e.world), "--dataset_name", "synthetic", "--resize", "32", "32",
                      "--device", "cpu", "--num_workers", "0", "--infer_batch_size", "64", "--resume",
                      str(e.ck[ckpt]), *extra]


def A(*extra: str) -> Callable:
    return lambda e: ["--datasets_folder", str(e.world), "--dataset_name", "synthetic", "--out",
                      str(e.tmp / "analysis"), *extra]


def W(*extra: str) -> Callable:
    return lambda e: ["--out", str(e.tmp / "worlds"), *WORLD_SIZES, *extra]


def B(*extra: str) -> Callable:
    return lambda e: ["--quick", "--out", str(e.tmp / "bench.json"), *extra]


def env_var(name: str, value: str) -> Callable:
    return lambda e, mp: mp.setenv(name, value)


CASES = {
    "train: invalid choice": Case("train", T("--aggregation", "nope"), "invalid choice: 'nope'"),
    "train: missing value": Case("train", T("--resize", "32"), "expected 2 arguments"),
    "train: not a number": Case("train", T("--lr", "abc"), "invalid float value: 'abc'"),
    "train: unknown flag": Case("train", T("--no_such_flag"), "unrecognized arguments: --no_such_flag"),
    "train: lr 0": Case("train", T("--lr", "0"), "--lr must be > 0"),
    "train: not a multiple": Case("train", T("--queries_per_epoch", "30", "--cache_refresh_rate", "20"),
                                  "must be a multiple of --cache_refresh_rate"),
    "train: too many negatives": Case("train", T("--negs_num_per_query", "50"), "cannot exceed --neg_samples_num"),
    "train: resize 0": Case("train", T("--resize", "0", "32"), "--resize must be positive"),
    "train: fp16 on a CPU": Case("train", T("--precision", "fp16"), "--precision fp16 needs CUDA"),
    "train: thresholds": Case("train", T("--train_positives_dist_threshold", "30"), "must not exceed"),
    "train: seed": Case("train", T("--seed", "-2"), "--seed must be >= 0"),
    "train: recall 0": Case("train", T("--recall_values", "0", "5"), "--recall_values must be positive"),
    "train: workers": Case("train", T("--num_workers", "-1"), "--num_workers must be >= 0"),
    "train: infinite radius": Case("train", T("--val_positive_dist_threshold", "inf"), "give a finite radius"),
    "train: recall above the database": Case("train", T("--recall_values", "1", "500"),
                                             "--recall_values 500 exceeds the 60 database images of synthetic val"),
    "train: no datasets folder": Case("train", T("--datasets_folder", "/nonexistent/data"), "does not exist"),
    "train: dataset misnamed": Case("train", T("--dataset_name", "pitts30k"), "dataset 'pitts30k' not found"),
    "train: save_dir is a file": Case("train", T("--save_dir", "afile"), "cannot create the run folder logs/afile",
                                      lambda e, mp: (e.cwd / "logs").mkdir() or (e.cwd / "logs/afile").write_text("")),
    "train: save_dir read-only": Case("train", T("--save_dir", "ro"), "(Read-only file system)",
                                      lambda e, mp: read_only(mp, "logs/ro")),
    "train: resume missing": Case("train", TR("missing"), "not found"),
    "train: resume truncated": Case("train", TR("truncated"), "not a readable checkpoint, maybe truncated"),
    "train: resume text": Case("train", TR("text"), "not a readable checkpoint"),
    "train: resume foreign dict": Case("train", TR("dict"), "is not a checkpoint of this toolkit"),
    "train: resume best_model.pth": Case("train", R("good"), "is the best model, not the state to continue from"),
    "train: resume conflicting flag": Case("train", R("last", "--aggregation", "netvlad"),
                                              "--aggregation 'gem' (stored) vs 'netvlad'"),
    "train: init_from missing": Case("train", T("--init_from", "gone.pth"), "gone.pth not found"),
    "train: init_from another model": Case("train", lambda e: T("--init_from", str(e.ck["other"]))(e),
                                           "does not fit this model"),
    "train: ImageNet weights offline": Case("train", T("--pretrain", "imagenet"), "or pass --pretrain none", offline_hub,
                                            names=lambda e: e.tmp / "torch_home"),
    "train: split missing": Case("train", TM(), "split 'val' missing",
                                 layout(lambda im: shutil.rmtree(im / "val"))),
    "train: split empty": Case("train", TM(), "no images in the database of",
                               layout(lambda im: [p.unlink() for p in (im / "val/database").iterdir()])),
    "train: no queries folder": Case("train", TM(), "has no queries folder",
                                     layout(lambda im: shutil.rmtree(im / "train/queries"))),
    "train: name without UTM": Case("train", TM(), "IMG_0001.jpg; names must look like",
                                    layout(lambda im: write_image(im / "train/database/IMG_0001.jpg", size=32))),
    "train: non-numeric UTM": Case("train", TM(), "@abc@4400000@.jpg; names must look like",
                                   layout(lambda im: write_image(im / "train/queries/@abc@4400000@.jpg", size=32))),
    "train: NaN UTM": Case("train", TM(), "@nan@4400000@.jpg; names must look like",
                           layout(lambda im: write_image(im / "val/queries/@nan@4400000@.jpg", size=32))),
    "train: truncated image": Case("train", TM(), "1 corrupt or unreadable images",
                                   layout(lambda im: (im / "test/queries/@500001.00@4400000.00@.jpg").write_bytes(
                                       b"\xff\xd8\xff\xe0 cut"))),
    "train: PNG damaged inside": Case("train", TM(), "pass --skip_corrupt to skip them", lambda e, mp: damaged_png(e)),
    "train: images above the pixel limit": Case(
        "train", TM(), "9 images above PIL's pixel limit",
        lambda e, mp: mini_dataset(e) and mp.setenv("VG_MAX_IMAGE_PIXELS", "100")),
    "train: bad pixel limit": Case("train", TM(), "VG_MAX_IMAGE_PIXELS='many' is not a positive number",
                                   lambda e, mp: mini_dataset(e) and mp.setenv("VG_MAX_IMAGE_PIXELS", "many")),
    "eval: checkpoint missing": Case("eval", E(ckpt="missing"), "missing.pth not found"),
    "eval: checkpoint truncated": Case("eval", E(ckpt="truncated"), "maybe truncated"),
    "eval: another architecture": Case("eval", E(ckpt="other"), "does not match the model architecture"),
    "eval: a tensor of the wrong shape": Case("eval", E(ckpt="edited"), "edited.pth does not match the model arch"),
    "eval: not a checkpoint": Case("eval", E(ckpt="dict"), "is not a checkpoint of this toolkit"),
    "eval: text file": Case("eval", E(ckpt="text"), "not a readable checkpoint"),
    "eval: split missing": Case("eval", E("--split", "night"), "split 'night' missing"),
    "eval: negative pictures": Case("eval", E("--save_predictions", "-1"), "--save_predictions must be >= 0"),
    "eval: only wrong alone": Case("eval", E("--save_only_wrong_predictions"), "needs --save_predictions"),
    "eval: radius 0": Case("eval", E("--recall_thresholds", "10", "0"), "--recall_thresholds must be > 0"),
    "eval: infinite radius": Case("eval", E("--recall_thresholds", "10", "inf"), "--recall_thresholds inf counts"),
    "eval: recall above the database": Case("eval", E("--recall_values", "1", "500"), "exceeds the 80 database"),
    "eval: invalid index": Case("eval", E("--index", "nope"), "invalid choice: 'nope'"),
    "eval: unknown flag": Case("eval", E("--no_such_flag"), "unrecognized arguments"),
    "eval: save_dir read-only": Case("eval", E("--save_dir", "ro"), "(Read-only file system)",
                                     lambda e, mp: read_only(mp, "logs/ro")),
    "eval: images above the pixel limit": Case("eval", E(), "images above PIL's pixel limit",
                                               env_var("VG_MAX_IMAGE_PIXELS", "100")),
    "eval: disk full at the pictures": Case("eval", E("--save_predictions", "2"), ".jpg: No space left on device",
                                            lambda e, mp: fill_disk(mp, ".jpg"), leaves="complete"),
    "analyze: dataset misnamed": Case("analyze", A("--dataset_name", "nope"), "dataset 'nope' not found"),
    "analyze: split missing": Case("analyze", A("--splits", "nope"), "split 'nope' missing"),
    "analyze: duplicate splits": Case("analyze", A("--splits", "val", "val"), "duplicates"),
    "analyze: radius 0": Case("analyze", A("--val_positive_dist_threshold", "0"), "must be a finite number > 0"),
    "analyze: infinite radius": Case("analyze", A("--train_positives_dist_threshold", "inf"), "finite number"),
    "analyze: grid size": Case("analyze", A("--grid_size", "1"), "--grid_size must be >= 2"),
    "analyze: grid height": Case("analyze", A("--grid_height", "4"), "--grid_height must be >= 8"),
    "analyze: unknown flag": Case("analyze", A("--no_such_flag"), "unrecognized arguments"),
    "analyze: out is a file": Case("analyze", A(), "cannot create --out",
                                   lambda e, mp: (e.tmp / "analysis").write_text("")),
    "analyze: disk full": Case("analyze", A(), "summary.json: No space left on device",
                               lambda e, mp: fill_disk(mp, "summary.json")),
    "analyze: images above the pixel limit": Case("analyze", A(), "or pass --skip_corrupt to leave such images out",
                                                  env_var("VG_MAX_IMAGE_PIXELS", "100"), leaves="complete"),
    "collect: root missing": Case("collect", lambda e: [str(e.tmp / "nope"), "--out", str(e.tmp / "o")],
                                  "is not a folder"),
    "collect: no runs": Case("collect", lambda e: [str(e.tmp), "--out", str(e.tmp / "o")], "no run folders"),
    "collect: out missing": Case("collect", lambda e: [str(e.tmp)], "the following arguments are required: --out"),
    "collect: out is a file": Case("collect", lambda e: [str(e.tmp / "runs"), "--out", str(e.tmp / "f")],
                                   "is a file", lambda e, mp: run_folder(e, mp) or (e.tmp / "f").write_text("")),
    "collect: results.json a list": Case(
        "collect", lambda e: [str(e.tmp / "runs"), "--out", str(e.tmp / "o")], "holds a JSON list",
        lambda e, mp: (e.tmp / "runs/x").mkdir(parents=True) or (e.tmp / "runs/x/results.json").write_text("[1]")),
    "collect: results.json not JSON": Case(
        "collect", lambda e: [str(e.tmp / "runs"), "--out", str(e.tmp / "o")], "is not valid JSON",
        lambda e, mp: (e.tmp / "runs/x").mkdir(parents=True) or (e.tmp / "runs/x/results.json").write_text("{")),
    "collect: disk full": Case("collect", lambda e: [str(e.tmp / "runs"), "--out", str(e.tmp / "o"), "--no_plots"],
                               "results.csv: No space left on device",
                               lambda e, mp: run_folder(e, mp) or fill_disk(mp, "results.csv")),
    "world: not a number": Case("world", W("--image_size", "big"), "invalid int value: 'big'"),
    "world: format": Case("world", W("--format", "gif"), "invalid choice: 'gif'"),
    "world: seed": Case("world", W("--seed", "-1"), "seed must be a non-negative integer"),
    "world: sizes": Case("world", W("--train_db", "-3"), "train sizes must be two positive integers"),
    "world: huge map": Case("world", W("--map_size", "100000"), "use a smaller --map_size"),
    "world: map 0": Case("world", W("--map_size", "0"), "map_size must be a positive integer"),
    "world: view too wide": Case("world", W("--view_width", "2000"), "view_width must be in"),
    "world: name with a slash": Case("world", W("--name", "a/b"), "is not a plain folder name"),
    "world: out missing": Case("world", lambda e: WORLD_SIZES, "the following arguments are required: --out"),
    "world: out is a file": Case("world", W(), "choose another --out",
                                 lambda e, mp: (e.tmp / "worlds").write_text("")),
    "world: exists": Case("world", W(), "pass --overwrite",
                          lambda e, mp: write_image(e.tmp / "worlds/synthetic/images/x.jpg", size=32)),
    "world: disk full": Case("world", W(), "(No space left on device); free disk space",
                             lambda e, mp: fill_disk(mp, ".jpg")),
    "benchmark: fp16 on a CPU": Case("benchmark", B("--device", "cpu", "--precisions", "fp16"), "needs CUDA"),
    "benchmark: batch 0": Case("benchmark", B("--batch", "0"), "sizes out of range"),
    "benchmark: too few images": Case("benchmark", B("--images", "1"), "sizes out of range"),
    "benchmark: invalid device": Case("benchmark", B("--device", "tpu"), "invalid choice: 'tpu'"),
    "benchmark: invalid aggregation": Case("benchmark", B("--aggregations", "vlad"), "invalid choice: 'vlad'"),
    "benchmark: unknown flag": Case("benchmark", B("--no_such_flag"), "unrecognized arguments"),
}
