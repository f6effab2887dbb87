"""What this machine's CPU can do, decided in one place for every part (runtime, training, benchmarks).

Native bf16 means AVX512_BF16 or AMX-BF16 (read from /proc/cpuinfo's flags): there, OpenVINO bf16 inference
and torch bf16 autocast are several times faster than fp32; elsewhere bf16 is emulated and slower.
GCOMP_CPU_BF16=1 or 0 overrides what this machine's CPU says (tests simulate both kinds of CPU; it cannot
make an AVX2 CPU compute bf16 the way a bf16 one does, only make gcomp choose as if it could).
"""
from __future__ import annotations

import os
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(flags_text: str | None = None) -> set[str]:
    """The first 'flags' line of /proc/cpuinfo (or of `flags_text`), as a set; empty where unreadable."""
    if flags_text is None:
        try:
            flags_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in flags_text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags_text: str | None = None) -> bool:
    """True where the CPU computes bf16 natively. GCOMP_CPU_BF16=1/0 overrides this machine's answer."""
    forced = os.environ.get("GCOMP_CPU_BF16", "").strip().lower()
    if flags_text is None and forced in ("0", "1", "true", "false", "yes", "no"):
        return forced in ("1", "true", "yes")
    return any(f in cpu_flags(flags_text) for f in CPU_BF16_FLAGS)


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a container's cpuset), which os.cpu_count()
    ignores; ONNX Runtime and OpenVINO size their thread pools by it too. CPU quotas (cgroup cpu.max) are not
    counted."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cpu_kind(flags_text: str | None = None) -> str:
    """A short name for benchmark tables: 'AMX', 'AVX512_BF16', 'AVX512', 'AVX2' or 'baseline'."""
    f = cpu_flags(flags_text)
    for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2")):
        if flag in f:
            return name
    return "baseline"
