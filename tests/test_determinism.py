"""With --seed fixed, two CPU runs of the same command give identical metrics and weights; --seed -1 says it is not."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from conftest import tiny_train_flags

SMALL = ["--negs_num_per_query", "2", "--neg_samples_num", "20", "--cache_refresh_rate", "10",
         "--queries_per_epoch", "20", "--epochs_num", "1", "--infer_batch_size", "64", "--recall_values", "1", "5"]
NOT_DETERMINISTIC = "seed -1: this run is NOT deterministic"


def run(world: Path, cwd: Path, monkeypatch, seed: int) -> tuple[dict, Path]:
    """One training run (one epoch, two cache refreshes) in cwd; returns results and run folder."""
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    results = train.main(tiny_train_flags(world, "det") + SMALL + ["--seed", str(seed)])
    (folder,) = (cwd / "logs" / "det").iterdir()
    return results, folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "last_model.pth", map_location="cpu", weights_only=True)["model_state_dict"]


@pytest.fixture(scope="module")
def seeded_run(tiny_world: Path, tmp_path_factory) -> tuple[dict, Path]:
    with pytest.MonkeyPatch.context() as mp:
        return run(tiny_world, tmp_path_factory.mktemp("seeded") / "a", mp, seed=7)


def test_same_seed_same_results(seeded_run, tiny_world: Path, tmp_path: Path, monkeypatch) -> None:
    first, first_folder = seeded_run
    second, second_folder = run(tiny_world, tmp_path / "b", monkeypatch, seed=7)
    assert second["test"]["recalls"] == first["test"]["recalls"]
    assert second["losses"] == first["losses"] and len(first["losses"]) == 2
    assert second["val_history"] == first["val_history"]
    a, b = weights(first_folder), weights(second_folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert NOT_DETERMINISTIC not in (first_folder / "info.log").read_text()


def test_seed_minus_one_is_logged_as_not_deterministic(seeded_run, tiny_world: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    first, _ = seeded_run
    results, folder = run(tiny_world, tmp_path / "c", monkeypatch, seed=-1)
    assert NOT_DETERMINISTIC in (folder / "info.log").read_text()
    assert results["losses"] != first["losses"]  # not silently seeded
