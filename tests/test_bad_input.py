"""Every command-line tool refuses bad input the same way: exit code 2, no traceback, a one-line message
(`error: <problem>; <fix>`), and no partial output left behind; a training run that stops (error, Ctrl-C, non-finite
loss, full disk) adds one line: where its run folder is and the exact command that continues it.

Each case of bad_input_cases.CASES runs the tool's main through commons.run_cli in this process; a full disk is
simulated by sending the writes of chosen files to /dev/full (ENOSPC), a read-only folder by an EROFS from os.mkdir.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tools import analyze_dataset
from tools.benchmark import run as benchmark
from tools import collect_results
import eval as eval_cli
import train
from bad_input_cases import CASES, ONE_REFRESH, make_checkpoints
from helpers import cli_stop
from conftest import ROOT, tiny_train_flags
from parser import parse_eval_args, parse_train_args
from runs import atomic_files
from tools import synthetic_world
from training.mining import MINERS

MAINS = {"train": train.main, "eval": eval_cli.main, "analyze": analyze_dataset.main, "collect": collect_results.main,
         "world": synthetic_world.main, "benchmark": benchmark.main}


@pytest.fixture(scope="module")
def checkpoints(tiny_world: Path, tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tiny_world, tmp_path_factory.mktemp("checkpoints"))


def files_below(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def assert_complete(path: Path) -> None:
    """A file a failed run may keep: never a temporary, and whole (JSON parses, images decode)."""
    assert not (path.name.startswith(".") and path.name.endswith(".tmp")), f"temporary file left: {path}"
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix in (".png", ".jpg"):
        with Image.open(path) as img:
            img.load()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tiny_world: Path, checkpoints: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    case = CASES[name]
    e = SimpleNamespace(world=tiny_world, ck=checkpoints, tmp=tmp_path, cwd=tmp_path / "cwd", data=tmp_path / "data")
    e.cwd.mkdir()
    monkeypatch.chdir(e.cwd)
    monkeypatch.delenv("VG_MAX_IMAGE_PIXELS", raising=False)
    case.prepare(e, monkeypatch)
    argv, before = case.argv(e), files_below(tmp_path)
    try:
        lines = cli_stop(MAINS[case.cli], argv, capsys)
    finally:
        monkeypatch.undo()
    assert case.expect in lines[0] and (len(lines) == 1 or case.leaves != "nothing"), lines  # no run, no 2nd line
    assert case.names is None or str(case.names(e)) in lines[0], lines
    new = files_below(tmp_path) - before
    if case.leaves == "nothing":
        assert not new, f"left behind: {sorted(map(str, new))}"
    else:
        for path in new:
            assert_complete(path)


def test_there_are_60_cases_covering_every_tool() -> None:
    assert len(CASES) >= 60 and {c.cli for c in CASES.values()} == set(MAINS)


@pytest.mark.parametrize("argv, expected", [
    (["train.py", "--aggregation", "nope"], "invalid choice: 'nope'"),
    (["-m", "tools.synthetic_world", "--out", "w", "--map_size", "100000"], "use a smaller --map_size"),
])
def test_real_command_line(argv: list[str], expected: str, tmp_path: Path) -> None:
    """The same contract through the interpreter: the argparse error leads (no usage dump), one line, exit code 2."""
    script = [str(ROOT / argv[0])] if argv[0].endswith(".py") else argv[:2]
    rest = argv[1:] if argv[0].endswith(".py") else argv[2:]
    proc = subprocess.run([sys.executable, *script, *rest], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and expected in proc.stderr
    assert not list(tmp_path.iterdir())


def test_num_workers_default_depends_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--resize", "32", "32"]
    assert parse_train_args(base + ["--device", "cpu"]).num_workers == 0
    assert parse_train_args(base + ["--device", "cpu", "--num_workers", "3"]).num_workers == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve_device only asks this
    assert parse_train_args(base + ["--device", "cuda"]).num_workers == 2
    assert parse_eval_args(base + ["--device", "cuda", "--resume", "x.pth"]).num_workers == 2
    assert parse_eval_args(base + ["--device", "cpu", "--resume", "x.pth"]).num_workers == 0


# ------------------------------------------------------------------- a training run that stops, and what it says

TWO_REFRESHES = ONE_REFRESH + ["--queries_per_epoch", "20"]  # the later value wins


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch) -> None:
    """Runs write logs/ into a temporary CWD."""
    monkeypatch.chdir(tmp_path)


def only_run_folder(save_dir: str) -> Path:
    (folder,) = (Path("logs") / save_dir).iterdir()
    return folder


def interrupt_at_refresh(monkeypatch, n: int) -> None:
    """Ctrl-C in the n-th cache refresh (1-based), in the miner."""
    calls, real = [], MINERS["full"]

    def miner(ctx, query_ids):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(ctx, query_ids)
    monkeypatch.setitem(MINERS, "full", miner)


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tiny_world, in_tmp_dir, monkeypatch,
                                                                             capsys) -> None:
    interrupt_at_refresh(monkeypatch, 1)
    argv = tiny_train_flags(tiny_world, "c") + ONE_REFRESH
    lines = cli_stop(train.main, argv, capsys, code=130)
    folder = only_run_folder("c")
    assert lines == ["interrupted (Ctrl-C)", f"run folder: {folder}; no checkpoint yet (the first is written after "
                     f"the first cache refresh), nothing to resume; start again with: python train.py "
                     f"{shlex.join(argv)}"]
    assert not list(folder.glob("*.pth")) and not list(folder.glob(".*"))
    info = (folder / "info.log").read_text()
    assert f"run folder: {folder}" in info  # announced at start-up
    assert f"versions: python {platform.python_version()}, torch {torch.__version__.split('+')[0]}" in info  # resume


def test_ctrl_c_after_a_checkpoint_gives_the_command_that_continues(tiny_world, in_tmp_dir, monkeypatch,
                                                                    capsys) -> None:
    interrupt_at_refresh(monkeypatch, 2)
    lines = cli_stop(train.main, tiny_train_flags(tiny_world, "c") + TWO_REFRESHES, capsys, code=130)
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


def test_non_finite_loss_says_how_to_start_anew(tiny_world, in_tmp_dir, monkeypatch, capsys) -> None:
    real_build, calls = train.criterion_from_args, []

    def criterion_from_args(args):
        criterion = real_build(args)

        def nan_on_fifth_call(q, p, n):  # refresh 1 has 3 iterations (10 triplets, batch 4): call 5 = refresh 2, it 1
            calls.append(1)
            loss = criterion(q, p, n)
            return loss * float("nan") if len(calls) == 5 else loss
        return nan_on_fifth_call

    monkeypatch.setattr(train, "criterion_from_args", criterion_from_args)
    lines = cli_stop(train.main, tiny_train_flags(tiny_world, "nan") + TWO_REFRESHES, capsys)
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


def test_huge_lr_stops_before_any_checkpoint(tiny_world, in_tmp_dir, capsys) -> None:
    lines = cli_stop(train.main, tiny_train_flags(tiny_world, "lr") + ONE_REFRESH + ["--lr", "1e30"], capsys)
    assert "became" in lines[0] and "lower --lr" in lines[0] and "no checkpoint was written" in lines[1]
    assert not list(only_run_folder("lr").glob("*.pth"))  # no checkpoint of the broken weights


def test_full_disk_names_the_os_reason_and_keeps_the_previous_checkpoint(tiny_world, in_tmp_dir, monkeypatch,
                                                                         capsys) -> None:
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
    lines = cli_stop(train.main, tiny_train_flags(tiny_world, "full") + TWO_REFRESHES, capsys)
    folder = only_run_folder("full")
    assert "(No space left on device)" in lines[0] and "last_model.pth, if any, is intact" in lines[0]
    assert "enforce fail" not in lines[0] and "continue with: python train.py --resume" in lines[1]
    assert sorted(p.name for p in folder.iterdir() if ".pth" in p.name) == ["last_model.pth"]
    assert torch.load(folder / "last_model.pth", weights_only=True)["train_state"]["refresh"] == 1
