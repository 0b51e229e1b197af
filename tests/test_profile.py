"""runs/profile.py: nested phases on a fake clock, and the time profile of real train.py / eval.py runs."""
from __future__ import annotations

from pathlib import Path

import pytest

import eval as eval_cli
import train
from datasets_ws import BaseDataset
from runs import profile
from helpers import tiny_train_flags


class FakeClock:
    """time.perf_counter stand-in: advances only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(profile, "_clock", fake)
    monkeypatch.setattr(profile, "_current", profile.Profile(fake.now))
    return fake


def test_nested_phases_add_up_by_hand(clock: FakeClock) -> None:
    clock.now += 2  # start-up: 2 s
    profile.mark_startup()
    with profile.phase("mining"):
        with profile.phase("encode", images=30):
            for _ in profile.timed_iter(range(3)):  # each item waits 1 s, each forward takes 2 s
                clock.now += 2
            clock.now += 0  # StopIteration is timed too (0 s here)
        with profile.phase("search"):
            clock.now += 1.5
    clock.now += 0.5  # outside any phase
    s = profile.current().summary()
    assert s["total_s"] == pytest.approx(2 + 6 + 1.5 + 0.5)
    assert s["unaccounted_s"] == pytest.approx(0.5)
    ph = s["phases"]
    assert list(ph) == ["startup", "mining", "mining/encode", "mining/encode/data", "mining/search"]
    assert ph["mining"]["s"] == pytest.approx(7.5) and ph["mining/encode"]["s"] == pytest.approx(6)
    assert ph["mining/encode"]["images"] == 30 and ph["mining/encode"]["images_per_s"] == pytest.approx(5.0)
    assert ph["mining/encode/data"]["s"] == 0  # the fake clock did not move while waiting for items


def test_timed_iter_charges_the_wait_for_each_item(clock: FakeClock) -> None:
    def slow_items():
        for i in range(4):
            clock.now += 0.25  # producing an item (e.g. decoding an image)
            yield i
    with profile.phase("encode"):
        got = []
        for item in profile.timed_iter(slow_items()):
            got.append(item)
            clock.now += 1  # consuming it
    ph = profile.current().summary()["phases"]
    assert got == [0, 1, 2, 3]
    assert ph["encode/data"]["s"] == pytest.approx(1.0) and ph["encode"]["s"] == pytest.approx(5.0)


def test_startup_excludes_phases_already_timed_and_lines_show_shares(clock: FakeClock) -> None:
    clock.now += 1
    with profile.phase("netvlad_init", images=8):  # eval.py initializes NetVLAD before its start-up mark
        clock.now += 3
    profile.mark_startup()
    s = profile.current().summary()
    assert s["phases"]["startup"]["s"] == pytest.approx(1) and s["unaccounted_s"] == pytest.approx(0)
    lines = profile.format_summary(s)
    assert lines[0] == "time profile: 4.0 s in all"
    assert lines[1].split()[:3] == ["startup", "1.00", "s"] and lines[-1].split()[0] == "other"  # startup first
    assert "netvlad_init" in lines[2] and "75.0%" in lines[2] and "8 images, 2.7 img/s" in lines[2]


def test_timed_decorator_nests_under_the_caller(clock: FakeClock) -> None:
    @profile.timed("select")
    def pick() -> int:
        clock.now += 2
        return 7
    with profile.phase("mining"):
        assert pick() == 7
    assert profile.current().summary()["phases"]["mining/select"]["s"] == pytest.approx(2)


def children_within_parents(phases: dict) -> None:
    for path, p in phases.items():
        kids = [q["s"] for k, q in phases.items() if k.rsplit("/", 1)[0] == path and "/" in k]
        assert sum(kids) <= p["s"] + 1e-3, path


def test_train_and_eval_store_a_consistent_profile(tiny_world: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    flags = tiny_train_flags(tiny_world, "prof") + ["--epochs_num", "1"]  # full mining, 2 refreshes of 20 queries
    results = train.main(flags)
    prof = results["time_profile"]
    ph = prof["phases"]
    top = sum(p["s"] for k, p in ph.items() if "/" not in k)
    assert top + prof["unaccounted_s"] == pytest.approx(prof["total_s"], abs=2e-3)
    children_within_parents(ph)
    for name in ["startup", "datasets", "model", "mining", "mining/encode", "mining/encode/data", "mining/encode/forward",
                 "mining/search", "mining/select", "training/data", "training/compute", "validation/encode",
                 "validation/search", "test/encode", "checkpoint"]:
        assert name in ph, name
    val = BaseDataset(tiny_world, "synthetic", "val", (32, 32), 25.0)
    test = BaseDataset(tiny_world, "synthetic", "test", (32, 32), 25.0)
    train_ds = train.TripletsDataset(tiny_world, "synthetic", "train", (32, 32), 25.0, 10.0)
    assert ph["validation/encode"]["images"] == len(val) and ph["test/encode"]["images"] == len(test)
    assert ph["mining/encode"]["images"] == 2 * (train_ds.database_num + 20)  # database + sampled queries, twice
    assert ph["training/compute"]["images"] == 2 * 20 * (2 + 3)  # 2 refreshes × 20 queries × (query, pos, 3 negs)
    log = (Path(results["test"]["checkpoint"]).parent / "info.log").read_text()
    assert "time profile:" in log and "mining/encode" not in log and "    encode" in log

    evaluated = eval_cli.main(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resume",
                               results["test"]["checkpoint"], "--device", "cpu", "--save_dir", "prof_eval"])
    ph = evaluated["time_profile"]["phases"]
    assert {"startup", "datasets", "model", "test", "test/encode", "test/search", "pictures"} <= set(ph)
    assert ph["test/encode"]["images"] == len(test)
    children_within_parents(ph)
