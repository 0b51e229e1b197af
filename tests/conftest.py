"""Shared pytest fixtures: the repository root on sys.path, and small synthetic worlds."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from helpers import ROOT, tiny_train_flags  # noqa: F401 (re-exported: tests import them from conftest)

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
