"""How the study starts train.py, eval.py and its tools: their `main` in a process forked from a server that imported
them once.

A study makes some 150 short runs; as separate interpreters, each would import torch, torchvision, faiss and the
project again (seconds each, a good part of a small run). Here a multiprocessing fork server imports them once
(`PRELOAD`), and every run is a fork of it running `run_cli(main, argv)`, the very call of `python train.py argv`:
same flags, same exit codes (2 for a user error, 130 for Ctrl-C, a negative code when killed by a signal), same
output, appended to the run's log. The server does no computation, so every fork starts with fresh thread pools.
Where fork is not available, runs are spawned (each imports everything, as a subprocess would).
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import resource
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "eval")  # top-level scripts (python train.py); any other module runs as python -m module
# imported once by the server: the scripts, and what they import lazily for start-up time (--help, eval.py)
PRELOAD = ["train", "eval", "faiss", "sklearn.decomposition", "matplotlib.pyplot", "torchvision.transforms.v2"]


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        os.environ.setdefault("MPLBACKEND", "Agg")  # the server imports pyplot: no display toolkit in it
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


_CTX = _context()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_module(module: str, argv: list[str], log: str, cpu_out: Connection) -> None:
    """The child: stdout and stderr to the log, then `module.main` as `python <module> argv` runs it."""
    start = _cpu_seconds()  # the fork inherits the server's counters
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        with open(log, "a") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
        os.chdir(REPO)
        sys.argv = command_line(module, argv)[1:]
        from tqdm import tqdm
        from commons import run_cli
        from runs import profile
        tqdm.set_lock(threading.RLock())  # not tqdm's multiprocessing lock: a killed run would leak its semaphore
        profile.imports_paid()  # the server imported the modules: this run's start-up counts from here
        run_cli(importlib.import_module(module).main, argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        cpu_out.send(_cpu_seconds() - start)


def launch(module: str, argv: list[str], log: Path) -> tuple[int, float]:
    """Run module's main(argv) as `python <module> argv` would (command_line), with its output appended to log;
    wait for it.

    Returns its exit code (negative: killed by that signal) and its CPU seconds (0 when it was killed). Ctrl-C
    reaches the run too (same process group): the run stops as train.py does, and this waits for it, then raises.
    """
    receive, send = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=_run_module, args=(module, list(argv), str(log), send), name=f"study-{module}")
    proc.start()
    send.close()
    try:
        proc.join()
    except KeyboardInterrupt:
        proc.join()
        raise
    try:
        cpu = receive.recv()
    except EOFError:  # killed before it could tell
        cpu = 0.0
    receive.close()
    return proc.exitcode, cpu


def command_line(module: str, argv: list[str]) -> list[str]:
    """The shell command equivalent to launch(module, argv), for the log."""
    if module in SCRIPTS:
        return [sys.executable, str(REPO / f"{module}.py"), *argv]
    return [sys.executable, "-m", module, *argv]
