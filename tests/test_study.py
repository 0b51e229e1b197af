"""study.py: the plan (study/plan.toml resolved for every recipe), a tiny study end to end with the study-folder
layout of study/plan.py, and resumption: after --max_runs k only the remaining runs execute; a run killed
mid-way continues from its checkpoint; a failed run is recorded and the study moves on."""
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

import parser as vg_parser
from commons import UserError
from study.plan import load_plan, resolve_plan, select_runs
from study.status import Status
from tools.synthetic_world import make_map
from tools.world_styles import STYLES, apply_appearance_change

from conftest import ROOT

MINI_PLAN = '''
[recipes.mini]
train_dataset = "synthetic"
transfer_dataset = "synthetic_transfer"
train = """--resize 32 32 --pretrain none --lr 1e-3 --train_batch_size 4 --negs_num_per_query 2 --neg_samples_num 10
  --cache_refresh_rate 8 --queries_per_epoch 16 --epochs_num 1 --infer_batch_size 32 --num_workers 0 --device cpu"""
eval = "--infer_batch_size 32 --num_workers 0 --device cpu"
values = { lr_low = "1e-4" }
[recipes.mini.worlds]
train = { style = "city", seed = 0, image_size = 32, map_size = 512, train = [60, 30], val = [20, 10], test = [20, 10] }
transfer = { style = "suburb", seed = 1, image_size = 32, map_size = 512, test = [20, 10] }

[[experiment]]
name = "base"
part = "baseline"
title = "GeM"
question = "GeM on {train_dataset}, tested on {transfer_dataset}?"
varies = ["aggregation"]
eval = [{ id = "transfer", flags = "--dataset_name {transfer_dataset} --split test" }]
variant = [{ key = "gem", label = "GeM", train = "--aggregation gem" }]

[[experiment]]
name = "lr"
part = "ablation"
title = "Learning rate"
question = "Lower lr?"
varies = ["lr"]
variant = [{ key = "base", label = "baseline", reference = "base/gem" },
           { key = "lr_low", label = "lr {lr_low}", train = "--lr {lr_low}" }]

[[experiment]]
name = "thr"
part = "ablation"
title = "Success radius"
question = "Another radius, same checkpoint?"
varies = ["val_positive_dist_threshold"]
eval = [{ id = "thr50", flags = "--val_positive_dist_threshold 50" }]
variant = [{ key = "gem", label = "GeM", checkpoints = ["base/gem"] }]

[[experiment]]
name = "bad"
part = "variation"
title = "A run that cannot start"
question = "Is a failure recorded?"
varies = ["negs_num_per_query"]
variant = [{ key = "many_negs", label = "50 negatives of 10 candidates", train = "--negs_num_per_query 50" }]
'''


def run_study(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """python study.py with the mini plan and recipe, seed 0, into tmp_path/study."""
    plan = tmp_path / "mini.toml"
    plan.write_text(MINI_PLAN)
    base_env = {k: v for k, v in os.environ.items() if k not in ("DATASETS_FOLDER", "VG_KILL_AFTER_CHECKPOINTS")}
    return subprocess.run([sys.executable, str(ROOT / "study.py"), "--plan", str(plan), "--recipe", "mini",
                           "--seeds", "0", "--out", str(tmp_path / "study"), *args], cwd=tmp_path,
                          env={**base_env, **env}, capture_output=True, text=True)


def headers(log: Path) -> list[str]:
    """The command lines the runner logged, one per subprocess it started."""
    return [ln for ln in log.read_text().splitlines() if ln.startswith("=== ")] if log.is_file() else []


def only_folder(parent: Path) -> Path:
    (folder,) = [p for p in parent.iterdir() if p.is_dir()]
    return folder


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("recipe", ["embedded", "real", "tiny"])
def test_every_run_of_the_plan_parses(recipe):
    """Every train.py and eval.py flag list of the default plan is accepted by the toolkit's parsers."""
    plan = resolve_plan(load_plan(), recipe, [0, 1], "data", recipe != "real")
    runs = [r for e in plan["experiments"] for r in e["runs"]]
    for r in runs:
        if r["train_flags"] is not None:
            args = vg_parser.parse_train_args(r["train_flags"] + ["--datasets_folder", "data"])
            assert args.seed == r["seed"] and args.dataset_name == plan["train_dataset"]
        for ev in r["evals"]:
            args = vg_parser.eval_parser().parse_args(ev["flags"] + ["--resume", "x.pth"])
            vg_parser.validate_test_variant_args(args)
    parts = [e["part"] for e in plan["experiments"]]
    assert (parts.count("baseline"), parts.count("ablation")) == (2, 6)
    trained = {a for r in runs if r["train_flags"] for a in r["train_flags"]}
    assert {"crn", "cbam", "rolling", "sare_joint", "resnet18conv5"} <= trained
    evaluated = {a for r in runs for ev in r["evals"] for a in ev["flags"]}
    pca = {"--pca_dim", "--index"} if recipe != "tiny" else set()  # tiny worlds are too small for PCA 256
    assert {"--ensemble", "--multiscale", "--test_method"} | pca <= evaluated
    assert {r["seed"] for r in runs} == {0, 1} and all(r["key"].endswith(f"_s{r['seed']}") for r in runs)


def test_only_selects_an_experiment_after_the_trainings_it_needs():
    plan = resolve_plan(load_plan(), "embedded", [0], "data", True)
    assert select_runs(plan, ["ensembles"]) == ["baseline_gem/gem_s0", "baseline_netvlad/netvlad_s0",
                                                "ensembles/gem_netvlad_s0"]
    assert len(select_runs(plan, None)) == sum(len(e["runs"]) for e in plan["experiments"])
    with pytest.raises(UserError, match="unknown experiment nope"):
        select_runs(plan, ["nope"])


@pytest.mark.parametrize("edit, message", [
    (("{lr_low}", "{lr_lower}"), "unknown placeholder {lr_lower}"),
    (('reference = "base/gem"', 'reference = "base/gam"'), "evaluates base/gam_s0, which is not a training run"),
    (('name = "lr"', 'name = "base"'), "experiment names must be unique"),
])
def test_plan_mistakes_are_one_line_errors(edit, message):
    import tomllib
    raw = tomllib.loads(MINI_PLAN.replace(*edit))
    with pytest.raises(UserError, match=message):
        resolve_plan(raw, "mini", [0], "data", True)


def test_time_left_is_the_mean_time_per_kind(tmp_path):
    status = Status(tmp_path)
    status.runs.update({"a/x_s0": {"state": "done", "seconds": 30.0, "kind": "train"},
                        "a/y_s0": {"state": "done", "seconds": 50.0, "kind": "train"},
                        "b/x_s0": {"state": "done", "seconds": 4.0, "kind": "eval"},
                        "c/r_s0": {"state": "pending", "kind": "reference"},
                        "a/z_s0": {"state": "pending", "kind": "train"},
                        "b/z_s0": {"state": "pending", "kind": "eval"}})
    assert status.estimate_left(["a/z_s0", "b/z_s0", "c/r_s0"]) == 40.0 + 4.0 + 0.0
    line = status.progress(list(status.runs), "a/z_s0", "train")
    assert line.startswith("[4/6] 3 done, 0 failed, 3 left | a/z_s0: train") and line.endswith("~44s left")


def test_tiny_study_end_to_end_and_resumed_after_k_runs(tmp_path):
    """--max_runs 1 stops after one run; the next call runs only the others; a third runs nothing."""
    first = run_study(tmp_path, "--only", "base", "lr", "thr", "--max_runs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    study = tmp_path / "study"
    status = read(study / "status.json")["runs"]
    assert [r for r, s in status.items() if s["state"] == "done"] == ["base/gem_s0"]
    gem = only_folder(study / "runs/base/gem_s0")
    gem_mtime = (gem / "results.json").stat().st_mtime_ns
    assert not (study / "runs/lr").exists()

    second = run_study(tmp_path, "--only", "base", "lr", "thr")
    assert second.returncode == 0, second.stderr[-2000:]
    assert only_folder(study / "runs/base/gem_s0") == gem and (gem / "results.json").stat().st_mtime_ns == gem_mtime
    assert len(headers(study / "logs/base/gem_s0/train.log")) == 1  # never trained again
    assert len(headers(study / "logs/lr/lr_low_s0/train.log")) == 1
    status = read(study / "status.json")
    assert {r: s["state"] for r, s in status["runs"].items()} == {
        "base/gem_s0": "done", "lr/base_s0": "done", "lr/lr_low_s0": "done", "thr/gem_s0": "done",
        "bad/many_negs_s0": "pending"}
    assert set(status["machine"]) >= {"cpu", "cores", "torch", "cpu_capability", "gpu"}
    assert status["compute_seconds"] > 0 and status["finished"] is None  # bad/ was never run

    third = run_study(tmp_path, "--only", "base", "lr", "thr")
    assert third.returncode == 0 and len(headers(study / "logs/lr/lr_low_s0/train.log")) == 1
    check_layout(study)


def check_layout(study: Path) -> None:
    """The contract of study/plan.py: plan.json, worlds, analysis, run and eval folders, summaries."""
    plan = read(study / "plan.json")
    assert plan["embedded"] and plan["seeds"] == [0] and plan["datasets_folder"] == str(study / "worlds")
    assert [e["name"] for e in plan["experiments"]] == ["base", "lr", "thr", "bad"]
    lr_low = plan["experiments"][1]["runs"][1]
    assert lr_low["key"] == "lr_low_s0" and lr_low["train_flags"][-4:] == ["--lr", "1e-4", "--seed", "0"]
    assert plan["experiments"][2]["runs"][0]["checkpoint_of"] == "base/gem_s0"
    assert sorted(p.name for p in (study / "worlds/synthetic_transfer/images").iterdir()) == ["test"]
    assert read(study / "worlds/synthetic_transfer/world.json")["style"] == "suburb"
    for name in ("synthetic", "synthetic_transfer"):
        assert (study / "analysis" / name / "summary.json").is_file()
    transfer = read(only_folder(study / "evals/base/gem_s0/transfer") / "results.json")
    thr50 = read(only_folder(study / "evals/thr/gem_s0/thr50") / "results.json")
    assert transfer["dataset"] == "synthetic_transfer" and thr50["threshold"] == 50.0
    with open(study / "summary/thr/results.csv") as f:
        rows = list(csv.DictReader(f))
    by_radius = {row["val_positive_dist_threshold"]: row for row in rows}
    assert sorted(by_radius) == ["25", "50"]  # the training run's own test, and the eval at 50 m
    for n in ("1", "5", "10"):
        assert float(by_radius["50"][f"synthetic R@{n}"]) == thr50["recalls"][n]
    with open(study / "summary/base/results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["synthetic_transfer R@1"]) == transfer["recalls"]["1"]


def test_killed_and_failed_runs_are_recorded_then_resumed(tmp_path):
    """Every train.py is killed after its first checkpoint: the study records it, the eval that needs its
    checkpoint and a run with a bad flag as failed, goes on, and exits 1; the next call resumes the training."""
    first = run_study(tmp_path, "--only", "thr", "bad", VG_KILL_AFTER_CHECKPOINTS="1")
    assert first.returncode == 1 and "error: 3 runs failed" in first.stderr
    study = tmp_path / "study"
    runs = read(study / "status.json")["runs"]
    assert runs["base/gem_s0"]["error"] == "killed by signal 9"
    assert runs["thr/gem_s0"]["error"] == "needs the checkpoint of base/gem_s0, which has not finished"
    assert runs["bad/many_negs_s0"]["error"].startswith("error: --negs_num_per_query (50) cannot exceed")
    killed = only_folder(study / "runs/base/gem_s0")
    assert (killed / "last_model.pth").is_file() and not (killed / "results.json").exists()

    second = run_study(tmp_path, "--only", "thr")
    assert second.returncode == 0, second.stderr[-2000:]
    assert only_folder(study / "runs/base/gem_s0") == killed and (killed / "results.json").is_file()
    assert "--resume" in headers(study / "logs/base/gem_s0/train.log")[1]
    assert "resumed from" in (killed / "info.log").read_text()
    runs = read(study / "status.json")["runs"]
    assert [runs[r]["state"] for r in ("base/gem_s0", "thr/gem_s0", "bad/many_negs_s0")] == ["done", "done", "failed"]


def test_the_transfer_style_has_other_map_statistics():
    """suburb (the transfer world) vs city (the default): a smoother map (mean difference between neighbouring
    pixels under half of city's), and queries with a colour cast (one channel's change reaches the others)."""
    city, suburb = (make_map(256, 0, STYLES[name]).numpy() for name in ("city", "suburb"))
    roughness = [float(np.abs(np.diff(m, axis=2)).mean()) for m in (city, suburb)]  # mean |x[i+1] - x[i]|
    assert roughness[1] < 0.5 * roughness[0]
    views = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    bumped = views.clone()
    bumped[:, 0] += 1.0  # only the first channel changes
    for name, mixes in (("city", False), ("suburb", True)):
        change = {**STYLES[name].query_change, "noise_std": 0.0, "max_occluders": 0}
        a, b = (apply_appearance_change(v, torch.Generator().manual_seed(0), change) for v in (views, bumped))
        assert not torch.equal(a[:, 0], b[:, 0])
        assert (not torch.allclose(a[:, 1:], b[:, 1:])) == mixes, name  # a colour cast mixes the channels
