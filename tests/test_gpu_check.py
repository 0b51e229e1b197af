"""tools/gpu_check.py (`make gpu-check`): every step runs, one summary table, exit code 1 on any failure.

On a CPU the same steps run with --device cpu --precisions fp32 at a tiny size; the GPU figures come from running
`make gpu-check` on a GPU (README, Performance)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import gpu_check

TINY_WORLD = ["--seed", "0", "--image_size", "32", "--train_db", "120", "--train_q", "60", "--val_db", "40",
              "--val_q", "20", "--test_db", "60", "--test_q", "30", "--overwrite"]
TINY_TRAIN = [f for f in gpu_check.TRAIN if f not in ("--num_workers", "2")] + [
    "--num_workers", "0", "--neg_samples_num", "30", "--cache_refresh_rate", "10", "--queries_per_epoch", "20",
    "--netvlad_clusters", "4"]


@pytest.fixture()
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "WORLD", TINY_WORLD)
    monkeypatch.setattr(gpu_check, "TRAIN", TINY_TRAIN)


def test_every_step_passes_on_a_cpu_and_the_table_says_so(tiny: None, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    code = gpu_check.main(["--device", "cpu", "--precisions", "fp32", "--resize", "32", "32", "--out", str(tmp_path),
                           "--skip_benchmark"])  # benchmark.py --quick: tests/test_benchmark.py
    table = capsys.readouterr().out
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    names = [r["step"] for r in rows]
    assert names == ["world", "train_gem_fp32", "train_netvlad_fp32", "eval_flat", "eval_ivfpq",
                     "resume_killed", "resume_continued"]
    assert code == 0 and all(r["ok"] for r in rows), rows
    assert all(r["result"].startswith("R@1 ") for r in rows if r["step"].startswith(("train", "eval", "resume_c")))
    assert f"{len(rows)} of {len(rows)} steps passed" in table and "FAILED" not in table


def test_a_failing_step_is_reported_and_the_exit_code_is_1(tiny: None, tmp_path: Path, monkeypatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(gpu_check, "TRAIN", TINY_TRAIN + ["--lr", "-1"])  # every training refuses this lr
    real_run = gpu_check.run

    def run_two_steps(step: gpu_check.Step, log_dir: Path) -> gpu_check.Step:
        """The world and the GeM training run for real; the other steps are recorded as passed without running."""
        if step.name in ("world", "train_gem_fp32"):
            return real_run(step, log_dir)
        step.code = step.ok_codes[0]
        return step

    monkeypatch.setattr(gpu_check, "run", run_two_steps)
    code = gpu_check.main(["--device", "cpu", "--precisions", "fp32", "--resize", "32", "32", "--out", str(tmp_path),
                           "--skip_benchmark"])
    rows = {r["step"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert code == 1
    assert not rows["train_gem_fp32"]["ok"] and "exit 2" in rows["train_gem_fp32"]["result"]
    assert rows["world"]["ok"] and rows["train_netvlad_fp32"]["ok"] and "FAILED" in capsys.readouterr().out
