"""What this machine is: the CPU model and the ISA flags that decide bf16 / int8 speed.

    >>> cpu()      # {"model": "AMD EPYC ...", "cores": 2, "flags": ["avx2", "avx512f", "avx512_bf16"]}
    >>> bf16_hardware()   # ["avx512_bf16"]; [] under ONEDNN_MAX_CPU_ISA=AVX2
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 dot products in hardware (oneDNN uses them)
# oneDNN's ONEDNN_MAX_CPU_ISA (DNNL_MAX_CPU_ISA before oneDNN 2.5) caps the instructions its
# kernels, and so TensorFlow's matmuls, may use. oneDNN's ISA names are bit masks, each holding
# the ones below it (dnnl_cpu_isa_t); a flag is usable when the cap holds the ISA that brings it.
ONEDNN_ISA_MASKS = {"SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xF, "AVX2_VNNI_2": 0x1F,
                    "AVX512_CORE": 0x27, "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xE7,
                    "AVX10_1_512": 0x1EF, "AVX512_CORE_FP16": 0x1EF, "AVX10_1_512_AMX": 0xFEF,
                    "AVX512_CORE_AMX": 0xFEF, "AVX10_1_512_AMX_FP16": 0x1FEF, "AVX512_CORE_AMX_FP16": 0x1FEF}
ISA_OF_FLAG = {"avx512_bf16": "AVX512_CORE_BF16", "amx_bf16": "AVX512_CORE_AMX"}


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
    info = {"model": model, "cores": len(os.sched_getaffinity(0)), "flags": [f for f in ISA_FLAGS if f in flags]}
    cap = onednn_isa_cap()
    if cap:
        info["onednn_max_cpu_isa"] = cap
    return info


def onednn_isa_cap() -> Optional[str]:
    """``$ONEDNN_MAX_CPU_ISA`` (or the older ``$DNNL_MAX_CPU_ISA``), upper case, when it caps
    oneDNN's instructions (``ALL`` and ``DEFAULT`` cap nothing)."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value and value not in ("ALL", "DEFAULT"):
            return value
    return None


def bf16_hardware() -> list[str]:
    """The CPU's bf16 matrix instructions that oneDNN may use (empty: bf16 would be emulated,
    slower than fp32). A ``ONEDNN_MAX_CPU_ISA`` cap below the instruction hides it, so ``auto``
    precision then picks float32 as on a CPU without it; a name oneDNN does not know caps nothing."""
    cap = ONEDNN_ISA_MASKS.get(onednn_isa_cap() or "")
    return [f for f in cpu()["flags"] if f in BF16_FLAGS and allowed_under(cap, f)]


def allowed_under(cap: Optional[int], flag: str) -> bool:
    """Whether a oneDNN ISA mask ``cap`` (None: no cap) lets oneDNN use the CPU flag ``flag``."""
    needed = ONEDNN_ISA_MASKS[ISA_OF_FLAG[flag]]
    return cap is None or cap & needed == needed


def no_bf16_reason() -> str:
    """Why :func:`bf16_hardware` is empty, for logs: no such instructions, or a cap hiding them."""
    cap = onednn_isa_cap()
    if cap and any(f in BF16_FLAGS for f in cpu()["flags"]):
        return f"ONEDNN_MAX_CPU_ISA={cap} hides the CPU's bf16 instructions"
    return "the CPU has no bf16 instructions (AMX-BF16 / AVX512-BF16)"


def bf16_refused_by_cap() -> Optional[str]:
    """Why bf16 matmuls cannot run at all here, or None. Below AVX512_CORE oneDNN has no bf16
    matmul, and TensorFlow aborts the process when one is asked for (measured under
    ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``AVX2_VNNI_2``; at ``AVX512_CORE`` bf16 runs, emulated).
    Only the cap does this: TensorFlow hands bf16 to oneDNN when the CPU itself has AVX512F
    (``IsBF16SupportedByOneDNNOnThisCPU``), so on a CPU without AVX-512 bf16 takes TensorFlow's
    own slow kernels (the suite's explicit bf16 runs pass on AVX2-only EPYCs), while under a cap
    on an AVX-512 CPU it still hands them to oneDNN, which refuses."""
    cap = onednn_isa_cap()
    mask = ONEDNN_ISA_MASKS.get(cap or "")
    avx512_core = ONEDNN_ISA_MASKS["AVX512_CORE"]
    if mask is None or mask & avx512_core == avx512_core:
        return None
    return (f"ONEDNN_MAX_CPU_ISA={cap} leaves oneDNN no bf16 matmul (it needs AVX512_CORE or "
            "above; TensorFlow would abort)")
