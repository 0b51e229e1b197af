"""STUDY/status.json (schema in study/plan.py), the lock of a study folder, and the progress line."""
from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from commons import UserError

STATES = ("done", "failed", "pending", "running")


def now_iso() -> str:
    return datetime.now().isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON to a temporary file beside path, then rename it over path."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def machine() -> dict:
    """What the study runs on: cpu, cores, torch, cpu_capability, gpu (plus the fields of machine_info)."""
    import torch
    from tools.benchmark.limits import machine_info
    return machine_info("cuda" if torch.cuda.is_available() else "cpu", allocator_tuned=False)


def format_seconds(s: float | None) -> str:
    """'1h02m', '12m05s', '42s' or '?'."""
    if s is None:
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Status:
    """status.json of a study folder: run states, step times, machine, start/finish and compute time."""

    def __init__(self, folder: Path):
        self.path = folder / "status.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data = {"runs": old.get("runs", {}), "steps": old.get("steps", {}), "machine": machine(),
                     "started": old.get("started") or now_iso(), "finished": None,
                     "compute_seconds": old.get("compute_seconds", 0.0)}
        self.session_start = time.monotonic()

    @property
    def runs(self) -> dict[str, dict]:
        return self.data["runs"]

    def set_run(self, run_id: str, state: str, folder: str, seconds: float | None = None,
                error: str | None = None, cpu: float | None = None) -> None:
        """Record a run's state; seconds (wall) and cpu (CPU seconds of its scripts) are added to those of
        its earlier attempts."""
        old = self.runs.get(run_id, {})

        def add(key: str, value: float | None) -> float | None:
            return None if value is None and old.get(key) is None else (old.get(key) or 0) + (value or 0)
        self.runs[run_id] = {"state": state, "folder": folder, "seconds": add("seconds", seconds), "error": error,
                             "kind": old.get("kind"), "cpu_seconds": add("cpu_seconds", cpu)}
        self.data["compute_seconds"] += seconds or 0.0
        self.save()

    def set_kind(self, run_id: str, kind: str) -> None:
        self.runs.setdefault(run_id, {"state": "pending", "folder": "", "seconds": None, "error": None})["kind"] = kind

    def add_step(self, name: str, outcome) -> None:
        """A step that is not a run (world, analysis, summary, scale): its runner.Outcome, counted in
        compute_seconds; a failure is logged and the study goes on."""
        self.data["steps"][name] = {"seconds": outcome.seconds, "cpu_seconds": outcome.cpu_seconds,
                                    "error": outcome.error}
        self.data["compute_seconds"] += outcome.seconds
        if outcome.error:
            logging.warning(f"{name} failed: {outcome.error}")
        self.save()

    def finish(self, all_settled: bool) -> None:
        self.data["finished"] = now_iso() if all_settled else None
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def estimate_left(self, left: list[str]) -> float | None:
        """Seconds for the runs left: per kind (train / eval), the mean time of the runs done so far."""
        done = [r for r in self.runs.values() if r["state"] == "done" and r.get("seconds")]
        means = {}
        for kind in ("train", "eval"):
            times = [r["seconds"] for r in done if r.get("kind") == kind]
            means[kind] = sum(times) / len(times) if times else None
        fallback = next((m for m in means.values() if m is not None), None)
        if fallback is None:
            return None
        kinds = [self.runs.get(r, {}).get("kind") for r in left]
        return sum(0.0 if k == "reference" else means.get(k) or fallback for k in kinds)

    def progress(self, order: list[str], current: str, what: str) -> str:
        """One line: runs done and left, the current run, elapsed time and the estimated time left."""
        states = [self.runs.get(r, {}).get("state", "pending") for r in order]
        done, failed = states.count("done"), states.count("failed")
        left = [r for r, s in zip(order, states) if s in ("pending", "running")]
        eta = self.estimate_left(left)
        return (f"[{done + failed + 1}/{len(order)}] {done} done, {failed} failed, {len(left)} left | {current}: {what}"
                f" | elapsed {format_seconds(time.monotonic() - self.session_start)}"
                f" | ~{format_seconds(eta) if eta is not None else '? (first run)'} left")


class FolderLock:
    """STUDY/study.lock holding the pid of the study.py that works in the folder; refuses a second one."""

    def __init__(self, folder: Path):
        self.path = folder / "study.lock"

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            pid = int(self.path.read_text().strip() or 0)
            if pid and pid != os.getpid() and _alive(pid):
                raise UserError(f"another study.py (pid {pid}) works in {self.path.parent}; wait for it to end "
                                f"or choose another --out")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
