"""The ablation scripts (thin front-ends of study.py: the arguments they pass, a real QUICK dry run) and the
image-size and threshold flags their experiments rely on (--resize for training, --test_resize for
validation/test/eval.py, with GeM and NetVLAD; the positives radius)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_script
import train
from datasets_ws import TripletsDataset
from network import build_model
from study.plan import load_plan, resolve_plan
from util import save_checkpoint

from conftest import ROOT, tiny_train_flags

# script -> experiment of study/plan.toml it runs
SCRIPTS = {"lr_optimizer": "lr_optimizer", "st_lucia_transfer": "transfer", "train_threshold": "train_threshold",
           "eval_threshold": "eval_threshold", "augmentation": "augmentation", "resize": "image_size"}
# Stands in for python: records its arguments and whether DATASETS_FOLDER reached it.
ARGV_STUB = ("import json, os, sys\n"
             "json.dump({'argv': sys.argv[1:], 'datasets_folder': os.environ.get('DATASETS_FOLDER')},"
             " open(os.environ['STUB_LOG'], 'w'))\n")


def run_script(name: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("QUICK", "SEEDS", "STUDY", "DATASETS_FOLDER")}
    full_env["PYTHON"] = sys.executable  # the test's interpreter, whether or not .venv exists
    return subprocess.run(["bash", str(ROOT / "ablations" / f"{name}.sh"), *args], cwd=cwd, env={**full_env, **env},
                          capture_output=True, text=True)


def stub_python(tmp_path: Path) -> Path:
    stub = tmp_path / "stub.py"
    stub.write_text(ARGV_STUB)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/bash\nexec "{sys.executable}" "{stub}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_every_script_parses():
    for name in list(SCRIPTS) + ["common"]:
        subprocess.run(["bash", "-n", str(ROOT / "ablations" / f"{name}.sh")], check=True)


def test_every_script_runs_an_experiment_of_the_plan():
    raw = load_plan()
    for recipe, embedded in (("embedded", True), ("real", False)):
        names = {e["name"] for e in resolve_plan(raw, recipe, [0], "data", embedded)["experiments"]}
        assert set(SCRIPTS.values()) <= names, recipe


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_is_a_front_end_of_the_study(name, tmp_path):
    """The environment becomes study.py options; the script's own arguments follow them."""
    proc = run_script(name, tmp_path, "--dry_run", PYTHON=str(stub_python(tmp_path)),
                      STUB_LOG=str(tmp_path / "call.json"), DATASETS_FOLDER="/data/vg", DATASET_NAME="pitts30k",
                      TRANSFER_DATASET="st_lucia", SEEDS="0 2", STUDY="logs/s")
    assert proc.returncode == 0, proc.stderr
    call = json.loads((tmp_path / "call.json").read_text())
    assert call["argv"] == [str(ROOT / "study.py"), "--only", SCRIPTS[name], "--out", "logs/s", "--train_dataset",
                            "pitts30k", "--transfer_dataset", "st_lucia", "--seeds", "0", "2", "--dry_run"]
    assert call["datasets_folder"] == "/data/vg"  # study.py reads it from the environment


def test_quick_runs_the_tiny_recipe_on_generated_worlds(tmp_path):
    proc = run_script("augmentation", tmp_path, PYTHON=str(stub_python(tmp_path)),
                      STUB_LOG=str(tmp_path / "call.json"), QUICK="1", DATASETS_FOLDER="/data/vg")
    assert proc.returncode == 0, proc.stderr
    call = json.loads((tmp_path / "call.json").read_text())
    assert call["argv"][1:] == ["--only", "augmentation", "--recipe", "tiny", "--out", "logs/quick_study"]
    assert call["datasets_folder"] is None


def test_quick_dry_run_lists_the_experiment_and_its_dependencies(tmp_path):
    """The real study.py behind a script: eval_threshold needs the two baselines, one seed each here."""
    proc = run_script("eval_threshold", tmp_path, "--dry_run", QUICK="1", SEEDS="0")
    assert proc.returncode == 0, proc.stderr
    runs = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("pending")]
    assert runs == ["baseline_gem/gem_s0", "eval_threshold/gem_s0", "baseline_netvlad/netvlad_s0",
                    "eval_threshold/netvlad_s0"]
    assert not (tmp_path / "logs").exists()  # a dry run writes nothing


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
