"""Exact resume: a run SIGKILLed mid-epoch (a real subprocess) and resumed ends bit for bit like an uninterrupted one.

The kill comes from the testing hook $VG_KILL_AFTER_CHECKPOINTS=N (util.py): the process kills itself right after
writing its N-th checkpoint file, so the tests need no sleeping or polling.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
import util
from runs.atomic_files import atomic_save, file_mode
from commons import UserError, run_cli
from conftest import ROOT, tiny_train_flags

# 2 epochs × 2 cache refreshes of 10 queries: checkpoint files written, in order:
# 1 last (e0 r1), 2 last (e0 r2), 3 best (end e0), 4 last (end e0), 5 last (e1 r1), 6 last (e1 r2), [best], last
SMALL = ["--negs_num_per_query", "2", "--neg_samples_num", "20", "--cache_refresh_rate", "10",
         "--queries_per_epoch", "20", "--infer_batch_size", "64", "--recall_values", "1", "5"]


def flags(world: Path, save_dir: str) -> list[str]:
    """Smallest training run with two epochs of two refreshes each."""
    return tiny_train_flags(world, save_dir) + SMALL


def run_train(cwd: Path, argv: list[str], kill_after: int | None = None,
              signal_name: str = "KILL") -> subprocess.CompletedProcess:
    """python train.py argv in cwd, with the same torch thread count as this process (bit-exact CPU math); with
    kill_after, the process gets SIG<signal_name> right after that many checkpoint files."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), util.KILL_SIGNAL_ENV: signal_name}
    env.pop(util.KILL_HOOK_ENV, None)
    if kill_after is not None:
        env[util.KILL_HOOK_ENV] = str(kill_after)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True)


def only_run_folder(cwd: Path, save_dir: str) -> Path:
    (folder,) = (cwd / "logs" / save_dir).iterdir()
    return folder


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tiny_world: Path, tmp_path_factory) -> Path:
    """Run folder of an uninterrupted run (subprocess, like the interrupted one)."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_train(cwd, flags(tiny_world, "ref"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return only_run_folder(cwd, "ref")


def test_sigkill_mid_epoch_then_resume_is_bit_exact(reference: Path, tiny_world: Path, tmp_path: Path) -> None:
    # 1) killed right after the first checkpoint: epoch 0, refresh 1 of 2
    proc = run_train(tmp_path, flags(tiny_world, "crash"), kill_after=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    folder = only_run_folder(tmp_path, "crash")
    last = folder / "last_model.pth"
    assert load(last)["train_state"]["epoch"] == 0 and load(last)["train_state"]["refresh"] == 1
    assert not (folder / "best_model.pth").exists() and not (folder / "results.json").exists()
    assert not list(folder.glob(".*.tmp")), "atomic_save left a temporary file"

    # 2) resumed with only --resume (the other flags come from the checkpoint) and another --num_workers
    #    (data-loader seeding); killed between the best_model.pth and last_model.pth writes of epoch 0's end
    proc = run_train(tmp_path, ["--resume", str(last), "--num_workers", "1"], kill_after=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load(folder / "best_model.pth")["train_state"]["epoch"] == 1  # best of epoch 0 written...
    assert load(last)["train_state"]["epoch"] == 0 and load(last)["train_state"]["refresh"] == 2  # ...last not

    # 3) resumed to the end: validation of epoch 0 is repeated, best_model.pth rewritten identically; the temporary
    #    file of a checkpoint write cut short by a SIGKILL is removed
    orphan = folder / ".last_model.pth.x1y2z3.tmp"
    orphan.write_bytes(b"PK partial")
    proc = run_train(tmp_path, ["--resume", str(last)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "at epoch 0, refresh 2" in (folder / "info.log").read_text()
    assert not orphan.exists() and not list(folder.glob(".*.tmp"))

    ref, got = (json.loads((f / "results.json").read_text()) for f in (reference, folder))
    assert got["test"]["recalls"] == ref["test"]["recalls"]
    assert got["losses"] == ref["losses"] and len(got["losses"]) == 4
    assert got["val_history"] == ref["val_history"] and got["epochs"] == ref["epochs"] == 2
    for name in ("last_model.pth", "best_model.pth"):
        a, b = load(reference / name), load(folder / name)
        assert_same_tensors(a["model_state_dict"], b["model_state_dict"])
        assert a["train_state"]["epoch"] == b["train_state"]["epoch"]
    assert torch.equal(load(reference / "last_model.pth")["neg_cache"], load(last)["neg_cache"])


def stop_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr once progress bars ('name: 67%|███   | 2/3 [00:00<00:00, 6.48it/s]') are dropped."""
    lines = (line.split("\r")[-1].strip() for line in proc.stderr.split("\n"))
    return [ln for ln in lines if ln and not re.search(r"\|\s*\d+/\d+ \[", ln)]


def same_results(a: Path, b: Path) -> None:
    ra, rb = (json.loads((f / "results.json").read_text()) for f in (a, b))
    assert (ra["test"]["recalls"], ra["losses"], ra["val_history"]) == (rb["test"]["recalls"], rb["losses"],
                                                                        rb["val_history"])


def test_sigterm_prints_the_resume_command_that_continues_exactly(reference: Path, tiny_world: Path,
                                                                  tmp_path: Path) -> None:
    # SIGTERM (cluster pre-emption) right after the 4th checkpoint file: the last_model.pth of epoch 0's end
    proc = run_train(tmp_path, flags(tiny_world, "term"), kill_after=4, signal_name="TERM")
    folder = only_run_folder(tmp_path, "term")
    last = folder / "last_model.pth"
    assert proc.returncode == 143 and "Traceback" not in proc.stderr
    assert f"run folder: {folder.relative_to(tmp_path)}" in proc.stdout  # announced at start-up
    lines = stop_lines(proc)
    assert lines == ["terminated (SIGTERM)", f"run folder: {folder.relative_to(tmp_path)}; its last_model.pth is "
                     f"intact; continue with: python train.py --resume {last.relative_to(tmp_path)}"]
    # a copy of the checkpoint (with the run's best_model.pth beside it) gets a run folder of its own
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(last, elsewhere / "ck.pth")
    shutil.copy(folder / "best_model.pth", elsewhere / "best_model.pth")
    proc = run_train(tmp_path, ["--resume", str(elsewhere / "ck.pth")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["best_model.pth", "ck.pth"]  # nothing written there
    copy_folder = next(f for f in (tmp_path / "logs" / "term").iterdir() if f != folder)
    same_results(reference, copy_folder)
    # the printed command, run as printed, ends exactly like the uninterrupted run
    command = shlex.split(lines[1].split("continue with: ")[1])
    assert command[:2] == ["python", "train.py"]
    proc = run_train(tmp_path, command[2:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    same_results(reference, folder)
    assert oct(last.stat().st_mode & 0o777) == oct(file_mode())  # as any new file, not mkstemp's 0600


def test_copied_checkpoint_without_its_best_tests_the_last_model(reference: Path, tmp_path: Path) -> None:
    shutil.copy(reference / "last_model.pth", tmp_path / "final.pth")  # a finished run, copied alone
    proc = run_train(tmp_path, ["--resume", str(tmp_path / "final.pth")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = only_run_folder(tmp_path, "ref")
    results = json.loads((folder / "results.json").read_text())
    assert results["test"]["checkpoint"] == str(tmp_path / "final.pth") and results["epochs"] == 2
    assert "testing the last model" in (folder / "info.log").read_text()


def test_best_model_holds_the_best_validation_recall(reference: Path) -> None:
    results = json.loads((reference / "results.json").read_text())
    r5 = [v["5"] for v in results["val_history"]]
    best = load(reference / "best_model.pth")["train_state"]
    assert best["best_recall"] == max(r5) == results["best_val_recall@5"]
    assert best["epoch"] == r5.index(max(r5)) + 1  # saved at the end of the first epoch reaching the best R@5


def test_resume_with_conflicting_flag_is_refused_before_writing(reference: Path, capsys) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in reference.iterdir()}
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, ["--resume", str(reference / "last_model.pth"), "--aggregation", "netvlad"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("error: cannot resume") and "--aggregation 'gem' (stored) vs 'netvlad'" in err
    assert {p.name: p.stat().st_mtime_ns for p in reference.iterdir()} == before


def test_resume_safe_flags_may_change() -> None:
    stored = {"aggregation": "gem", "epochs_num": 2, "num_workers": 0, "lr": 0.001}
    util.check_resume_compatible(stored, {**stored, "epochs_num": 5, "num_workers": 3, "new_flag": 1})
    with pytest.raises(UserError, match="--lr"):
        util.check_resume_compatible(stored, {**stored, "lr": 0.01})


def test_atomic_save_failure_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last_model.pth"
    atomic_save({"v": torch.tensor([1])}, path)

    def half_write(obj, f) -> None:
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(UserError, match="No space left on device.*last_model.pth, if any, is intact"):
        atomic_save({"v": torch.tensor([2])}, path)
    monkeypatch.undo()
    assert torch.equal(load(path)["v"], torch.tensor([1]))
    assert [p.name for p in tmp_path.iterdir()] == ["last_model.pth"]  # the temporary file is gone
