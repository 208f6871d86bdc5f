"""What a benchmark figure was measured on: the CPU, the instruction sets its kernels can use, and how busy the
machine was (a shared machine's load average weighs on every CPU figure)."""

from __future__ import annotations

import os
from pathlib import Path

# The flags that decide which kernels run: llama.cpp's and the native decode step's (-march=native).
_KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx_vnni")
_KERNEL_FLAG_PREFIXES = ("avx512", "amx")


def cpu_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo (or the given text); ("unknown CPU", set())
    where there is none (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return model, flags


def instruction_set(flags: set[str]) -> str:
    """The widest vector instruction set of the kernels: "avx512", "avx2" or "baseline"."""
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "baseline"


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name, logical CPU count and the instruction-set flags that matter to the kernels."""
    model, flags = cpu_flags(cpuinfo)
    wanted = sorted(f for f in flags if f in _KERNEL_FLAGS or f.startswith(_KERNEL_FLAG_PREFIXES))
    return (f"{model}; {os.cpu_count()} logical CPUs; {instruction_set(flags)}; "
            f"flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, or "n/a" where the platform has none."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
