"""What this machine is: the CPU model and the ISA flags that decide bf16 / int8 speed.

    >>> cpu()      # {"model": "AMD EPYC ...", "cores": 2, "flags": ["avx2", "avx512f", "avx512_bf16"]}
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 dot products in hardware (oneDNN uses them)


def cpu() -> dict:
    """The CPU model, the cores this process may use and which of :data:`ISA_FLAGS` it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "cores": len(os.sched_getaffinity(0)), "flags": [f for f in ISA_FLAGS if f in flags]}


def bf16_hardware() -> list[str]:
    """The CPU's bf16 matrix instructions (empty: bf16 would be emulated, slower than fp32)."""
    return [f for f in cpu()["flags"] if f in BF16_FLAGS]
