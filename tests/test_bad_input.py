"""Every command-line tool refuses bad input the same way: exit code 2, no traceback, a message of at most two lines
(`error: <problem>; <fix>`, and where a run has started, where it is), and no partial output left behind.

Each case of bad_input_cases.CASES runs the tool's main through commons.run_cli in this process; a full disk is
simulated by sending the writes of chosen files to /dev/full (ENOSPC), a read-only folder by an EROFS from os.mkdir.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from tools import analyze_dataset
from tools import benchmark
from tools import collect_results
import eval as eval_cli
import train
from bad_input_cases import CASES, make_checkpoints
from helpers import cli_stop
from conftest import ROOT
from tools import synthetic_world

MAINS = {"train": train.main, "eval": eval_cli.main, "analyze": analyze_dataset.main, "collect": collect_results.main,
         "world": synthetic_world.main, "benchmark": benchmark.main}


@pytest.fixture(scope="module")
def checkpoints(tiny_world: Path, tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tiny_world, tmp_path_factory.mktemp("checkpoints"))


def files_below(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def assert_complete(path: Path) -> None:
    """A file a failed run may keep: never a temporary, and whole (JSON parses, images decode)."""
    assert not (path.name.startswith(".") and path.name.endswith(".tmp")), f"temporary file left: {path}"
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix in (".png", ".jpg"):
        with Image.open(path) as img:
            img.load()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tiny_world: Path, checkpoints: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    case = CASES[name]
    e = SimpleNamespace(world=tiny_world, ck=checkpoints, tmp=tmp_path, cwd=tmp_path / "cwd", data=tmp_path / "data")
    e.cwd.mkdir()
    monkeypatch.chdir(e.cwd)
    monkeypatch.delenv("VG_MAX_IMAGE_PIXELS", raising=False)
    case.prepare(e, monkeypatch)
    argv, before = case.argv(e), files_below(tmp_path)
    try:
        lines = cli_stop(MAINS[case.cli], argv, capsys)
    finally:
        monkeypatch.undo()
    assert lines[0].startswith("error: ") and case.expect in lines[0], lines
    new = files_below(tmp_path) - before
    if case.leaves == "nothing":
        assert not new, f"left behind: {sorted(map(str, new))}"
    else:
        for path in new:
            assert_complete(path)


def test_there_are_60_cases_covering_every_tool() -> None:
    assert len(CASES) >= 60 and {c.cli for c in CASES.values()} == set(MAINS)


@pytest.mark.parametrize("argv, expected", [
    (["train.py", "--aggregation", "nope"], "invalid choice: 'nope'"),
    (["-m", "tools.synthetic_world", "--out", "w", "--map_size", "100000"], "use a smaller --map_size"),
])
def test_real_command_line(argv: list[str], expected: str, tmp_path: Path) -> None:
    """The same contract through the interpreter: the argparse error leads (no usage dump), one line, exit code 2."""
    script = [str(ROOT / argv[0])] if argv[0].endswith(".py") else argv[:2]
    rest = argv[1:] if argv[0].endswith(".py") else argv[2:]
    proc = subprocess.run([sys.executable, *script, *rest], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and expected in proc.stderr
    assert not list(tmp_path.iterdir())
