"""Tests of checkpoints: save/load round trip, safe-loading errors, and --resume continuing a run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train
from commons import UserError, atomic_save
from conftest import tiny_train_flags
from network import build_model, load_model_state
from util import check_resume_compatible, load_checkpoint, save_checkpoint




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
