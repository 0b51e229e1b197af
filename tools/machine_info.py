"""Print what decides speed and rounding on this machine: CPU model, its ISA flags, torch's CPU capability, bf16.

python -m tools.machine_info     (.ci/run prints it before the tests)
"""
from __future__ import annotations

import os

import torch

from commons import ISA_FLAGS, cpu_description, native_bf16


def describe() -> str:
    """Lines naming the CPU, which of commons.ISA_FLAGS it has, torch's kernel path and native bf16."""
    model, flags = cpu_description()
    forced = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    return "\n".join([
        f"cpu: {model or 'unknown'} ({os.cpu_count()} cores)",
        "isa: " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ISA_FLAGS),
        f"torch {torch.__version__}: cpu capability {torch.backends.cpu.get_cpu_capability()}"
        + (f" (forced: {', '.join(f'{k}={v}' for k, v in forced.items())})" if forced else ""),
        f"native bf16: {native_bf16('cpu') or 'no (emulated: --precision auto picks fp32)'}",
    ])


if __name__ == "__main__":
    print(describe())
