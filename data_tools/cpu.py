"""What this machine's CPU can do, read from /proc/cpuinfo. The trainer asks before running bf16 on the CPU
(without AMX, bf16 autocast is emulated and many times slower than fp32); the benchmarks record it."""
from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# The flags that decide how fast the CPU trains: vector width, bf16 dot products, AMX tiles.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags(path: str | Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first processor listed (x86 "flags", ARM "Features"); empty if unreadable."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(path: str | Path = CPUINFO) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "unknown CPU"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


def has_amx_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether bf16 matrix products run in hardware (AMX); avx512_bf16 alone converts but does not multiply
    fast enough for training."""
    return "amx_bf16" in (cpu_flags() if flags is None else flags)
