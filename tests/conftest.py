"""Shared pytest fixtures: the repository root on sys.path, and small synthetic worlds."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from tools.synthetic_world import generate_world  # noqa: E402

TINY_SIZES = {"train": (160, 80), "val": (60, 30), "test": (80, 40)}
E2E_SIZES = {"train": (1500, 750), "val": (200, 200), "test": (300, 300)}  # tests/test_e2e.py budget


@pytest.fixture(autouse=True)
def reset_logging():
    """train.main/eval.main attach log handlers (with open files) to the root logger; drop them after each test."""
    yield
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A 32×32-px synthetic world for fast plumbing tests: returns the datasets folder (dataset 'synthetic')."""
    root = tmp_path_factory.mktemp("tiny_world")
    generate_world(root, seed=0, image_size=32, sizes=TINY_SIZES)
    return root


@pytest.fixture(scope="session")
def e2e_world(tmp_path_factory) -> Path:
    """A 32×32-px synthetic world large enough for training to show a clear recall gain."""
    root = tmp_path_factory.mktemp("e2e_world")
    generate_world(root, seed=1, image_size=32, sizes=E2E_SIZES)
    return root


def tiny_train_flags(world: Path, save_dir: str) -> list[str]:
    """train.py flags for a quick run on tiny_world (seconds on 2 cores)."""
    return ["--datasets_folder", str(world), "--dataset_name", "synthetic", "--resize", "32", "32",
            "--pretrain", "none", "--lr", "1e-3", "--train_batch_size", "4", "--negs_num_per_query", "3",
            "--neg_samples_num", "40", "--cache_refresh_rate", "20", "--queries_per_epoch", "40",
            "--epochs_num", "2", "--infer_batch_size", "32", "--num_workers", "0", "--device", "cpu",
            "--save_dir", save_dir]
