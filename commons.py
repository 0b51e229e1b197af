"""Shared plumbing: user-facing errors and the CLI runner, logging, seeding, allocator tuning, device settings."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np
import torch

from cli.errors import CliParser, UserError  # noqa: F401 (re-exported: defined torch-free for parser.py)
from runs.runlog import log_to_folder, setup_logging  # noqa: F401 (re-exported: the CLIs' logging)


class Registry(dict):
    """Components of one kind (losses, aggregations, attention layers, backbones, miners) by name.

    `@REGISTRY.register("name")` adds a function or class; registering a name twice is an error. The registered
    names are the choices of the matching command-line flag."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator adding the decorated function or class under `name`."""
        def deco(component: Any) -> Any:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = component
            return component
        return deco


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (cluster pre-emption, e.g. SLURM); run_cli handles it like Ctrl-C."""


EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143  # 128 + SIGINT / SIGTERM, as shells report
OS_ERROR_FIXES = {errno.ENOSPC: "free disk space or write elsewhere",
                  errno.EDQUOT: "free space in your quota or write elsewhere",
                  errno.EROFS: "the file system is read-only: write elsewhere",
                  errno.EACCES: "write elsewhere, or get write permission there",
                  errno.EPERM: "write elsewhere, or get permission there",
                  errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
                  errno.EEXIST: "a file is in the way: remove it or choose another path",
                  errno.EISDIR: "it is a folder: name a file",
                  errno.ENOENT: "check the path",
                  errno.ENOMEM: "use smaller sizes or a machine with more memory"}
_stop_hint: Callable[[BaseException], str] | None = None


def os_error_message(e: OSError) -> str:
    """One line for an OSError: the file, the OS's reason, and what to do."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}; {OS_ERROR_FIXES.get(e.errno, 'check the path and its permissions')}"


def set_stop_hint(hint: Callable[[BaseException], str] | None) -> None:
    """Register the line printed under every early stop of this CLI (error, Ctrl-C, SIGTERM): where the run is and
    the exact command that continues it. hint(exception) -> text; None clears it."""
    global _stop_hint
    _stop_hint = hint


def stop_message(headline: str, exc: BaseException) -> str:
    """The text printed when a CLI stops early: headline, then the registered hint on a second line."""
    try:
        hint = _stop_hint(exc) if _stop_hint else ""
    except Exception:  # noqa: BLE001 - a failing hint must not hide the headline
        logging.getLogger(__name__).debug("stop hint failed", exc_info=True)
        hint = ""
    return headline + (f"\n{hint}" if hint else "")


def _stop(headline: str, code: int, exc: BaseException) -> NoReturn:
    logging.getLogger(__name__).debug(f"stopped: {headline}", exc_info=exc)
    print(stop_message(headline, exc), file=sys.stderr, flush=True)
    sys.exit(code)


def _raise_terminated(signum: int, frame: Any) -> None:
    if os.getpid() != _main_pid:  # a forked worker (DataLoader): die as SIGTERM asks
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


_main_pid = os.getpid()


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a CLI entry point: every failure the user can act on is one line and a non-zero exit, no traceback.

    UserError and OSError (full disk, read-only folder, a file in the way...) exit with code 2; Ctrl-C with 130 and
    SIGTERM with 143 (both: the registered stop hint says where the run is and how to continue it).
    """
    global _main_pid
    set_stop_hint(None)  # a hint left by a main called directly (tests) belongs to another run
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        _main_pid = os.getpid()
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(argv)
    except UserError as e:
        _stop(f"error: {e}", EXIT_USER_ERROR, e)
    except OSError as e:
        _stop(f"error: {os_error_message(e)}", EXIT_USER_ERROR, e)
    except MemoryError as e:
        _stop("error: out of memory; use smaller sizes or a machine with more memory", EXIT_USER_ERROR, e)
    except KeyboardInterrupt as e:
        _stop("interrupted (Ctrl-C)", EXIT_INTERRUPTED, e)
    except Terminated as e:
        _stop("terminated (SIGTERM)", EXIT_TERMINATED, e)
    finally:
        set_stop_hint(None)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and torch. seed == -1 leaves the run non-deterministic."""
    if seed == -1:
        logging.info("seed -1: this run is NOT deterministic")
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def get_rng_state() -> dict:
    """Random states of Python, NumPy and torch, as tensors/lists safe for weights_only loading."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states returned by get_rng_state."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tune_allocator() -> bool:
    """Keep glibc malloc from returning large blocks to the OS (page faults cost ~40% CPU otherwise).

    Returns True when the setting was applied (glibc only).
    """
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    return bool(ok)


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the ISA flags that decide CPU speed here


def cpu_description() -> tuple[str, list[str]]:
    """The CPU model name and which of ISA_FLAGS it has, from /proc/cpuinfo ("" and [] where it is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", []
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return model, [f for f in ISA_FLAGS if f in flags]


def native_bf16(device: str) -> str | None:
    """What runs bf16 natively on `device` ("AVX-512 BF16", "AMX", or the GPU's name), or None where it is emulated.

    On a CPU this asks oneDNN, so ONEDNN_MAX_CPU_ISA=AVX2 (which disables the bf16 kernels) counts as no bf16.
    """
    if device == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.cuda.get_device_name() if supported else None
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    flags = cpu_description()[1]
    return "AMX" if "amx_bf16" in flags else "AVX-512 BF16"


def resolve_precision(precision: str, device: str) -> str:
    """--precision as run: "auto" becomes bf16 where `device` runs it natively, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def bf16_speedup(device: str, repeats: int = 3) -> float:
    """fp32 time / bf16 time of one ResNet-18 layer3 convolution (3×3, 256 channels, a 2×256×30×40 input in
    channels_last, as at 480×640), best of `repeats` each, measured now (with its own random generator: the
    run's random state is left alone)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 30, 40, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(256, 256, 3, 3, generator=g) / 48).to(device).contiguous(memory_format=torch.channels_last)

    def best(precision: str) -> float:
        times = []
        with torch.no_grad(), autocast(device, precision):
            for _ in range(repeats + 1):  # the first call builds the kernel
                start = time.perf_counter()
                torch.nn.functional.conv2d(x, w, padding=1).sum().item()
                times.append(time.perf_counter() - start)
        return min(times[1:])
    return best("fp32") / best("bf16")


def log_precision(precision: str, requested: str, device: str) -> None:
    """Log the precision a run uses: the choice of --precision auto, or, for fp32 on hardware with native bf16, what
    bf16 would give (speed measured now; recall from the README's measurements)."""
    native = native_bf16(device)
    if requested == "auto":
        why = f"native bf16: {native}" if native else "bf16 is emulated here"
        logging.info(f"--precision auto: {precision} ({why})")
    elif precision == "fp32" and native:
        logging.info(f"note: this {device} runs bf16 natively ({native}); a bf16 convolution ran "
                     f"{bf16_speedup(device):.1f}x faster than fp32 just now. --precision bf16 (or auto) is faster, "
                     f"with recall within 1 point of fp32 in the README's measurements (Performance); fp32 stays the "
                     f"default for results that reproduce across machines")


def autocast(device: str, precision: str):
    """Autocast context for the precision mode: fp32 → no-op, bf16 → bfloat16, fp16 → float16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def uses_channels_last(device: str, precision: str) -> bool:
    """Whether convolutions run in channels_last (B×H×W×C in memory) for this device and precision.

    Always on a CPU: oneDNN's kernels want it, and fp32 gains too (benchmark.py's model_nchw figure; README,
    Performance). On CUDA only in reduced precision, where tensor cores want it.
    """
    return device == "cpu" or precision != "fp32"


def prepare_model(model: torch.nn.Module, device: str, precision: str) -> torch.nn.Module:
    """Move the model to device, in channels_last memory format where `uses_channels_last`."""
    model = model.to(device)
    if uses_channels_last(device, precision):
        model = model.to(memory_format=torch.channels_last)
    return model
