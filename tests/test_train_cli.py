"""train.py from the user's side: where a run is, and what every stop says (error, Ctrl-C, non-finite loss, full disk),
with the exact command that continues the run; plus the errors of checkpoints and weights not covered by
tests/test_bad_input.py."""
from __future__ import annotations

import os
import platform
import shlex
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runs import atomic_files
import eval as eval_cli
import train
from runs.atomic_files import atomic_save
from helpers import cli_stop as stop
from conftest import tiny_train_flags
from network import build_model
from parser import parse_train_args

REFRESHES = ["--negs_num_per_query", "2", "--neg_samples_num", "20", "--cache_refresh_rate", "10",
             "--infer_batch_size", "64", "--recall_values", "1", "5", "--epochs_num", "1"]
ONE_REFRESH, TWO_REFRESHES = REFRESHES + ["--queries_per_epoch", "10"], REFRESHES + ["--queries_per_epoch", "20"]


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch):
    """Runs write logs/ into a temporary CWD."""
    monkeypatch.chdir(tmp_path)


def only_run_folder(save_dir: str) -> Path:
    (folder,) = (Path("logs") / save_dir).iterdir()
    return folder


def interrupt_at_refresh(monkeypatch, n: int) -> None:
    """Ctrl-C in the n-th cache refresh (1-based), in the miner."""
    calls, real = [], train.MINERS["full"]

    def miner(ctx, query_ids):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(ctx, query_ids)
    monkeypatch.setitem(train.MINERS, "full", miner)


# ---------------------------------------------------------------- stops and their messages

def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tiny_world, monkeypatch, capsys) -> None:
    interrupt_at_refresh(monkeypatch, 1)
    argv = tiny_train_flags(tiny_world, "c") + ONE_REFRESH
    lines = stop(train.main, argv, capsys, code=130)
    folder = only_run_folder("c")
    assert lines == ["interrupted (Ctrl-C)", f"run folder: {folder}; no checkpoint yet (the first is written after "
                     f"the first cache refresh), nothing to resume; start again with: python train.py "
                     f"{shlex.join(argv)}"]
    assert not list(folder.glob("*.pth")) and not list(folder.glob(".*"))
    info = (folder / "info.log").read_text()
    assert f"run folder: {folder}" in info  # announced at start-up
    assert f"versions: python {platform.python_version()}, torch {torch.__version__.split('+')[0]}" in info  # resume


def test_ctrl_c_after_a_checkpoint_gives_the_command_that_continues(tiny_world, monkeypatch, capsys) -> None:
    interrupt_at_refresh(monkeypatch, 2)
    lines = stop(train.main, tiny_train_flags(tiny_world, "c") + TWO_REFRESHES, capsys, code=130)
    folder = only_run_folder("c")
    assert lines[1] == (f"run folder: {folder}; its last_model.pth is intact; continue with: python train.py "
                        f"--resume {folder / 'last_model.pth'}")
    command = shlex.split(lines[1].split("continue with: ")[1])  # the miner works again from the next call on
    results = train.main(command[2:])  # as printed, without the "python train.py"
    assert results["epochs"] == 1 and len(results["losses"]) == 2 and (folder / "results.json").is_file()
    log = (folder / "info.log").read_text()
    assert "resumed from" in log and "trained 1 epoch in" in log
    curves = np.asarray(Image.open(folder / "training_curves.png").convert("L"))
    assert curves.shape[1] > 400 and curves.std() > 10  # drawn at the end of the epoch, not blank


def test_non_finite_loss_says_how_to_start_anew(tiny_world, monkeypatch, capsys) -> None:
    real_build, calls = train.criterion_from_args, []

    def criterion_from_args(args):
        criterion = real_build(args)

        def nan_on_fifth_call(q, p, n):  # refresh 1 has 3 iterations (10 triplets, batch 4): call 5 = refresh 2, it 1
            calls.append(1)
            loss = criterion(q, p, n)
            return loss * float("nan") if len(calls) == 5 else loss
        return nan_on_fifth_call

    monkeypatch.setattr(train, "criterion_from_args", criterion_from_args)
    lines = stop(train.main, tiny_train_flags(tiny_world, "nan") + TWO_REFRESHES, capsys)
    folder = only_run_folder("nan")
    assert lines[0].startswith("error: loss became nan at epoch 00 refresh 2/2, iteration 1; the last good checkpoint")
    assert "resuming would repeat the same steps" in lines[1]
    command = shlex.split(lines[1].split("lower --lr: ")[1])
    assert command[command.index("--init_from") + 1] == str(folder / "last_model.pth")
    assert command[command.index("--lr") + 1] == "0.0001" and "--resume" not in command
    args = parse_train_args(command[2:])  # a valid command line: every flag exists
    assert (args.lr, args.queries_per_epoch, args.datasets_folder) == (1e-4, 20, str(tiny_world))
    ckpt = torch.load(folder / "last_model.pth", weights_only=True)
    assert ckpt["train_state"]["refresh"] == 1
    assert all(t.isfinite().all() for t in ckpt["model_state_dict"].values() if t.is_floating_point())


def test_huge_lr_stops_before_any_checkpoint(tiny_world, capsys) -> None:
    lines = stop(train.main, tiny_train_flags(tiny_world, "lr") + ONE_REFRESH + ["--lr", "1e30"], capsys)
    assert "became" in lines[0] and "lower --lr" in lines[0] and "no checkpoint was written" in lines[1]
    assert not list(only_run_folder("lr").glob("*.pth"))  # no checkpoint of the broken weights


def test_full_disk_names_the_os_reason_and_keeps_the_previous_checkpoint(tiny_world, monkeypatch, capsys) -> None:
    calls, real = [], tempfile.mkstemp

    def mkstemp(dir: str, prefix: str, suffix: str):  # the 2nd checkpoint write goes to a full device
        fd, tmp = real(dir=dir, prefix=prefix, suffix=suffix)
        if ".pth." in prefix:
            calls.append(1)
            if len(calls) == 2:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", mkstemp)
    lines = stop(train.main, tiny_train_flags(tiny_world, "full") + TWO_REFRESHES, capsys)
    folder = only_run_folder("full")
    assert "(No space left on device)" in lines[0] and "last_model.pth, if any, is intact" in lines[0]
    assert "enforce fail" not in lines[0] and "continue with: python train.py --resume" in lines[1]
    assert sorted(p.name for p in folder.iterdir() if ".pth" in p.name) == ["last_model.pth"]
    assert torch.load(folder / "last_model.pth", weights_only=True)["train_state"]["refresh"] == 1


# ---------------------------------------------------------------- checkpoints and weights

def eval_flags(world: Path, *extra: str) -> list[str]:
    return ["--datasets_folder", str(world), "--dataset_name", "synthetic", "--resize", "32", "32",
            "--device", "cpu", "--num_workers", "0", *extra]


def netvlad_checkpoint(path: Path, state: dict) -> Path:
    args = {"backbone": "resnet18conv4", "aggregation": "netvlad", "netvlad_clusters": 8}
    atomic_save({"model_state_dict": state, "args": args}, path)
    return path


def test_edited_netvlad_state_dict(tiny_world: Path, tmp_path: Path, capsys) -> None:
    state = build_model({"aggregation": "netvlad", "netvlad_clusters": 8}).state_dict()
    state["aggregation.centroids"] = torch.zeros(4, 256)  # 4 clusters instead of 8
    ckpt = netvlad_checkpoint(tmp_path / "edited.pth", state)
    (line,) = stop(eval_cli.main, eval_flags(tiny_world, "--resume", str(ckpt)), capsys)
    assert "does not match the model architecture" in line and "edited.pth" in line
    assert not (tmp_path / "logs").exists()


def test_gem_weights_in_a_netvlad_checkpoint(tiny_world: Path, tmp_path: Path, capsys) -> None:
    ckpt = netvlad_checkpoint(tmp_path / "gem.pth", build_model({"aggregation": "gem"}).state_dict())
    (line,) = stop(eval_cli.main, eval_flags(tiny_world, "--resume", str(ckpt)), capsys)
    assert "does not match the model architecture" in line


def test_imagenet_weights_offline(tiny_world: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """No cached weights and no network: a clear message with where to put the file, not a hang."""
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    flags = tiny_train_flags(tiny_world, "x")
    flags[flags.index("--pretrain") + 1] = "imagenet"
    (line,) = stop(train.main, flags, capsys)
    assert str(torch_home) in line and "--pretrain none" in line
    assert not (tmp_path / "logs").exists()


def test_num_workers_default_depends_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from parser import parse_eval_args
    base = ["--resize", "32", "32"]
    assert parse_train_args(base + ["--device", "cpu"]).num_workers == 0
    assert parse_train_args(base + ["--device", "cpu", "--num_workers", "3"]).num_workers == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve_device only asks this
    assert parse_train_args(base + ["--device", "cuda"]).num_workers == 2
    assert parse_eval_args(base + ["--device", "cuda", "--resume", "x.pth"]).num_workers == 2
    assert parse_eval_args(base + ["--device", "cpu", "--resume", "x.pth"]).num_workers == 0
