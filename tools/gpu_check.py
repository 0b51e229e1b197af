"""The CUDA path in one command (`make gpu-check`): benchmark, short trainings, evaluation with two indexes, resume.

python -m tools.gpu_check [--device cuda] [--precisions fp16 bf16] [--resize 480 640] [--out gpu_check]

Every step is a subprocess of this project's own command lines, timed as a whole; one summary table is printed at
the end and written to <out>/summary.json, and the exit code is 1 when any step failed. On one GPU the default run
(benchmark --quick in fp32/fp16/bf16; GeM and NetVLAD trained for one short epoch at 480×640 with fp16 autocast +
GradScaler, then bf16, in channels_last with pinned memory; eval.py with --index flat and ivfpq; a run killed after
its first checkpoint and resumed) is sized to take a few minutes. `--device cpu --precisions fp32 --resize 32 32`
runs the same steps on a CPU, which is how the tests check this script.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILL_HOOK_ENV = "VG_KILL_AFTER_CHECKPOINTS"  # util.KILL_HOOK_ENV, without importing torch here
WORLD = ["--seed", "0", "--image_size", "64", "--train_db", "400", "--train_q", "200", "--val_db", "100",
         "--val_q", "60", "--test_db", "200", "--test_q", "100", "--overwrite"]
TRAIN = ["--dataset_name", "synthetic", "--pretrain", "none", "--lr", "1e-3", "--train_batch_size", "4",
         "--negs_num_per_query", "4", "--neg_samples_num", "100", "--cache_refresh_rate", "40",
         "--queries_per_epoch", "80", "--epochs_num", "1", "--infer_batch_size", "16", "--netvlad_clusters", "16",
         "--recall_values", "1", "5", "--num_workers", "2"]


@dataclass
class Step:
    """One command of the check and its outcome."""
    name: str
    argv: list[str]
    env: dict = field(default_factory=dict)
    ok_codes: tuple[int, ...] = (0,)
    code: int | None = None
    seconds: float = 0.0
    detail: str = ""


def run(step: Step, log_dir: Path) -> Step:
    """Run step.argv from the repository root; stdout and stderr go to <log_dir>/<name>.log."""
    start = time.perf_counter()
    with open(log_dir / f"{step.name}.log", "w") as log:
        proc = subprocess.run([sys.executable, *step.argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **step.env})
    step.code, step.seconds = proc.returncode, time.perf_counter() - start
    if step.code not in step.ok_codes:
        tail = (log_dir / f"{step.name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        step.detail = f"exit {step.code}: {tail[0][:100]}"
    return step


def latest_run(save_dir: Path) -> Path | None:
    """The newest run folder under logs/<save_dir> (absolute save_dir)."""
    runs = sorted((p for p in save_dir.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def recall_of(folder: Path | None) -> str:
    """'R@1 x / R@5 y' from a train.py or eval.py run folder's results.json, or '' when there is none."""
    path = folder / "results.json" if folder else None
    if not path or not path.is_file():
        return ""
    results = json.loads(path.read_text())
    recalls = results["test"]["recalls"] if results.get("kind") == "train" else results["recalls"]
    return " / ".join(f"R@{n} {v:.1f}" for n, v in recalls.items())


def train_steps(a: argparse.Namespace, world: Path, out: Path) -> list[tuple[Step, Path]]:
    """Short trainings of GeM and NetVLAD in each precision: (step, its save_dir)."""
    steps = []
    for agg in ("gem", "netvlad"):
        for prec in a.precisions:
            save = out / "runs" / f"{agg}_{prec}"
            argv = ["train.py", "--datasets_folder", str(world), *TRAIN, "--aggregation", agg, "--precision", prec,
                    "--device", a.device, "--resize", *map(str, a.resize), "--save_dir", str(save)]
            steps.append((Step(f"train_{agg}_{prec}", argv), save))
    return steps


def main(argv: list[str] | None = None) -> int:
    """Run the check; print the summary table; return 1 when a step failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--resize", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--out", type=Path, default=Path("logs/gpu_check"))
    p.add_argument("--skip_benchmark", action="store_true", help="leave out benchmark.py --quick")
    a = p.parse_args(argv)
    out = a.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    world = out / "world"
    bench_precs = ["fp32", "fp16", "bf16"] if a.device == "cuda" else ["fp32"]
    bench = Step("benchmark_quick", ["-m", "tools.benchmark", "--quick", "--device", a.device, "--precisions",
                                     *bench_precs, "--out", str(out / "bench_quick.json")])
    steps = [*([] if a.skip_benchmark else [(bench, None)]),
             (Step("world", ["-m", "tools.synthetic_world", "--out", str(world), *WORLD]), None),
             *train_steps(a, world, out)]
    done = [(run(s, out / "logs"), save) for s, save in steps]
    ckpt = latest_run(out / "runs" / f"gem_{a.precisions[0]}")
    best = str(ckpt / "best_model.pth") if ckpt else "missing"
    for kind in ("flat", "ivfpq"):
        save = out / "runs" / f"eval_{kind}"
        done.append((run(Step(f"eval_{kind}", ["eval.py", "--datasets_folder", str(world), "--dataset_name",
                                              "synthetic", "--resume", best, "--index", kind, "--device", a.device,
                                              "--precision", a.precisions[0], "--save_dir", str(save)]),
                         out / "logs"), save))
    done += resume_steps(a, world, out)
    rows = [{"step": s.name, "ok": s.code in s.ok_codes, "seconds": round(s.seconds, 1),
             "result": s.detail or recall_of(latest_run(save) if save else None)}
            for s, save in done]
    print(summary_table(rows, a))
    (out / "summary.json").write_text(json.dumps({"device": a.device, "rows": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


def resume_steps(a: argparse.Namespace, world: Path, out: Path) -> list[tuple[Step, Path]]:
    """A GeM run killed by the testing hook right after its first checkpoint, then resumed to the end."""
    save = out / "runs" / "resume"
    argv = ["train.py", "--datasets_folder", str(world), *TRAIN, "--aggregation", "gem", "--precision",
            a.precisions[0], "--device", a.device, "--resize", *map(str, a.resize), "--save_dir", str(save)]
    killed = run(Step("resume_killed", argv, env={KILL_HOOK_ENV: "1"}, ok_codes=(-9, 137)), out / "logs")
    folder = latest_run(save)
    last = str(folder / "last_model.pth") if folder else "missing"
    resumed = run(Step("resume_continued", ["train.py", "--resume", last, "--device", a.device]), out / "logs")
    return [(killed, None), (resumed, save)]


def summary_table(rows: list[dict], a: argparse.Namespace) -> str:
    """One line per step: ok/FAILED, seconds, recalls or the failure."""
    head = f"gpu-check on {a.device}, precisions {' '.join(a.precisions)}, {a.resize[0]}×{a.resize[1]}"
    lines = [head, f"{'step':<24} {'status':<7} {'seconds':>8}  result"]
    lines += [f"{r['step']:<24} {'ok' if r['ok'] else 'FAILED':<7} {r['seconds']:>8.1f}  {r['result']}" for r in rows]
    failed = sum(not r["ok"] for r in rows)
    return "\n".join(lines + [f"{len(rows) - failed} of {len(rows)} steps passed"])


if __name__ == "__main__":
    sys.exit(main())
