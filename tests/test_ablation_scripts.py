"""The ablation scripts (syntax, grids through a stub interpreter, one real QUICK run) and the image-size flags
they rely on (--resize for training, --test_resize for validation/test/eval.py, with GeM and NetVLAD)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import collect_results
import eval as eval_script
import train
from datasets_ws import TripletsDataset
from network import build_model
from util import save_checkpoint

from conftest import ROOT, tiny_train_flags

SCRIPTS = ["lr_optimizer", "st_lucia_transfer", "train_threshold", "eval_threshold", "augmentation", "resize"]

# Stands in for python: records every call, fakes train.py/eval.py/world outputs (no torch), runs `-c` for real.
STUB = r'''
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
if argv[0] == "-c":
    os.execv(sys.executable, [sys.executable] + argv)
def num(x):
    for t in (int, float):
        try:
            return t(x)
        except ValueError:
            pass
    return x
def parse(args):
    out, key = {}, "_"  # "_": positional arguments
    for a in args:
        if a.startswith("--"):
            key = a[2:]
            out[key] = []
        else:
            out.setdefault(key, []).append(num(a))
    return {k: (v[0] if len(v) == 1 else v) if v else True for k, v in out.items()}
script = "world" if argv[:2] == ["-m", "tools.synthetic_world"] else Path(argv[0]).name
f = parse(argv[2:] if script == "world" else argv[1:])
call = {"script": script, "flags": f}
log = Path(os.environ["STUB_LOG"])
n = len(log.read_text().splitlines()) if log.exists() else 0
recalls = {"1": float(n), "5": 50.0 + n, "10": 60.0 + n}
if script == "world":
    for split in ("train", "val", "test"):
        (Path(f["out"]) / f["name"] / "images" / split).mkdir(parents=True, exist_ok=True)
elif script == "collect_results.py":
    Path(f["out"]).mkdir(parents=True)
    (Path(f["out"]) / "results.md").write_text("| stub |\n")
else:
    folder = Path("logs") / f["save_dir"] / f"2026-01-01_00-00-{n:02d}"
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps(f))
    if script == "train.py":
        res = {"kind": "train", "args": f, "train_time_s": 1.0, "epochs": 1,
               "test": {"dataset": f["dataset_name"], "split": "test", "recalls": recalls}}
        (folder / "best_model.pth").write_text("")
    else:
        res = {"dataset": f["dataset_name"], "split": f.get("split", "test"), "recalls": recalls,
               "checkpoint": f["resume"], "args": f}
        images = Path(f["datasets_folder"]) / f["dataset_name"] / "images"
        call["dataset_splits"] = sorted(p.name for p in images.iterdir())
    (folder / "results.json").write_text(json.dumps(res))
with open(log, "a") as fh:
    fh.write(json.dumps(call) + "\n")
'''


def run_script(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "QUICK": "1", "ABLATION_DIR": "abl", "TMPDIR": str(cwd), **env}
    return subprocess.run(["bash", str(ROOT / "ablations" / f"{name}.sh")], cwd=cwd, env=full_env,
                          capture_output=True, text=True)


def test_every_script_parses():
    for name in SCRIPTS + ["common"]:
        subprocess.run(["bash", "-n", str(ROOT / "ablations" / f"{name}.sh")], check=True)


# script → (number of train.py runs, eval.py runs, flags that vary in its table)
GRIDS = {
    "lr_optimizer": (3, 0, ["optim", "lr", "scheduler", "warmup_epochs"]),
    "st_lucia_transfer": (2, 2, ["aggregation"]),
    "train_threshold": (2, 0, ["train_positives_dist_threshold"]),
    "eval_threshold": (1, 2, ["val_positive_dist_threshold"]),
    "augmentation": (3, 0, ["augmentation_preset", "augment_targets"]),
    "resize": (4, 4, ["aggregation", "resize", "test_resize"]),
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_grid_of_each_script(name, tmp_path):
    """QUICK=1 with a stub interpreter: the calls each script makes, and the collector's table of them."""
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/bash\nexec "{sys.executable}" "{stub}" "$@"\n')
    wrapper.chmod(0o755)
    proc = run_script(name, tmp_path, PYTHON=str(wrapper), STUB_LOG=str(tmp_path / "calls.jsonl"))
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    trains = [c["flags"] for c in calls if c["script"] == "train.py"]
    evals = [c for c in calls if c["script"] == "eval.py"]
    n_train, n_eval, varied = GRIDS[name]
    assert (len(trains), len(evals)) == (n_train, n_eval)
    assert calls[0]["script"] == "world" and calls[0]["flags"]["image_size"] == 32
    assert calls[-1] == {"script": "collect_results.py", "flags": {"_": "logs/abl", "out": "logs/abl/summary"}}
    save_dirs = [c["flags"]["save_dir"] for c in calls if c["script"] in ("train.py", "eval.py")]
    assert len(set(save_dirs)) == len(save_dirs) and all(s.startswith("abl/") for s in save_dirs)
    assert all(t["epochs_num"] == 1 and t["resize"] in ([32, 32], [48, 40]) for t in trains)
    for e in evals:
        assert Path(e["flags"]["resume"]).parent.parent.parent == Path("logs/abl")  # a checkpoint of this ablation
        if name == "st_lucia_transfer":
            assert e["flags"]["dataset_name"] == "st_lucia" and e["dataset_splits"] == ["test"]
    out = collect_results.main([str(tmp_path / "logs" / "abl"), "--out", str(tmp_path / "table"), "--no_plots"])
    assert sorted(out["varied"]) == sorted(varied)
    assert len(out["rows"]) == n_train + (n_eval if name != "st_lucia_transfer" else 0)


def test_quick_transfer_runs_end_to_end(tmp_path):
    """The real QUICK st_lucia_transfer (one aggregation): its table holds the numbers of both run folders."""
    proc = run_script("st_lucia_transfer", tmp_path, AGGREGATIONS="gem")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| run | synthetic R@1 |" in proc.stdout
    train_res = json.loads(next((tmp_path / "logs/abl/gem_seed0").glob("*/results.json")).read_text())
    eval_res = json.loads(next((tmp_path / "logs/abl/eval_st_lucia_gem_seed0").glob("*/results.json")).read_text())
    assert eval_res["dataset"] == "st_lucia" and eval_res["args"]["resize"] == [32, 32]
    with open(tmp_path / "logs/abl/summary/results.csv") as f:
        (row,) = list(csv.DictReader(f))
    for n in ("1", "5", "10"):
        assert float(row[f"synthetic R@{n}"]) == train_res["test"]["recalls"][n]
        assert float(row[f"st_lucia R@{n}"]) == eval_res["recalls"][n]
    assert float(row["train_time_s"]) == train_res["train_time_s"] and float(row["epochs"]) == train_res["epochs"]


def spy_inputs(model: torch.nn.Module, shapes: list) -> torch.nn.Module:
    """Record (training mode, H, W) of every forward input of model."""
    model.register_forward_pre_hook(lambda m, inp: shapes.append((m.training, *inp[0].shape[-2:])))
    return model


def test_resize_trains_at_resize_and_validates_and_tests_at_test_resize(tiny_world, tmp_path, monkeypatch):
    """NetVLAD trained at 24×40 and validated/tested at 40×48 (GeM at another size: the eval.py test below)."""
    monkeypatch.chdir(tmp_path)
    shapes: list = []
    real_build = train.build_model
    monkeypatch.setattr(train, "build_model", lambda *a, **k: spy_inputs(real_build(*a, **k), shapes))
    flags = tiny_train_flags(tiny_world, "resize") + [
        "--aggregation", "netvlad", "--netvlad_clusters", "4", "--resize", "24", "40", "--test_resize", "40", "48",
        "--epochs_num", "1", "--queries_per_epoch", "8", "--cache_refresh_rate", "8", "--mining", "random"]
    results = train.main(flags)
    assert {s[1:] for s in shapes if s[0]} == {(24, 40)}  # training batches
    assert (False, 40, 48) in shapes  # validation and final test
    assert {s[1:] for s in shapes if not s[0]} <= {(24, 40), (40, 48)}  # (NetVLAD init uses training images)
    assert set(results["test"]["recalls"]) == {"1", "5", "10", "20"}


def test_eval_test_resize_sets_the_input_size(tiny_world, tmp_path, monkeypatch):
    """eval.py encodes at --test_resize when given, else at --resize; --val_positive_dist_threshold applies."""
    monkeypatch.chdir(tmp_path)
    arch = {"aggregation": "gem", "netvlad_clusters": 4, "pretrain": "none", "resize": [32, 32]}
    (tmp_path / "run").mkdir()
    save_checkpoint({"model_state_dict": build_model(arch).state_dict(), "args": arch}, tmp_path / "run", True)
    shapes: list = []
    real_load = eval_script.load_trained_model
    monkeypatch.setattr(eval_script, "load_trained_model", lambda *a, **k: spy_inputs(real_load(*a, **k), shapes))
    base = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resume",
            str(tmp_path / "run" / "best_model.pth"), "--device", "cpu", "--num_workers", "0",
            "--infer_batch_size", "64", "--resize", "32", "32"]
    eval_script.main(base + ["--test_resize", "40", "48"])
    assert {s[1:] for s in shapes} == {(40, 48)}
    shapes.clear()
    results = eval_script.main(base + ["--val_positive_dist_threshold", "50"])  # another radius, no retraining
    assert {s[1:] for s in shapes} == {(32, 32)}
    assert results["threshold"] == 50.0 and results["args"]["val_positive_dist_threshold"] == 50.0


def test_eval_defaults_to_the_checkpoint_sizes(tiny_world, tmp_path, monkeypatch):
    """Without --resize/--test_resize, eval.py encodes at the checkpoint's --test_resize (or --resize)."""
    monkeypatch.chdir(tmp_path)
    shapes: list = []
    real_load = eval_script.load_trained_model
    monkeypatch.setattr(eval_script, "load_trained_model", lambda *a, **k: spy_inputs(real_load(*a, **k), shapes))
    for name, sizes, expected in (("plain", {"resize": [24, 40]}, (24, 40)),
                                  ("tested", {"resize": [24, 40], "test_resize": [40, 48]}, (40, 48))):
        arch = {"aggregation": "gem", "netvlad_clusters": 4, "pretrain": "none", **sizes}
        (tmp_path / name).mkdir()
        save_checkpoint({"model_state_dict": build_model(arch).state_dict(), "args": arch}, tmp_path / name, True)
        shapes.clear()
        eval_script.main(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resume",
                          str(tmp_path / name / "best_model.pth"), "--device", "cpu", "--num_workers", "0"])
        assert {s[1:] for s in shapes} == {expected}, name
    shapes.clear()  # a flag on the command line wins over the checkpoint's test size
    eval_script.main(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resume",
                      str(tmp_path / "tested" / "best_model.pth"), "--device", "cpu", "--num_workers", "0",
                      "--resize", "32", "32"])
    assert {s[1:] for s in shapes} == {(32, 32)}


def test_train_positives_threshold_sets_the_positives(tiny_world):
    """Positives of each kept query = the database images within the radius (hand-computed distances)."""
    counts = []
    for radius in (5.0, 15.0):
        ds = TripletsDataset(tiny_world, "synthetic", "train", (32, 32), 25.0, radius)
        d = np.linalg.norm(ds.queries_utms[:, None] - ds.database_utms[None], axis=2)  # Q×N_db metres
        assert [p.tolist() for p in ds.positives_per_query] == [np.flatnonzero(row <= radius).tolist() for row in d]
        assert all(len(p) > 0 for p in ds.positives_per_query)  # queries without positives are dropped
        counts.append(sum(len(p) for p in ds.positives_per_query) / ds.queries_num)
    assert counts[0] < counts[1]
