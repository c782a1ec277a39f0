"""tfllm.hardware: which bf16 instructions oneDNN may use, under an ONEDNN_MAX_CPU_ISA cap."""
import logging
import os
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_overrides

from tfllm import hardware
from tfllm.config import load_config
from tfllm.errors import TfllmError
from tfllm.inference import inference_precision
from tfllm.training import strategy

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


def test_explicit_bf16_under_an_avx2_cap_is_one_clear_error_not_an_abort(tiny_checkpoint, sentiment_files, tmp_path):
    """Under ONEDNN_MAX_CPU_ISA=AVX2 oneDNN has no bf16 matmul and TensorFlow aborts (SIGABRT) on
    the first one; tfllm refuses the run first, with one line, before the run directory exists."""
    train, dev = sentiment_files
    overrides = [a for a in tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "run", "train.epochs=1")
                 if not a.startswith("train.mixed_precision=")] + ["train.mixed_precision=mixed_bfloat16"]
    done = subprocess.run([sys.executable, "-m", "tfllm.train", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode not in (0, -6, 134), done.stderr[-2000:]  # neither a run nor oneDNN's abort
    assert "config key train.mixed_precision: mixed_bfloat16 cannot run: ONEDNN_MAX_CPU_ISA=AVX2" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_bf16_inference_under_an_avx2_cap_is_refused(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(TfllmError, match="--precision bfloat16 cannot run: ONEDNN_MAX_CPU_ISA=AVX2"):
        inference_precision("bfloat16")
    assert inference_precision("auto")[0] == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # bf16 runs there, emulated
    assert inference_precision("bfloat16")[0] == "bfloat16"


@pytest.mark.parametrize("instructions, warned", [([], True), (["avx512_bf16"], False)])
def test_explicit_bf16_without_bf16_instructions_warns(monkeypatch, caplog, instructions, warned):
    monkeypatch.setattr(strategy, "bf16_hardware", lambda: instructions)
    monkeypatch.setattr(strategy.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    logger = logging.getLogger("tfllm")
    logger.addHandler(caplog.handler)  # the tfllm logger may not propagate to the root
    try:
        precision = strategy.resolve_precision(load_config(None, ["train.mixed_precision=mixed_bfloat16"]))
    finally:
        logger.removeHandler(caplog.handler)
    assert precision.policy == "mixed_bfloat16"  # asked for: it still runs
    assert ("bf16 runs emulated here, slower than float32" in caplog.text) == warned
