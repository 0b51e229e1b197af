"""Shared plumbing: user-facing errors, logging, seeding, allocator tuning, atomic saves."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


class UserError(Exception):
    """A problem caused by the user's input. Its message is one line: what is wrong and how to fix it."""


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a CLI entry point, turning user errors into one-line messages and a non-zero exit."""
    try:
        main(argv)
    except UserError as e:
        logging.getLogger(__name__).debug("user error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with --resume", file=sys.stderr)
        sys.exit(130)


def setup_logging(output_folder: str | Path | None, console: str = "info") -> None:
    """Log to console and, when output_folder is given, to output_folder/info.log and debug.log."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.DEBUG)
    fmt = logging.Formatter("%(asctime)s   %(message)s", "%Y-%m-%d %H:%M:%S")
    if output_folder is not None:
        Path(output_folder).mkdir(parents=True, exist_ok=True)
        for name, level in (("info.log", logging.INFO), ("debug.log", logging.DEBUG)):
            fh = logging.FileHandler(Path(output_folder) / name)
            fh.setLevel(level)
            fh.setFormatter(fmt)
            root.addHandler(fh)
    ch = logging.StreamHandler(sys.stdout)
    ch.setLevel(getattr(logging, console.upper()))
    ch.setFormatter(fmt)
    root.addHandler(ch)
    for noisy in ("PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over path.

    A crash at any moment leaves either the old or the new file, never a partial one.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself durable (power loss)
    except (OSError, RuntimeError) as e:  # RuntimeError: torch's zip writer failing mid-write
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"could not write {path} ({getattr(e, 'strerror', None) or e}); free disk space or "
                        f"choose another --save_dir; the previous {path.name}, if any, is intact") from e


def _fsync_dir(folder: Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def bf16_speedup(device: str, repeats: int = 5) -> float:
    """fp32 time / bf16 time of one ResNet-18 layer3 convolution (3×3, 256 channels, a 4×256×30×40 input in
    channels_last, as at 480×640), best of `repeats` each, measured now (with its own random generator: the
    run's random state is left alone)."""
    import time
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, 30, 40, generator=g).to(device).contiguous(memory_format=torch.channels_last)
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

    Always on a CPU: oneDNN's kernels want it, and fp32 gains too (ResNet-18 at 480×640 on an AVX2 CPU: max-pool
    ~6× faster, forward ~25 % and training step ~45 % faster; see benchmark.py's model_nchw figure). On CUDA only
    in reduced precision, where tensor cores want it.
    """
    return device == "cpu" or precision != "fp32"


def prepare_model(model: torch.nn.Module, device: str, precision: str) -> torch.nn.Module:
    """Move the model to device, in channels_last memory format where `uses_channels_last`."""
    model = model.to(device)
    if uses_channels_last(device, precision):
        model = model.to(memory_format=torch.channels_last)
    return model
