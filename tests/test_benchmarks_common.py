"""benchmarks.machine (re-exported by benchmarks.common): machine line and report files.

Imports only the standard-library module, so it runs in well under a second.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import machine  # noqa: E402


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo")
def test_machine_info_reads_the_real_cpuinfo():
    info = machine.machine_info()
    text = Path("/proc/cpuinfo").read_text()
    assert info["cpu"] and info["cpu"] in text
    assert info["cores"] >= 1
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    assert info["flags"] == [f for f in machine.ISA_FLAGS if f in flags]
    line = machine.machine_line(info)
    assert line.startswith("Machine: ") and info["cpu"] in line and "\n" not in line


def test_machine_info_parses_flags_of_a_given_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f "
                       "amx_int8 avx512_vnni\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    info = machine.machine_info(str(cpuinfo))
    assert info["cpu"] == "Test CPU 9000"
    assert info["flags"] == ["avx2", "avx512f", "avx512_vnni", "amx_int8"]  # ISA_FLAGS order
    assert "flags: avx2 avx512f avx512_vnni amx_int8;" in machine.machine_line(info)


def test_machine_line_names_instruction_caps(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU 9000\nflags\t\t: avx2 avx512f avx512_bf16\n")
    for name in machine.ISA_CAP_ENV:
        monkeypatch.delenv(name, raising=False)
    assert "capped" not in machine.machine_line(machine.machine_info(str(cpuinfo)))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    line = machine.machine_line(machine.machine_info(str(cpuinfo)))
    assert ("flags: avx2 avx512f avx512_bf16 (instructions capped: ONEDNN_MAX_CPU_ISA=AVX2 "
            "MKL_ENABLE_INSTRUCTIONS=AVX2);") in line


def test_write_report_has_header_and_body_and_no_temp_file(tmp_path):
    argv = [str(machine.ROOT / "benchmarks" / "finetune.py"), "--out", "/tmp/x y"]
    path = machine.write_report("demo", "| a |\n|---|\n| 1 |\n", "Demo benchmark",
                                results_dir=tmp_path, argv=argv)
    assert path == tmp_path / "demo.md"
    text = path.read_text()
    assert text.startswith("# Demo benchmark\n")
    assert "- Generated: " in text and " UTC" in text
    assert machine.machine_line() in text
    assert "- Command: `python benchmarks/finetune.py --out '/tmp/x y'`" in text
    assert "- Code: git commit " in text
    assert text.endswith("| a |\n|---|\n| 1 |\n")
    machine.write_report("demo", "second", results_dir=tmp_path, argv=argv)  # replaces, atomically
    assert path.read_text().endswith("second\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.md"]


def test_git_commit_falls_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(machine.COMMIT_ENV, "abc123")
    assert machine.git_commit(tmp_path) == "abc123"  # tmp_path is no git checkout
    monkeypatch.delenv(machine.COMMIT_ENV)
    assert machine.git_commit(tmp_path).startswith("unknown")
