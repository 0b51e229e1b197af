"""collect_results.py on hand-made run folders: the table equals the numbers in the results.json files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tools import collect_results
from commons import UserError

ROOT = Path("logs/abl")


def write(folder: Path, name: str, obj: dict | list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(obj))


def train_args(save_dir: str, seed: int, optim: str) -> dict:
    return {"save_dir": f"abl/{save_dir}", "seed": seed, "optim": optim, "lr": 1e-3, "resize": [32, 32],
            "test_resize": None, "val_positive_dist_threshold": 25.0, "index": "flat", "dataset_name": "synthetic",
            "epochs_num": 5, "datasets_folder": "/data", "device": "cpu", "num_workers": 0}


def train_run(save_dir: str, seed: int, optim: str, recalls: dict, time_s: float, epochs: int) -> Path:
    folder = ROOT / save_dir / "2026-01-01_00-00-00"
    args = train_args(save_dir, seed, optim)
    write(folder, "args.json", args)
    write(folder, "results.json", {
        "kind": "train", "args": args, "train_time_s": time_s, "epochs": epochs, "val_history": [],
        "test": {"dataset": "synthetic", "split": "test", "threshold": 25.0, "recalls": recalls,
                 "checkpoint": str(folder / "best_model.pth")}})
    return folder


def eval_run(save_dir: str, checkpoint: str, dataset: str, recalls: dict, threshold: float = 25.0) -> None:
    args = {"save_dir": f"abl/{save_dir}", "dataset_name": dataset, "split": "test", "resume": [checkpoint],
            "val_positive_dist_threshold": threshold, "test_resize": None, "resize": [32, 32], "index": "flat",
            "seed": 0, "test_method": "hard_resize", "multiscale": [1.0], "device": "cpu"}
    write(ROOT / save_dir / "2026-01-02_00-00-00", "results.json", {
        "dataset": dataset, "split": "test", "threshold": threshold, "recalls": recalls, "checkpoint": checkpoint,
        "args": args})


def rec(r1, r5, r10=None) -> dict:
    out = {"1": r1, "5": r5, "20": 100.0}
    if r10 is not None:
        out["10"] = r10
    return out


@pytest.fixture
def runs(tmp_path, monkeypatch) -> dict:
    """Three adam seeds, one sgd run (no R@10), St Lucia evals of two adam seeds (one linked by an absolute path
    of another machine), a 50 m re-evaluation of the sgd model and an unfinished adamw run."""
    monkeypatch.chdir(tmp_path)
    adam = {0: (50.0, 70.0, 90.0, 10.0, 3), 1: (60.0, 80.0, 95.0, 20.0, 4), 2: (70.0, 90.0, 100.0, 30.0, 5)}
    folders = {s: train_run(f"adam_s{s}", s, "adam", rec(*v[:3]), v[3], v[4]) for s, v in adam.items()}
    sgd = train_run("sgd_s0", 0, "sgd", rec(30.0, 50.0), 12.0, 2)
    eval_run("lucia_adam_s0", str(folders[0] / "best_model.pth"), "st_lucia", rec(20.0, 40.0, 60.0))
    eval_run("lucia_adam_s1", "/elsewhere/" + str(folders[1] / "best_model.pth"), "st_lucia", rec(30.0, 50.0, 70.0))
    eval_run("thr50_sgd", str(sgd / "best_model.pth"), "synthetic", rec(45.0, 65.0, 85.0), threshold=50.0)
    write(ROOT / "adamw_s0" / "2026-01-03_00-00-00", "args.json", train_args("adamw_s0", 0, "adamw"))
    return {"adam": adam}


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table_equals_run_folders_with_mean_and_std_over_seeds(runs, tmp_path):
    out = collect_results.main([str(ROOT), "--out", "summary"])
    rows = read_csv(tmp_path / "summary" / "results.csv")
    header = list(rows[0])
    assert header[:4] == ["run", "seeds", "optim", "val_positive_dist_threshold"]  # only flags that differ
    assert not {"lr", "seed", "save_dir", "device", "resize"} & set(header)
    assert [(r["optim"], r["val_positive_dist_threshold"]) for r in rows] == [
        ("adam", "25"), ("adamw", "25"), ("sgd", "25"), ("sgd", "50")]
    adam, adamw, sgd, sgd50 = rows
    values = np.array([v[:5] for v in runs["adam"].values()])  # 3 seeds × (R@1, R@5, R@10, time, epochs)
    for j, col in enumerate(["synthetic R@1", "synthetic R@5", "synthetic R@10", "train_time_s", "epochs"]):
        assert float(adam[col]) == pytest.approx(values[:, j].mean())
        assert float(adam[f"{col} std"]) == pytest.approx(values[:, j].std(ddof=1))
    assert float(adam["st_lucia R@1"]) == pytest.approx(25.0)  # two of three seeds were evaluated there
    assert float(adam["st_lucia R@1 std"]) == pytest.approx(np.std([20.0, 30.0], ddof=1))
    assert (adam["seeds"], adam["runs"]) == ("0 1 2", "3")
    assert "(incomplete)" in adamw["run"] and all(adamw[c] == "" for c in header if "R@" in c or c == "epochs")
    assert (sgd["synthetic R@1"], sgd["synthetic R@10"], sgd["st_lucia R@1"]) == ("30.0", "", "")  # never invented
    assert (sgd["synthetic R@1 std"], sgd["train_time_s"]) == ("", "12.0")
    assert (sgd50["synthetic R@1"], sgd50["synthetic R@10"], sgd50["train_time_s"]) == ("45.0", "85.0", "12.0")
    assert "sgd_s0 (thr50_sgd)" in sgd50["run"]
    assert out["varied"] == ["optim", "val_positive_dist_threshold"]


def test_markdown_latex_and_plots(runs, tmp_path):
    collect_results.main([str(ROOT), "--out", "summary"])
    md = (tmp_path / "summary" / "results.md").read_text().splitlines()
    assert md[0].startswith("| run | seeds | optim |") and len(md) == 2 + 4
    assert "| 60.0 ± 10.0 | 80.0 ± 10.0 | 95.0 ± 5.0 | 25.0 ± 7.1 (n=2) |" in md[2]
    tex = (tmp_path / "summary" / "results.tex").read_text()
    assert r"60.0 $\pm$ 10.0" in tex and r"train\_time\_s" in tex and r"\bottomrule" in tex
    for flag in ("optim", "val_positive_dist_threshold"):
        assert (tmp_path / "summary" / f"recall_vs_{flag}.png").stat().st_size > 1000


def test_missing_or_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        collect_results.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="no run folders"):
        collect_results.main([str(tmp_path), "--out", str(tmp_path / "o")])


def test_runs_on_other_data_are_never_merged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed, folder in ((0, "/data/world_a"), (1, "/data/world_a"), (0, "/data/world_b")):
        run = train_run(f"s{seed}_{folder[-1]}", seed, "adam", rec(10.0 * (seed + 1), 50.0), 1.0, 1)
        args = json.loads((run / "results.json").read_text())
        args["args"]["datasets_folder"] = folder
        write(run, "results.json", args)
    out = collect_results.main([str(ROOT), "--out", "summary", "--no_plots"])
    assert out["varied"] == ["datasets_folder"]
    assert [(r["datasets_folder"], r["runs"], r["synthetic R@1"][0]) for r in out["rows"]] == [
        ("/data/world_a", 2, 15.0), ("/data/world_b", 1, 10.0)]


def test_a_results_file_that_is_not_an_object_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(ROOT / "x", "results.json", [1, 2])
    with pytest.raises(UserError, match=r"results.json holds a JSON list, not the object"):
        collect_results.main([str(ROOT), "--out", "summary"])
    assert not (tmp_path / "summary").exists()
