"""User errors of train.py and eval.py: non-zero exit, one 'error: ...' line on stderr, no traceback."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import eval as eval_cli
import train
from commons import atomic_save, run_cli
from conftest import tiny_train_flags
from network import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch):
    """Runs write logs/ into a temporary CWD; log handlers are dropped afterwards."""
    monkeypatch.chdir(tmp_path)
    yield
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()


def assert_one_line_error(code: int, err: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def run_main(main, argv: list[str], capsys) -> str:
    """Run main through commons.run_cli; return the error line after checking the exit contract."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    return assert_one_line_error(e.value.code, capsys.readouterr().err)


def run_script(script: str, argv: list[str], cwd: Path) -> str:
    """Run `python <script>` as a subprocess from cwd; return the error line."""
    proc = subprocess.run([sys.executable, str(REPO / script), *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    return assert_one_line_error(proc.returncode, proc.stderr)


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (90, 120, 30)).save(path)


def eval_flags(world: Path, *extra: str) -> list[str]:
    return ["--datasets_folder", str(world), "--dataset_name", "synthetic", "--resize", "32", "32",
            "--device", "cpu", "--num_workers", "0", *extra]


# ---------------------------------------------------------------- data

def test_missing_datasets_folder_subprocess(tiny_world: Path, tmp_path: Path) -> None:
    flags = tiny_train_flags(tmp_path / "nowhere", "x")
    line = run_script("train.py", flags, cwd=tmp_path)
    assert "nowhere" in line and "--datasets_folder" in line


def test_missing_dataset_name(tiny_world: Path, capsys) -> None:
    line = run_main(train.main, tiny_train_flags(tiny_world, "x") + ["--dataset_name", "pitts"], capsys)
    assert "'pitts' not found" in line and "synthetic" in line


def test_missing_split(tiny_world: Path, capsys) -> None:
    line = run_main(eval_cli.main, eval_flags(tiny_world, "--resume", "none.pth", "--split", "night"), capsys)
    assert "split 'night' missing" in line


def test_file_without_utm(tiny_world: Path, tmp_path: Path, capsys) -> None:
    world = tmp_path / "world"
    shutil.copytree(tiny_world / "synthetic", world / "synthetic")
    write_image(world / "synthetic/images/train/queries/IMG_0042.jpg")
    line = run_main(train.main, tiny_train_flags(world, "x"), capsys)
    assert "IMG_0042.jpg" in line


@pytest.mark.parametrize("empty", ["database", "queries"])
def test_empty_image_folder(tmp_path: Path, capsys, empty: str) -> None:
    split = tmp_path / "world/synthetic/images/test"
    (split / empty).mkdir(parents=True)
    full = "queries" if empty == "database" else "database"
    write_image(split / full / "@500000.00@4400000.00@x@.jpg")
    line = run_main(eval_cli.main, eval_flags(tmp_path / "world", "--resume", "none.pth"), capsys)
    assert f"no images in the {empty}" in line


# ---------------------------------------------------------------- checkpoints

def test_missing_checkpoint(tiny_world: Path, capsys) -> None:
    line = run_main(eval_cli.main, eval_flags(tiny_world, "--resume", "gone/best_model.pth"), capsys)
    assert "gone/best_model.pth not found" in line


def test_missing_resume_checkpoint_in_train(tiny_world: Path, capsys) -> None:
    line = run_main(train.main, tiny_train_flags(tiny_world, "x") + ["--resume", "gone.pth"], capsys)
    assert "gone.pth not found" in line


def netvlad_checkpoint(path: Path, state: dict) -> Path:
    args = {"backbone": "resnet18conv4", "aggregation": "netvlad", "netvlad_clusters": 8}
    atomic_save({"model_state_dict": state, "args": args}, path)
    return path


def test_edited_netvlad_state_dict(tiny_world: Path, tmp_path: Path, capsys) -> None:
    state = build_model({"aggregation": "netvlad", "netvlad_clusters": 8}).state_dict()
    state["aggregation.centroids"] = torch.zeros(4, 256)  # 4 clusters instead of 8
    ckpt = netvlad_checkpoint(tmp_path / "edited.pth", state)
    line = run_main(eval_cli.main, eval_flags(tiny_world, "--resume", str(ckpt)), capsys)
    assert "does not match the model architecture" in line and "edited.pth" in line


def test_gem_weights_in_a_netvlad_checkpoint(tiny_world: Path, tmp_path: Path, capsys) -> None:
    ckpt = netvlad_checkpoint(tmp_path / "gem.pth", build_model({"aggregation": "gem"}).state_dict())
    line = run_main(eval_cli.main, eval_flags(tiny_world, "--resume", str(ckpt)), capsys)
    assert "does not match the model architecture" in line


def test_imagenet_weights_offline(tiny_world: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """No cached weights and no network: a clear message with where to put the file, not a hang."""
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    flags = tiny_train_flags(tiny_world, "x")
    flags[flags.index("--pretrain") + 1] = "imagenet"
    line = run_main(train.main, flags, capsys)
    assert str(torch_home) in line and "--pretrain none" in line


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize("extra,expected", [
    (["--queries_per_epoch", "50", "--cache_refresh_rate", "20"], "must be a multiple of --cache_refresh_rate"),
    (["--negs_num_per_query", "50", "--neg_samples_num", "40"], "cannot exceed --neg_samples_num"),
])
def test_inconsistent_training_flags(tiny_world: Path, capsys, extra: list[str], expected: str) -> None:
    line = run_main(train.main, tiny_train_flags(tiny_world, "x") + extra, capsys)
    assert expected in line


def test_num_workers_default_depends_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from parser import parse_eval_args, parse_train_args
    base = ["--resize", "32", "32"]
    assert parse_train_args(base + ["--device", "cpu"]).num_workers == 0
    assert parse_train_args(base + ["--device", "cpu", "--num_workers", "3"]).num_workers == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve_device only asks this
    assert parse_train_args(base + ["--device", "cuda"]).num_workers == 2
    assert parse_eval_args(base + ["--device", "cuda", "--resume", "x.pth"]).num_workers == 2
    assert parse_eval_args(base + ["--device", "cpu", "--resume", "x.pth"]).num_workers == 0
