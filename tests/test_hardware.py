"""tfllm.hardware: which bf16 instructions oneDNN may use, under an ONEDNN_MAX_CPU_ISA cap."""
import pytest

from tfllm import hardware
from tfllm.training import strategy
from tfllm.config import load_config

EVERY_BF16 = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]


@pytest.mark.parametrize("cap, usable", [
    (None, ["avx512_bf16", "amx_bf16"]),
    ("AVX2", []),                                   # an AVX2-only run on an AVX-512 CPU
    ("avx512_core_vnni", []),                       # names are case-insensitive, as in oneDNN
    ("AVX512_CORE_BF16", ["avx512_bf16"]),          # AVX512-BF16 but not AMX
    ("AVX512_CORE_AMX", ["avx512_bf16", "amx_bf16"]),
    ("DEFAULT", ["avx512_bf16", "amx_bf16"]),       # caps nothing
    ("NOT_AN_ISA", ["avx512_bf16", "amx_bf16"]),    # oneDNN ignores a name it does not know
])
def test_bf16_hardware_honours_the_onednn_isa_cap(monkeypatch, cap, usable):
    monkeypatch.setattr(hardware, "cpu", lambda: {"model": "test", "cores": 2, "flags": EVERY_BF16})
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.bf16_hardware() == usable


def test_auto_precision_is_float32_under_an_avx2_cap_and_says_why(monkeypatch):
    monkeypatch.setattr(strategy, "bf16_hardware", hardware.bf16_hardware)  # conftest pins [] otherwise
    monkeypatch.setattr(strategy.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    precision = strategy.resolve_precision(load_config(None, ["train.mixed_precision=auto"]))
    assert precision.policy == "none"
    assert hardware.cpu()["onednn_max_cpu_isa"] == "AVX2"  # run_info.json records the cap
    if any(f in hardware.BF16_FLAGS for f in hardware.cpu()["flags"]):  # this CPU has bf16: the cap hid it
        assert "ONEDNN_MAX_CPU_ISA=AVX2 hides" in precision.reason
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert "onednn_max_cpu_isa" not in hardware.cpu()
