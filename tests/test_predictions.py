"""eval.py reports: recalls at several radii from one search, the recall@N curve, and prediction pictures."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
from commons import UserError
from conftest import tiny_train_flags
from retrieval.evaluation import recalls_by_threshold
from network import build_model
from parser import parse_eval_args, parse_train_args
from util import save_checkpoint
from runs.visualize import CORRECT, WRONG, prediction_picture

RADII = ("5", "10", "25", "50")


@pytest.fixture(scope="module")
def runs(tiny_world, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """An untrained checkpoint (train checkpoint format) evaluated three times on the test split of tiny_world.

    'multi': --recall_thresholds 5 10 25 50 and 3 predictions per query; 'r10' / 'r50': single radius runs,
    'r10' also saving only the wrong predictions. Values are (results dict, run folder).
    """
    root = tmp_path_factory.mktemp("predictions")
    args = parse_train_args(tiny_train_flags(tiny_world, "unused"))
    torch.manual_seed(0)
    save_checkpoint({"model_state_dict": build_model(args).state_dict(), "args": vars(args)}, root, is_best=True)
    base = ["--resume", str(root / "best_model.pth"), "--datasets_folder", str(tiny_world), "--dataset_name",
            "synthetic", "--resize", "32", "32", "--device", "cpu", "--num_workers", "0", "--infer_batch_size", "64"]
    flags = {"multi": ["--recall_thresholds", "50", *RADII[:3], "10", "--save_predictions", "3"],
             "r10": ["--val_positive_dist_threshold", "10", "--save_predictions", "2",
                     "--save_only_wrong_predictions"],
             "r50": ["--val_positive_dist_threshold", "50"]}
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name, extra in flags.items():
            results = eval_script.main(base + extra + ["--save_dir", name])
            (folder,) = (root / "logs" / name).iterdir()
            out[name] = (results, folder)
    return out


def test_recall_never_drops_with_a_larger_radius(runs):
    by_thr = runs["multi"][0]["recalls_by_threshold"]
    assert list(by_thr) == list(RADII)  # sorted numerically, duplicates removed
    for n in ("1", "5", "10", "20"):
        values = [by_thr[r][n] for r in RADII]
        assert values == sorted(values), n
    assert by_thr["5"]["1"] < by_thr["50"]["20"]  # the radius matters on this data


def test_multi_radius_equals_single_radius_runs(runs):
    multi = runs["multi"][0]
    assert multi["recalls_by_threshold"]["25"] == multi["recalls"]  # 25 m is the default radius
    assert multi["recalls_by_threshold"]["10"] == runs["r10"][0]["recalls"]
    assert multi["recalls_by_threshold"]["50"] == runs["r50"][0]["recalls"]


def test_recalls_by_threshold_hand_computed():
    db = np.array([[0.0, 0.0], [20.0, 0.0], [100.0, 0.0]])
    q = np.array([[0.0, 5.0], [90.0, 0.0]])
    preds = np.array([[1, 0], [0, 2]])  # query 0: 20.6 m then 5 m; query 1: 90 m then 10 m
    got = recalls_by_threshold(preds, q, db, [5, 10, 25], [1, 2])
    assert got == {5.0: {1: 0.0, 2: 50.0}, 10.0: {1: 0.0, 2: 100.0}, 25.0: {1: 50.0, 2: 100.0}}


def test_recall_curve(runs):
    results, folder = runs["multi"]
    curve = {int(n): v for n, v in results["recall_curve"].items()}
    assert sorted(curve) == list(range(1, min(100, results["database_num"]) + 1))
    for n, v in results["recalls"].items():
        assert curve[int(n)] == v
    values = [curve[n] for n in sorted(curve)]
    assert values == sorted(values)
    # every database image retrieved: only queries without any positive fail
    assert values[-1] == pytest.approx(100 * (1 - results["queries_without_positives"] / results["queries_num"]))
    for name in ("recall_curve.png", "recall_vs_threshold.png"):
        a = np.asarray(Image.open(folder / name).convert("RGB"))
        assert a.std() > 15 and len(np.unique(a.reshape(-1, 3)[::7], axis=0)) > 5
    assert not (runs["r50"][1] / "recall_vs_threshold.png").exists()


def _pictures(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "predictions").glob("*.jpg"))


def test_a_picture_per_query(runs):
    results, folder = runs["multi"]
    names = _pictures(folder)
    assert len(names) == results["queries_num"] == results["predictions_saved"]
    correct = sum(n.endswith("_correct.jpg") for n in names)
    assert correct == round(results["recalls"]["1"] * results["queries_num"] / 100)
    with Image.open(folder / "predictions" / names[0]) as img:
        assert img.width > 3 * img.height  # query beside 3 predictions


def test_only_wrong_predictions(runs):
    results, folder = runs["r10"]
    wrong = results["queries_num"] - round(results["recalls"]["1"] * results["queries_num"] / 100)
    assert 0 < wrong < results["queries_num"]  # otherwise the filter would not be tested
    names = _pictures(folder)
    assert len(names) == wrong == results["predictions_saved"]
    assert all(n.endswith("_wrong.jpg") for n in names)
    assert not (runs["r50"][1] / "predictions").exists()


def _has_colour(img: Image.Image, colour: tuple[int, int, int]) -> bool:
    return bool((np.asarray(img) == np.array(colour, dtype=np.uint8)).all(axis=2).any())


def test_prediction_frames_follow_the_threshold():
    grey = Image.new("RGB", (20, 16), (128, 128, 128))
    mixed = prediction_picture(grey, [grey, grey], [3.0, 30.0], threshold=25)
    assert _has_colour(mixed, CORRECT) and _has_colour(mixed, WRONG)
    assert not _has_colour(prediction_picture(grey, [grey], [25.0], threshold=25), WRONG)  # 25 m is a hit
    assert not _has_colour(prediction_picture(grey, [grey], [25.1], threshold=25), CORRECT)


@pytest.mark.parametrize("flags, message", [
    (["--save_only_wrong_predictions"], "needs --save_predictions"),
    (["--save_predictions", "-1"], "--save_predictions must be >= 0"),
    (["--recall_thresholds", "10", "0"], "--recall_thresholds must be > 0"),
])
def test_flag_errors(flags, message):
    with pytest.raises(UserError, match=message):
        parse_eval_args(["--resume", "x.pth", "--device", "cpu"] + flags)


def test_recalls_by_radius_are_printed_as_a_table(runs):
    results, folder = runs["multi"]
    log = (folder / "info.log").read_text()
    by_thr = results["recalls_by_threshold"]
    assert eval_script.recall_table({}, "radius", {f"{t} m": r for t, r in by_thr.items()}) in log
    table = eval_script.recall_table({}, "radius", {"5 m": {"1": 10.0, "5": 20.5}, "25 m": {"1": 30.0, "5": 100.0}})
    assert table.splitlines() == ["radius | R@1    | R@5   ", "5 m    |  10.00 |  20.50", "25 m   |  30.00 | 100.00"]


def test_results_are_written_before_the_pictures(runs, tiny_world, tmp_path, monkeypatch):
    """A failure while writing the pictures (here a full disk) loses none of the numbers."""
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "predictions/00000_wrong.jpg")

    monkeypatch.setattr(eval_script, "save_prediction_pictures", full_disk)
    monkeypatch.chdir(tmp_path)
    checkpoint = runs["multi"][0]["checkpoint"]
    with pytest.raises(OSError):
        eval_script.main(["--resume", checkpoint, "--datasets_folder", str(tiny_world), "--dataset_name",
                          "synthetic", "--resize", "32", "32", "--device", "cpu", "--num_workers", "0",
                          "--infer_batch_size", "64", "--save_predictions", "3", "--save_dir", "full"])
    (folder,) = (tmp_path / "logs" / "full").iterdir()
    saved = json.loads((folder / "results.json").read_text())
    assert saved["recalls"] == runs["multi"][0]["recalls"] and "predictions_saved" not in saved
    assert (folder / "recall_curve.png").is_file()
