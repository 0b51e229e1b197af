"""Tests of checkpoints: save/load round trip, safe-loading errors, and --resume continuing a run."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

import train
from runs.atomic_files import atomic_save
from commons import Terminated, UserError
from conftest import tiny_train_flags
from network import build_model, load_model_state
from util import (check_resumable, check_resume_compatible, load_checkpoint, remove_orphan_temporaries, resume_folder,
                  save_checkpoint, write_json)


@pytest.mark.parametrize("aggregation", ["gem", "netvlad"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, aggregation: str) -> None:
    torch.manual_seed(0)
    arch = {"backbone": "resnet18conv4", "aggregation": aggregation, "netvlad_clusters": 8}
    model = build_model(arch)
    x = torch.randn(3, 3, 32, 32)
    model.train()
    model(x)  # moves BatchNorm running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        ref = model(x)
    save_checkpoint({"model_state_dict": model.state_dict(), "args": arch}, tmp_path, is_best=True)
    assert (tmp_path / "best_model.pth").is_file() and (tmp_path / "last_model.pth").is_file()
    ckpt = load_checkpoint(tmp_path / "last_model.pth")
    assert ckpt["args"] == arch
    fresh = build_model(ckpt["args"]).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x), ref)
        load_model_state(fresh, ckpt["model_state_dict"], "last_model.pth")
        assert torch.equal(fresh(x), ref)


def test_not_best_writes_only_last(tmp_path: Path) -> None:
    save_checkpoint({"model_state_dict": {}, "args": {}}, tmp_path, is_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_model.pth"]


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    atomic_save({"model_state_dict": {"w": torch.zeros(1000)}, "args": {}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pth"
    atomic_save({"weights": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="not a checkpoint of this toolkit"):
        load_checkpoint(other)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model_state_dict": {}, "args": Path("x")}, unsafe)  # a class the safe loader refuses
    with pytest.raises(UserError, match="refused by the safe loader"):
        load_checkpoint(unsafe)


def test_mismatched_state_dict_is_a_user_error() -> None:
    gem = build_model({"aggregation": "gem"})
    netvlad = build_model({"aggregation": "netvlad", "netvlad_clusters": 8})
    with pytest.raises(UserError, match="does not match the model architecture"):
        load_model_state(netvlad, gem.state_dict(), "gem.pth")


def test_resume_refuses_changed_architecture() -> None:
    check_resume_compatible({"aggregation": "gem", "epochs_num": 1}, {"aggregation": "gem", "epochs_num": 5})
    with pytest.raises(UserError, match="--aggregation 'gem' \\(stored\\) vs 'netvlad'"):
        check_resume_compatible({"aggregation": "gem"}, {"aggregation": "netvlad"})


def test_resume_continues_the_run(tiny_world: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    flags = tiny_train_flags(tiny_world, "resume")
    first = train.main(flags + ["--epochs_num", "1"])
    folder = Path(first["test"]["checkpoint"]).parent
    assert first["epochs"] == 1 and len(first["val_history"]) == 1
    ckpt = load_checkpoint(folder / "last_model.pth")
    assert ckpt["train_state"]["epoch"] == 1 and ckpt["train_state"]["refresh"] == 0

    resumed = train.main(flags + ["--epochs_num", "2", "--resume", str(folder / "last_model.pth")])
    assert resumed["epochs"] == 2 and len(resumed["val_history"]) == 2
    refreshes = 40 // 20  # --queries_per_epoch / --cache_refresh_rate of tiny_train_flags
    assert len(resumed["losses"]) == 2 * refreshes
    assert resumed["losses"][:refreshes] == first["losses"]
    saved = json.loads((folder / "results.json").read_text())
    assert saved["epochs"] == 2 and set(saved["test"]["recalls"]) == {"1", "5", "10", "20"}
    assert load_checkpoint(folder / "last_model.pth")["train_state"]["epoch"] == 2

    straight = train.main(flags + ["--save_dir", "straight"])  # the same two epochs without interruption
    assert straight["losses"] == pytest.approx(resumed["losses"], rel=1e-5)
    assert straight["val_history"] == resumed["val_history"]


# ---------------------------------------------------------------- atomic writes, resume rules

def test_files_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_save({"w": torch.zeros(2)}, tmp_path / "last_model.pth")  # mkstemp alone would give 0o600
        write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {
        "last_model.pth": "0o640", "results.json": "0o640"}


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch, stop) -> None:
    path = tmp_path / "last_model.pth"
    atomic_save({"v": torch.tensor([1])}, path)

    def save_then_stop(obj, f) -> None:
        f.write(b"PK\x03\x04 partial")
        raise stop()

    monkeypatch.setattr(torch, "save", save_then_stop)
    with pytest.raises(stop):
        atomic_save({"v": torch.tensor([2])}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last_model.pth"]
    assert torch.equal(load_checkpoint_tensor(path), torch.tensor([1]))


def load_checkpoint_tensor(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["v"]


def test_full_disk_under_torch_gives_the_os_reason(tmp_path: Path, monkeypatch) -> None:
    """torch's zip writer turns a failed write into '[enforce fail at inline_container.cc]'; the error says why."""
    real = tempfile.mkstemp

    def mkstemp(**kwargs):
        fd, tmp = real(**kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(UserError) as e:
        atomic_save({"w": torch.zeros(100_000)}, tmp_path / "best_model.pth")
    assert "(No space left on device)" in str(e.value) and "enforce" not in str(e.value)
    with pytest.raises(OSError) as e:  # any other file: an OSError naming the file asked for
        write_json(tmp_path / "results.json", {"a": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "results.json")
    assert not list(tmp_path.iterdir())


def test_resume_rules(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is the best model.*pass .*last_model.pth.*--init_from"):
        check_resumable(tmp_path / "run" / "best_model.pth")
    check_resumable(tmp_path / "run" / "last_model.pth")
    check_resumable(None)
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text("{}")
    assert resume_folder(run / "last_model.pth") == run  # a run folder continues in place
    assert resume_folder(run / "ck.pth") is None and resume_folder(tmp_path / "last_model.pth") is None  # copies
    orphans = [run / ".last_model.pth.abc.tmp", run / ".best_model.pth.xyz.tmp"]
    for p in orphans + [run / ".other.tmp"]:
        p.write_bytes(b"x")
    assert sorted(remove_orphan_temporaries(run)) == sorted(orphans)
    assert sorted(p.name for p in run.iterdir()) == [".other.tmp", "args.json"]
