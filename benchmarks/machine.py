"""What machine a benchmark ran on, and where its generated report goes.

Standard library only (no TensorFlow import), so ``litert_latency.py`` can use it on a machine
without the training stack: copy this file next to it. ``benchmarks.common`` re-exports it.

* :func:`machine_info` / :func:`machine_line` - CPU model, cores, the ISA flags that decide
  int8 / bf16 speed (AVX2, AVX-512, VNNI, AMX), TensorFlow version;
* :func:`write_report` - ``benchmarks/results/<name>.md`` with a header (date, machine, the exact
  command line, git commit), written atomically.

Numbers from different machines (or days: cloud CPUs change) are not comparable; every benchmark
reports ratios against a baseline measured in the same run.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
COMMIT_ENV = "TFLLM_GIT_COMMIT"  # for runs from a copy of the tree without .git
# Environment variables that cap the instructions the math libraries use: oneDNN's (TensorFlow's
# matmuls), MKL's and PyTorch's own kernels (the peer's): set to AVX2 on an AVX-512 CPU, a run
# measures AVX2 code paths. Every report's machine line names the ones set.
ISA_CAP_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[Optional[str], set]:
    """Model name and flags of the first processor in ``/proc/cpuinfo`` (None, {} if absent)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _lscpu_model() -> Optional[str]:
    """``Model name`` from ``lscpu`` (for CPUs whose /proc/cpuinfo has none, e.g. ARM)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def _tf_version() -> Optional[str]:
    """TensorFlow's version without importing it (None where it is not installed)."""
    module = sys.modules.get("tensorflow")
    if module is not None and hasattr(module, "__version__"):
        return module.__version__
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine_info(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """``{"cpu", "cores", "flags", "tensorflow", "python", "isa_caps"}``; ``flags`` lists those of
    :data:`ISA_FLAGS` the CPU has, in that order; ``isa_caps`` the :data:`ISA_CAP_ENV` variables set."""
    model, flags = _cpuinfo(cpuinfo)
    model = model or _lscpu_model() or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "flags": [f for f in ISA_FLAGS if f in flags],
            "tensorflow": _tf_version(), "python": platform.python_version(),
            "isa_caps": {name: os.environ[name] for name in ISA_CAP_ENV if os.environ.get(name)}}


def machine_line(info: Optional[dict] = None) -> str:
    """One line: ``Machine: <CPU>, <n> cores, flags: avx2 ...; TensorFlow x.y, Python x.y``."""
    info = info or machine_info()
    flags = " ".join(info["flags"]) or "none of " + "/".join(ISA_FLAGS)
    caps = " ".join(f"{k}={v}" for k, v in info.get("isa_caps", {}).items())
    return (f"Machine: {info['cpu']}, {info['cores']} cores, flags: {flags}"
            + (f" (instructions capped: {caps})" if caps else "")
            + f"; TensorFlow {info['tensorflow'] or 'not installed'}, Python {info['python']}")


def git_commit(root: Path = ROOT) -> str:
    """HEAD of the checkout (``+dirty`` with uncommitted changes), else ``$TFLLM_GIT_COMMIT``."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(COMMIT_ENV) or "unknown (no git checkout; set TFLLM_GIT_COMMIT)"


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as typed: ``python <script> <args>`` (script relative to the repo if inside)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *argv[1:]])


def report_header(title: str, info: Optional[dict] = None, argv: Optional[Sequence[str]] = None,
                  started: Optional[datetime.datetime] = None) -> str:
    """Markdown lines naming what produced a report: date, machine, command, commit."""
    now = datetime.datetime.now(datetime.timezone.utc)
    started = started or now
    return "\n".join([
        f"# {title}", "",
        f"- Generated: {now:%Y-%m-%d %H:%M} UTC (started {started:%Y-%m-%d %H:%M} UTC)",
        f"- {machine_line(info)}",
        f"- Command: `{command_line(argv)}`",
        f"- Code: git commit {git_commit()}",
        "- Numbers are comparable only within this report (same run, same machine).", ""])


def write_report(name: str, body: str, title: Optional[str] = None, results_dir: Optional[Path] = None,
                 **header) -> Path:
    """Write ``<results_dir>/<name>.md`` (default ``benchmarks/results``): header + ``body``.

    Atomic: written to a temporary file in the same directory, then renamed over the target, so a
    reader (or a crash) never sees half a report. ``header`` goes to :func:`report_header`.
    """
    folder = Path(results_dir or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    text = report_header(title or name, **header) + "\n" + body.rstrip() + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / f"{name}.md")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / f"{name}.md"
