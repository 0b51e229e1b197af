"""Every shell command of README.md's ```bash blocks, run as printed in a temporary folder.

A command is skipped only for a listed reason (SKIPS: a real dataset, a GPU, torchrun, a long run, elided flags,
files of the repository it would rewrite). The others run in README order in one bash session (so `RUN=$(...)`
carries over), with `python` the test's interpreter and the repository's modules linked into the folder. Sizes are made
tiny by a fixed mapping, applied as text to the printed command:

- TINY: flag values replaced (e.g. `--epochs_num 3` -> `--epochs_num 1`);
- TINY_WORLD: appended to every `tools.synthetic_world` command (later flags win in argparse);
- PLACEHOLDERS: `<save_dir>/<run>` name a tiny finished run made before the README's commands (SETUP), where
  `QUICK=1 bash ablations/lr_optimizer.sh` puts its runs, which the collector's command then collects.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

README = ROOT / "README.md"
SKIPS = [  # (pattern of the command, reason); the first match decides
    (r"^make (demo|test)\b", "builds the venv and runs the demo or the whole suite (minutes); tests/test_e2e.py runs "
                             "the demo's recipe"),
    (r"\btorchrun\b", "needs torchrun with several processes (tests/test_ddp.py runs the CPU path)"),
    (r"--device cuda|\bgpu[-_]check\b", "needs a GPU"),
    (r"(^|\s)make study\b|study\.py(?!.*--dry_run)", "runs real trainings (the default study trains dozens of models); "
                                                "tests/test_study.py runs study.py on a tiny plan"),
    (r"(^|\s)make report\b|report\.py logs/study", "needs a finished study (make study, hours); tests/test_report.py runs "
                                              "report.py on a tiny study"),
    (r"logs/demo|data/demo", "needs the world and model of make demo (skipped above)"),
    (r"\b(CKPT|DIR)\b", "placeholders (CKPT, DIR) for your checkpoint and folders"),
    (r"pitts30k|st_lucia|\$DATASETS_FOLDER|/path/to/|/data/", "needs a real dataset (Pitts30k, St Lucia)"),
    (r"\.\.\.", "elided flags (...): a pattern to complete, not a command"),
    (r"^python (-m tools\.)?benchmark(\.py)? --quick", "the same command (in-process) is tests/test_benchmark.py's "
                                                      "first test"),
    (r"^python (-m tools\.)?benchmark(\.py)?", "the full benchmark takes about an hour"),
    (r"docs/images", "rewrites the README's pictures in docs/images"),
    (r"<(?!save_dir>|run>)[a-z_]+>", "a placeholder without a tiny counterpart"),
]
TINY = {"--image_size 128": "--image_size 32", "--resize 64 64": "--resize 32 32",
        "--train_batch_size 8": "--train_batch_size 4", "--negs_num_per_query 5": "--negs_num_per_query 2",
        "--neg_samples_num 300": "--neg_samples_num 20", "--cache_refresh_rate 300": "--cache_refresh_rate 10",
        "--queries_per_epoch 300": "--queries_per_epoch 10", "--epochs_num 3": "--epochs_num 1",
        "--epochs_num 20": "--epochs_num 2", "--num_workers 8": "--num_workers 1"}
TINY_WORLD = " --train_db 40 --train_q 20 --val_db 40 --val_q 20 --test_db 40 --test_q 20"
RUNS = "quick_study/runs/lr_optimizer/adam"  # logs/<save_dir> of the tiny run of SETUP
PLACEHOLDERS = {"<save_dir>": RUNS, "<run>": f"$(ls logs/{RUNS})"}
SETUP = ("python -m tools.synthetic_world --out setup_data --seed 3 --image_size 32" + TINY_WORLD + " && "
         "python train.py --datasets_folder setup_data --dataset_name synthetic --resize 32 32 --device cpu "
         "--pretrain none --lr 1e-3 --train_batch_size 4 --negs_num_per_query 2 --neg_samples_num 20 "
         "--cache_refresh_rate 10 --queries_per_epoch 10 --epochs_num 1 --infer_batch_size 64 --num_workers 0 "
         f"--save_dir {RUNS}")


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every command of the ```bash blocks: continuation lines and multi-line quoted
    strings joined, comment lines dropped."""
    found = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        first = text[:block.start()].count("\n") + 2
        current, start = "", 0
        for i, line in enumerate(block.group(1).splitlines()):
            if not current and (not line.strip() or line.strip().startswith("#")):
                continue
            current, start = (current + "\n" + line, start) if current else (line.strip(), first + i)
            try:
                shlex.split(current.replace("\\\n", " "), comments=True)
            except ValueError:  # an open quotation: the command goes on
                continue
            if not current.endswith("\\"):
                found.append((start, re.sub(r"\\\n\s*", "", current).strip()))
                current = ""
    return found


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIPS if re.search(pattern, command)), None)


def tiny(command: str) -> str:
    """The command with the sizes of the mapping (whitespace between tokens normalized first)."""
    command = re.sub(r"[ \t]+", " ", command)
    for old, new in TINY.items():
        command = command.replace(old, new)
    for old, new in PLACEHOLDERS.items():
        command = command.replace(old, new)
    if "tools.synthetic_world" in command:
        code, _, comment = command.partition(" #")
        command = code.rstrip() + TINY_WORLD + (f"  #{comment}" if comment else "")
    return command


COMMANDS = readme_commands(README.read_text())


def test_every_command_is_run_or_skipped_for_a_reason() -> None:
    runnable = [c for _, c in COMMANDS if skip_reason(c) is None]
    skipped = [(n, skip_reason(c), c.splitlines()[0][:80]) for n, c in COMMANDS if skip_reason(c)]
    print("\n".join(f"README.md:{n}: skipped ({reason}): {c}" for n, reason, c in skipped))
    assert len(COMMANDS) >= 20 and len(runnable) >= 8
    assert any("tools.collect_results" in c for c in runnable) and any("--resume" in c for c in runnable)
    for old in TINY:  # the mapping stays tied to the README: every entry is used by a command that runs
        assert any(old in re.sub(r"[ \t]+", " ", c) for c in runnable), old


def test_readme_commands_work_as_printed(tmp_path: Path) -> None:
    for item in ROOT.iterdir():  # the repository's modules and scripts, not its logs/data/docs
        if item.name not in ("logs", "data", "docs", ".git", ".venv") and not item.name.startswith("."):
            (tmp_path / item.name).symlink_to(item)
    lines = [f"python() {{ {shlex.quote(sys.executable)} \"$@\"; }}", f"{SETUP} || exit 99"]
    for number, command in COMMANDS:
        if skip_reason(command) is None:
            lines.append(f"echo {shlex.quote(f'== README.md:{number}')}")
            lines.append(f"{tiny(command)}\n[ $? -eq 0 ] || {{ echo 'FAILED: README.md:{number}'; exit 1; }}")
    proc = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1800, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                             "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert (tmp_path / "data/synth/synthetic_128/world.json").is_file()  # the second world beside the first
    assert (tmp_path / "logs/quick_study/summary/lr_optimizer/results.md").is_file()
    (evaluated,) = (tmp_path / "logs/docs_eval").iterdir()
    assert (evaluated / "results.json").is_file() and list((evaluated / "predictions").glob("*.jpg"))
