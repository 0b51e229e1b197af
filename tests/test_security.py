"""Safe loading (no code runs from a checkpoint or pickle) and no writes outside the run folder."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch

import eval as eval_cli
import train
import util
from commons import UserError, run_cli
from conftest import ROOT, tiny_train_flags

SOURCE_DIRS_SKIPPED = {".venv", "tests", ".git", "logs", "data", "__pycache__"}


class MakesMarker:
    """Unpickling this object runs os.mkdir(path): the payload of a malicious checkpoint."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def malicious_files(folder: Path, marker: Path) -> list[Path]:
    """A torch.save zip checkpoint and a raw protocol-2 pickle, both running os.mkdir(marker) when unpickled."""
    zipped, raw = folder / "evil_model.pth", folder / "evil_raw.pth"
    torch.save({"model_state_dict": MakesMarker(marker), "args": {"aggregation": "gem"}}, zipped)
    raw.write_bytes(pickle.dumps({"model_state_dict": MakesMarker(marker), "args": {}}, protocol=2))
    return [zipped, raw]


def test_payload_is_live(tmp_path: Path) -> None:
    """Sanity check of the test itself: an unsafe load of the payload does run code."""
    marker = tmp_path / "ran"
    (_, raw) = malicious_files(tmp_path, marker)
    pickle.loads(raw.read_bytes())
    assert marker.is_dir()


def test_malicious_checkpoint_cannot_run_code(tiny_world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    eval_flags = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resize", "32", "32",
                  "--device", "cpu", "--num_workers", "0"]
    for path in malicious_files(tmp_path, marker):
        with pytest.raises(UserError, match="refused by the safe loader"):
            util.load_checkpoint(path)
        for main, argv in ((eval_cli.main, eval_flags + ["--resume", str(path)]),
                           (train.main, tiny_train_flags(tiny_world, "evil") + ["--resume", str(path)])):
            with pytest.raises(SystemExit) as e:
                run_cli(main, argv)
            err = capsys.readouterr().err
            assert e.value.code == 2 and "refused by the safe loader" in err and "Traceback" not in err
    assert not marker.exists()


def _calls(text: str, name: str) -> list[str]:
    """The full text of every call `name(...)` in text (parentheses balanced)."""
    calls = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, end = 0, m.end() - 1
        while end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
            end += 1
        calls.append(text[m.start():end + 1])
    return calls


def test_every_load_in_the_toolkit_is_safe() -> None:
    sources = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SOURCE_DIRS_SKIPPED and not d.startswith(".")]
        sources += [Path(folder) / f for f in files if f.endswith(".py")]
    assert len(sources) > 10
    torch_loads = 0
    for path in sources:
        text = path.read_text()
        for call in _calls(text, "torch.load"):
            torch_loads += 1
            assert "weights_only=True" in call, f"{path.name}: {call}"
        for call in _calls(text, "np.load"):
            assert "allow_pickle=True" not in call, f"{path.name}: {call}"
        assert not re.search(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(", text), path.name
    assert torch_loads >= 1


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path → (size, mtime) of every file and folder below folder."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def test_runs_write_only_under_logs_save_dir(tiny_world: Path, tmp_path: Path, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("user file")
    monkeypatch.chdir(cwd)
    before_cwd, before_data, before_tmp = tree(cwd), tree(tiny_world), set(os.listdir(tmp_path))
    train.main(tiny_train_flags(tiny_world, "mine") + [
        "--negs_num_per_query", "2", "--neg_samples_num", "20", "--cache_refresh_rate", "10",
        "--queries_per_epoch", "10", "--epochs_num", "1", "--infer_batch_size", "64", "--recall_values", "1", "5"])
    (run,) = (cwd / "logs" / "mine").iterdir()
    eval_cli.main(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--resize", "32", "32",
                   "--device", "cpu", "--num_workers", "0", "--resume", str(run / "best_model.pth"),
                   "--save_dir", "mine_eval"])
    after = tree(cwd)
    new = {p for p in after if p not in before_cwd}
    allowed = ("logs", "logs/mine", "logs/mine_eval")
    assert all(p in allowed or p.startswith(("logs/mine/", "logs/mine_eval/")) for p in new), sorted(new)
    assert {p: after[p] for p in before_cwd} == before_cwd  # nothing that existed was touched
    assert {"best_model.pth", "last_model.pth", "results.json"} <= set(os.listdir(run))
    assert not [p for p in new if p.endswith(".tmp")]
    assert tree(tiny_world) == before_data and set(os.listdir(tmp_path)) == before_tmp
