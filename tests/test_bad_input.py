"""Bad input is refused with a one-line message naming the problem and the fix, exit code 2, no traceback."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import commons
import eval as eval_cli
import train
from commons import run_cli
from conftest import tiny_train_flags
from network import GeoLocalizationNet



def refreshes(n: int) -> list[str]:
    """Flags (after tiny_train_flags) for one epoch of n cache refreshes of 10 queries."""
    return ["--negs_num_per_query", "2", "--neg_samples_num", "20", "--cache_refresh_rate", "10",
            "--queries_per_epoch", str(10 * n), "--epochs_num", "1", "--infer_batch_size", "64",
            "--recall_values", "1", "5"]


ONE_REFRESH, TWO_REFRESHES = refreshes(1), refreshes(2)


def cli_error(main, argv: list[str], capsys) -> str:
    """Run a CLI entry point that must fail; return its one-line error message (checked for the format)."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    out = capsys.readouterr()
    assert e.value.code == 2
    assert "Traceback" not in out.err + out.out
    msg = out.err[out.err.rfind("error: "):].strip()  # tqdm may have written progress bars before it
    assert msg.startswith("error: ") and "\n" not in msg and out.err.count("error: ") == 1
    return msg


def only_run_folder(cwd: Path, save_dir: str) -> Path:
    (folder,) = (cwd / "logs" / save_dir).iterdir()
    return folder


# ------------------------------------------------------------------------------------------------ dataset layout

def write_image(path: Path, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


def mini_dataset(root: Path) -> Path:
    """root/mini with train/val/test: 2 database images 100 m apart and 1 query 1 m from the first."""
    for split in ("train", "val", "test"):
        base = root / "mini" / "images" / split
        write_image(base / "database" / "@500000.00@4400000.00@.jpg")
        write_image(base / "database" / "@500100.00@4400000.00@.jpg")
        write_image(base / "queries" / "@500001.00@4400000.00@.jpg")
    return root


def _rm(rel: str):
    return lambda root: shutil.rmtree(root / "mini" / "images" / rel)


def _empty_val_database(root: Path) -> None:
    for p in (root / "mini/images/val/database").iterdir():
        p.unlink()


def _add(rel: str):
    return lambda root: write_image(root / "mini" / "images" / rel)


LAYOUT_CASES = {  # mutation of mini_dataset, extra flags, expected text
    "datasets folder missing": (lambda root: None, ["--datasets_folder", "/nonexistent/datasets"],
                                "datasets folder /nonexistent/datasets does not exist; check --datasets_folder"),
    "dataset misnamed": (lambda root: None, ["--dataset_name", "minni"],
                         "dataset 'minni' not found in"),
    "split missing": (_rm("val"), [], "split 'val' missing"),
    "split empty": (_empty_val_database, [], "no images in the database of"),
    "queries folder missing": (_rm("train/queries"), [], "has no queries folder"),
    "name without UTM": (_add("train/database/IMG_0001.jpg"), [], "IMG_0001.jpg; names must look like"),
    "non-numeric UTM": (_add("train/queries/@abc@4400000@.jpg"), [], "@abc@4400000@.jpg; names must look like"),
    "NaN UTM": (_add("val/queries/@nan@4400000@.jpg"), [], "@nan@4400000@.jpg; names must look like"),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_dataset_layout_errors(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    mutate, extra, expected = LAYOUT_CASES[case]
    root = mini_dataset(tmp_path / "data")
    mutate(root)
    monkeypatch.chdir(tmp_path)
    argv = tiny_train_flags(root, "bad") + ["--dataset_name", "mini"] + ONE_REFRESH + extra
    assert expected in cli_error(train.main, argv, capsys)


def test_several_bad_names_are_counted(tmp_path: Path, monkeypatch, capsys) -> None:
    root = mini_dataset(tmp_path / "data")
    for name in ("a.jpg", "b.jpg", "@1@x@.jpg"):
        write_image(root / "mini/images/train/database" / name)
    monkeypatch.chdir(tmp_path)
    msg = cli_error(train.main, tiny_train_flags(root, "bad") + ["--dataset_name", "mini"], capsys)
    assert "3 of 5 files have no UTM coordinates" in msg


# ---------------------------------------------------------- corrupt images, mixed sizes, queries without positives

@pytest.fixture(scope="module")
def messy_world(tiny_world: Path, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A copy of tiny_world with 4 unreadable files (train, val ×2, test), images of other sizes/modes, and a test
    query far from every database image. Returns the datasets folder and the unreadable files."""
    root = tmp_path_factory.mktemp("messy") / "data"
    shutil.copytree(tiny_world, root)
    images = root / "synthetic" / "images"
    train_db, val_db, val_q, test_db = (sorted((images / s).iterdir()) for s in
                                        ("train/database", "val/database", "val/queries", "test/database"))
    truncated, empty, png = train_db[3], val_q[0], test_db[1].with_suffix(".png")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    empty.write_bytes(b"")
    Image.open(test_db[1]).save(png)
    test_db[1].unlink()
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # a PNG cut inside its image data
    not_image = val_db[0].with_name("@0500000.00@4400000.00@val@db@fake@0@.png")
    not_image.write_text("this is not an image")
    for path, size, mode in ((train_db[5], (48, 20), "RGB"), (train_db[6], (17, 33), "L"), (val_db[2], (40, 40), "RGBA")):
        Image.open(path).convert(mode).resize(size).save(path.with_suffix(".png"))
        path.unlink()
    far = sorted((images / "test/queries").iterdir())[0]
    e, n = far.name.split("@")[1:3]
    shutil.copy(far, far.with_name(f"@{float(e) + 5000:.2f}@{n}@test@q@far@0@.jpg"))
    return root, [truncated, not_image, empty, png]


def test_corrupt_images_are_all_reported_before_training(messy_world, tmp_path: Path, monkeypatch, capsys) -> None:
    root, bad = messy_world
    monkeypatch.chdir(tmp_path)
    msg = cli_error(train.main, tiny_train_flags(root, "corrupt") + ONE_REFRESH, capsys)
    assert msg.startswith("error: 4 corrupt or unreadable images: ") and msg.endswith("or pass --skip_corrupt to skip them")
    assert all(str(p) in msg for p in bad)  # train, val and test files, all named...
    folder = only_run_folder(tmp_path, "corrupt")
    assert not list(folder.glob("*.pth"))  # ...before any training
    log = (folder / "info.log").read_text()
    assert all(f"unreadable image {p} (" in log for p in bad)


def test_skip_corrupt_mixed_sizes_and_queries_without_positives(messy_world, tmp_path: Path, monkeypatch) -> None:
    root, bad = messy_world
    monkeypatch.chdir(tmp_path)
    results = train.main(tiny_train_flags(root, "skip") + ONE_REFRESH + ["--skip_corrupt"])
    log = (only_run_folder(tmp_path, "skip") / "info.log").read_text()
    assert log.count("--skip_corrupt: skipping 1 unreadable images") == 3  # train at start-up, test twice
    assert "--skip_corrupt: skipping 2 unreadable images" in log  # val
    assert all(str(p) in log for p in bad)
    # the far query has no database image within 25 m: counted, reported and a failure at every N
    from datasets_ws import BaseDataset
    test_ds = BaseDataset(root, "synthetic", "test", (32, 32), skip_corrupt=True)
    d = np.linalg.norm(test_ds.queries_utms[:, None] - test_ds.database_utms[None], axis=2)  # Q×N metres
    no_pos = int((d.min(1) > 25.0).sum())
    assert no_pos >= 1 and results["test"]["queries_without_positives"] == no_pos
    saved = json.loads((only_run_folder(tmp_path, "skip") / "results.json").read_text())
    assert saved["test"]["queries_without_positives"] == no_pos
    assert saved["test"]["recalls"]["5"] <= 100 * (1 - no_pos / test_ds.queries_num)
    assert f"{no_pos} of {test_ds.queries_num} queries have no database image" in log
    # eval.py honours --skip_corrupt too, and the checkpoint reproduces the final test of training
    ev = ["--datasets_folder", str(root), "--dataset_name", "synthetic", "--resume", results["test"]["checkpoint"],
          "--device", "cpu", "--num_workers", "0", "--log_level", "warning"]
    with pytest.raises(commons.UserError, match="pass --skip_corrupt"):
        eval_cli.main(ev)
    evaluated = eval_cli.main(ev + ["--skip_corrupt"])["recalls"]  # eval.py adds R@10 and R@20
    assert {n: evaluated[n] for n in results["test"]["recalls"]} == results["test"]["recalls"]


# ------------------------------------------------------------------------------------------------ checkpoints

def make_checkpoints(folder: Path) -> dict[str, Path]:
    """Bad checkpoint files: truncated, another architecture, a dict that is not a checkpoint, plain text."""
    gem = GeoLocalizationNet(aggregation="gem")
    args = {"aggregation": "gem", "backbone": "resnet18conv4"}
    good = folder / "good.pth"
    torch.save({"model_state_dict": gem.state_dict(), "args": args}, good)
    paths = {"truncated": folder / "truncated.pth", "other architecture": folder / "netvlad.pth",
             "not a checkpoint": folder / "dict.pth", "text file": folder / "notes.pth"}
    paths["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    netvlad = GeoLocalizationNet(aggregation="netvlad", netvlad_clusters=4)
    torch.save({"model_state_dict": netvlad.state_dict(), "args": args}, paths["other architecture"])
    torch.save({"weights": torch.ones(3)}, paths["not a checkpoint"])
    paths["text file"].write_text("hello\n")
    paths["missing"] = folder / "missing.pth"
    return paths


CHECKPOINT_ERRORS = {"missing": "not found", "truncated": "not a readable checkpoint, maybe truncated",
                     "other architecture": "does not match the model architecture",
                     "not a checkpoint": "is not a checkpoint of this toolkit",
                     "text file": "not a readable checkpoint"}


def test_bad_checkpoints(tiny_world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    paths = make_checkpoints(tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resize", "32", "32",
            "--device", "cpu", "--num_workers", "0"]
    for case, expected in CHECKPOINT_ERRORS.items():
        msg = cli_error(eval_cli.main, base + ["--resume", str(paths[case])], capsys)
        assert expected in msg and str(paths[case]) in msg, (case, msg)
    for case in ("missing", "truncated", "text file"):  # train.py --resume: refused before writing anything
        msg = cli_error(train.main, tiny_train_flags(tiny_world, "r") + ["--resume", str(paths[case])], capsys)
        assert CHECKPOINT_ERRORS[case] in msg
    assert not (tmp_path / "logs" / "r").exists()


# ------------------------------------------------------------------------------------------------ flags

FLAG_CASES = [(["--lr", "0"], "--lr must be > 0"),
              (["--queries_per_epoch", "30", "--cache_refresh_rate", "20"], "must be a multiple of --cache_refresh_rate"),
              (["--negs_num_per_query", "50"], "cannot exceed --neg_samples_num"),
              (["--resize", "0", "32"], "--resize must be positive"),
              (["--precision", "fp16"], "--precision fp16 needs CUDA"),
              (["--train_positives_dist_threshold", "30"], "must not exceed --val_positive_dist_threshold"),
              (["--seed", "-2"], "--seed must be >= 0"),
              (["--recall_values", "0", "5"], "--recall_values must be positive"),
              (["--num_workers", "-1"], "--num_workers must be >= 0")]


@pytest.mark.parametrize("extra,expected", FLAG_CASES)
def test_bad_flags(extra: list[str], expected: str, tiny_world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert expected in cli_error(train.main, tiny_train_flags(tiny_world, "flags") + extra, capsys)
    assert not (tmp_path / "logs").exists()  # refused before anything is written


# ------------------------------------------------------------------------------------- full disk, non-finite loss

def test_full_disk_keeps_previous_checkpoint(tiny_world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    calls = []

    def mkstemp(dir: str, prefix: str, suffix: str):  # the 2nd checkpoint write goes to a full device
        calls.append(1)
        fd, tmp = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        if len(calls) == 2:
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    monkeypatch.setattr(commons, "tempfile", type("FakeTempfile", (), {"mkstemp": staticmethod(mkstemp)}))
    monkeypatch.chdir(tmp_path)
    msg = cli_error(train.main, tiny_train_flags(tiny_world, "full") + TWO_REFRESHES, capsys)
    assert "No space left on device" in msg and "last_model.pth, if any, is intact" in msg
    folder = only_run_folder(tmp_path, "full")
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".pth", ".tmp")) == ["last_model.pth"]
    ckpt = torch.load(folder / "last_model.pth", weights_only=True)
    assert ckpt["train_state"]["refresh"] == 1


def test_nan_loss_stops_naming_the_iteration(tiny_world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real_build = train.build_criterion
    calls = []

    def build_criterion(name: str, margin: float):
        criterion = real_build(name, margin)

        def nan_on_fifth_call(q, p, n):  # refresh 1 has 3 iterations (10 triplets, batch 4): call 5 = refresh 2, it 1
            calls.append(1)
            loss = criterion(q, p, n)
            return loss * float("nan") if len(calls) == 5 else loss
        return nan_on_fifth_call

    monkeypatch.setattr(train, "build_criterion", build_criterion)
    monkeypatch.chdir(tmp_path)
    msg = cli_error(train.main, tiny_train_flags(tiny_world, "nan") + TWO_REFRESHES, capsys)
    assert "loss became nan at epoch 00 refresh 2/2, iteration 1" in msg and "last good checkpoint is kept" in msg
    ckpt = torch.load(only_run_folder(tmp_path, "nan") / "last_model.pth", weights_only=True)
    assert ckpt["train_state"]["refresh"] == 1
    assert all(t.isfinite().all() for t in ckpt["model_state_dict"].values() if t.is_floating_point())


def test_huge_lr_stops_with_a_message(tiny_world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    msg = cli_error(train.main, tiny_train_flags(tiny_world, "lr") + ONE_REFRESH + ["--lr", "1e30"], capsys)
    assert "became" in msg and "iteration" in msg and "lower --lr" in msg
    assert not list(only_run_folder(tmp_path, "lr").glob("*.pth"))  # no checkpoint of the broken weights
