"""The machine's limits and the report of benchmark.py: timing, matmul rates per precision, figures, the table."""
from __future__ import annotations

import os
import time
from typing import Callable

import torch
import torch.nn.functional as F

from commons import autocast, cpu_description

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(fn, device: str) -> float:
    """Wall seconds of fn(), with the device synchronized before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def gemm_call(kernel: str, n: int, dtype: torch.dtype, device: str):
    """A call computing one n×n×n matrix product (2·n³ FLOPs) with torch.matmul or as a 1×1 convolution."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    if kernel == "matmul":
        return lambda: torch.matmul(a, b)
    x = a.T.reshape(1, n, n, 1).contiguous(memory_format=torch.channels_last)  # 1×C×H×W with C = H = n
    w = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    return lambda: F.conv2d(x, w)


def gemm_sizes(device: str, precision: str, max_n: int, call_s: float) -> dict[str, tuple[float, int]]:
    """The machine's compute limit in a precision: kernel → (best FLOP/s of a square matrix product, its size n),
    by torch.matmul and by a 1×1 convolution (the oneDNN/cuDNN route of convolutions). n doubles from 256 until a
    call takes call_s or n reaches max_n."""
    out = {}
    for kernel in ("matmul", "conv1x1"):
        n, best = 256, 0.0
        while True:
            secs = min(timed(gemm_call(kernel, n, DTYPES[precision], device), device) for _ in range(3))
            best = max(best, 2 * n ** 3 / secs)
            if secs >= call_s or n >= max_n:
                break
            n *= 2
        out[kernel] = (best, n)
    return out


def model_conv_calls(model: torch.nn.Module, x: torch.Tensor, precision: str,
                     device: str) -> list[tuple[Callable[[], torch.Tensor], int]]:
    """(call, FLOPs) for each distinct convolution shape of model on input x (B×3×H×W): the model's own conv layers,
    timed alone in its memory format and precision, so that a limit covers the kernels the model really runs."""
    seen: dict[tuple, tuple[torch.Tensor, torch.nn.Conv2d, int]] = {}

    def hook(conv: torch.nn.Conv2d, inputs: tuple, out: torch.Tensor) -> None:
        key = (tuple(inputs[0].shape), conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.groups)
        kh, kw = conv.kernel_size  # FLOPs: 2 · output elements · Cin/groups · kh · kw
        seen.setdefault(key, (inputs[0].detach(), conv, 2 * out.numel() * conv.in_channels // conv.groups * kh * kw))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad(), autocast(device, precision):
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()

    def call(inp: torch.Tensor, conv: torch.nn.Conv2d) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad(), autocast(device, precision):
                return conv(inp)
        return run
    return [(call(inp, conv), flops) for inp, conv, flops in seen.values()]


class LimitSampler:
    """The compute rate of each precision, taken at start and again before every timed run: the best rate seen.

    Kernels: a square torch.matmul, the same product as a 1×1 convolution, and (once `add_model` has been called) the
    model's own convolution shapes, each timed alone. The limit of a precision is the best rate of all of them, so
    that no pass of the model can beat it. A shared or boosting machine drifts by ±10 % within seconds; the limit is
    what it reached at its best, so that a figure measured in a fast moment is not set against a limit measured in a
    slow one.
    """

    def __init__(self, device: str, precisions: list[str], max_n: int, call_s: float):
        self.device = device
        sized = {p: gemm_sizes(device, p, max_n, call_s) for p in precisions}
        self.rates = {p: {k: rate for k, (rate, _) in r.items()} for p, r in sized.items()}
        self.calls: dict[str, dict[str, list[tuple[Callable, int]]]] = {
            p: {k: [(gemm_call(k, n, DTYPES[p], device), 2 * n ** 3)] for k, (_, n) in r.items()}
            for p, r in sized.items()}

    def add_model(self, precision: str, model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> None:
        """Add the model's convolution shapes on input x as kernel "model_conv" of `precision`, each timed
        `repeats` times (best kept)."""
        calls = self.calls[precision].setdefault("model_conv", [])
        calls += model_conv_calls(model, x, precision, self.device)
        for _ in range(repeats):
            self.sample(precision, kernels=("model_conv",))

    def sample(self, precision: str, kernels: tuple[str, ...] | None = None) -> None:
        """Time each call of the kernels of `precision` (default: all) once more; keep the best rate of each."""
        for kernel, calls in self.calls[precision].items():
            if kernels is not None and kernel not in kernels:
                continue
            best = max(flops / timed(fn, self.device) for fn, flops in calls)
            self.rates[precision][kernel] = max(self.rates[precision].get(kernel, 0.0), best)

    def best(self) -> dict[str, float]:
        """precision → best FLOP/s over all kernels and all samples."""
        return {p: max(r.values()) for p, r in self.rates.items()}


def figure(value: float, unit: str, limit: float | None = None, rate: bool = True) -> dict:
    """One figure; ratio = share of the limit reached (value/limit for rates, limit/value for durations)."""
    ratio = None if not limit else (value / limit if rate else limit / value)
    return {"value": float(value), "unit": unit, "limit": None if limit is None else float(limit), "ratio": ratio}


def machine_info(device: str, allocator_tuned: bool) -> dict:
    """What the figures were measured on, including the load average at the end of the run."""
    return {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "cpu": cpu_description()[0], "isa": cpu_description()[1],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "allocator_tuned": allocator_tuned, "load_average": list(os.getloadavg())}


def format_table(result: dict) -> str:
    """The printed table: figure, measured value, limit, share of the limit; then the notes."""
    m, c, lim = result["machine"], result["config"], result["limits"]
    rows = [f"{m['device']} ({m['gpu'] or m['cpu']}, {m['torch_threads']} threads, {m['cpu_capability']}), torch "
            f"{m['torch']}, {c['resize'][0]}×{c['resize'][1]}, batch {c['batch']}, training step {c['queries']}×"
            f"{2 + c['negs']} images, load average {' '.join(f'{v:.2f}' for v in m['load_average'])}",
            "limits: " + ", ".join(f"{p} {max(r.values()) / 1e9:.3g} GFLOP/s (" + " ".join(
                f"{k} {v / 1e9:.3g}" for k, v in r.items()) + ")" for p, r in lim["gemm_flops_per_s"].items())
            + "; forward " + ", ".join(f"{k} {v / 1e9:.3g} GFLOP/img"
                                       for k, v in lim["forward_flops_per_image"].items()),
            f"{'figure':<33} {'measured':>10} {'limit':>10}  {'unit':<12} {'of limit':>8}"]
    for name, f in result["figures"].items():
        limit = "-" if f["limit"] is None else f"{f['limit']:.4g}"
        ratio = "-" if f["ratio"] is None else f"{100 * f['ratio']:.1f}%"
        rows.append(f"{name:<33} {f['value']:>10.4g} {limit:>10}  {f['unit']:<12} {ratio:>8}")
    return "\n".join(rows + [f"note: {n}" for n in result["notes"]])
