"""What the CPU is: performance cores, big.LITTLE layout, SIMD features, memory.

Everything is read from /proc/cpuinfo and sysfs on Linux (Raspberry Pi,
Android, x86 laptops), `sysctl` on macOS, and os.cpu_count() elsewhere.
The readers take their sources as arguments so other machines' files can be
checked in tests.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Feature flags worth reporting, by the name /proc/cpuinfo uses -> our name.
_X86_FEATURES = {
    "pni": "SSE3", "sse3": "SSE3", "ssse3": "SSSE3", "avx": "AVX", "f16c": "F16C", "fma": "FMA", "avx2": "AVX2",
    "avx_vnni": "AVX-VNNI", "avx512f": "AVX-512", "avx512_vnni": "AVX-512-VNNI", "avx512_bf16": "AVX-512-BF16",
    "amx_int8": "AMX-INT8",
}
_ARM_FEATURES = {
    "asimd": "NEON", "neon": "NEON", "fphp": "FP16", "asimdhp": "FP16", "asimddp": "DOTPROD",
    "i8mm": "I8MM", "sve": "SVE", "sve2": "SVE2", "bf16": "BF16", "sme": "SME",
}


# The kernel's HWCAP/HWCAP2 bits on arm64 (asm/hwcap.h) -> the /proc/cpuinfo flag names above.
_ARM_HWCAP = {1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve"}
_ARM_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16", 23: "sme"}
# "CPU part" of ARM Ltd. cores (implementer 0x41).
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as seen by this process."""

    machine: str
    model: str
    logical_cpus: int
    physical_cores: int
    performance_cores: int
    efficiency_cores: int
    features: tuple[str, ...]
    total_memory_mb: int | None = None
    core_capacities: dict[int, int] = field(default_factory=dict)
    core_types: tuple[str, ...] = ()  # e.g. ("4x Cortex-A55", "4x Cortex-A76"), when the CPU names its parts

    @property
    def is_arm(self) -> bool:
        return self.machine.lower() in ("aarch64", "arm64") or self.machine.lower().startswith("armv")

    def has(self, feature: str) -> bool:
        return feature in self.features


def parse_cpuinfo(text: str) -> tuple[str, set[str], int]:
    """(model name, raw feature flags, physical core count or 0) from /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if core_id is not None:
                cores.add((physical_id or "0", core_id))
            physical_id = core_id = None
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
    return model, flags, len(cores)


def core_types(text: str) -> tuple[str, ...]:
    """Cores by type from /proc/cpuinfo's "CPU part" lines (ARM), slowest cluster first as listed."""
    parts = re.findall(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", text, re.M)
    counts: dict[str, int] = {}
    for part in parts:
        name = _ARM_PARTS.get(part.lower(), f"part {part}")
        counts[name] = counts.get(name, 0) + 1
    return tuple(f"{n}x {name}" for name, n in counts.items())


def arm_hwcap_flags() -> set[str]:
    """The arm64 features the kernel (or qemu-user) reports to this process, by cpuinfo flag name."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        hwcap, hwcap2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
    except (OSError, AttributeError):
        return set()
    return ({name for bit, name in _ARM_HWCAP.items() if hwcap >> bit & 1}
            | {name for bit, name in _ARM_HWCAP2.items() if hwcap2 >> bit & 1})


def _cpu_list(spec: str) -> list[int]:
    """Parse a sysfs CPU list like "0-3,6"."""
    cpus: list[int] = []
    for part in spec.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


def core_capacities(sysfs: Path, cpus: list[int]) -> dict[int, int]:
    """Relative performance of each CPU: cpu_capacity (ARM) or max frequency."""
    out: dict[int, int] = {}
    for cpu in cpus:
        base = sysfs / f"cpu{cpu}"
        for rel in ("cpu_capacity", "cpufreq/cpuinfo_max_freq"):
            try:
                out[cpu] = int((base / rel).read_text().strip())
                break
            except (OSError, ValueError):
                continue
    return out


def _physical_from_siblings(sysfs: Path, cpus: list[int]) -> int:
    groups = set()
    for cpu in cpus:
        try:
            groups.add((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            return 0
    return len(groups)


def detect_cpu(cpuinfo_text: str | None = None, sysfs: Path | None = None, machine: str | None = None) -> CpuInfo:
    """Describe this CPU (or the one the given /proc/cpuinfo text and sysfs tree describe)."""
    machine = machine or platform.machine()
    own_machine = cpuinfo_text is None
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo_text = ""
    sysfs = sysfs or Path("/sys/devices/system/cpu")
    model, flags, physical = parse_cpuinfo(cpuinfo_text)
    is_arm = machine.lower() in ("aarch64", "arm64") or machine.startswith("arm")
    if own_machine and is_arm and platform.system() == "Linux":
        if "vendor_id" in cpuinfo_text:  # qemu-user shows the host's x86 cpuinfo
            model, flags = "ARM CPU (emulated: /proc/cpuinfo describes the host)", set()
        flags |= arm_hwcap_flags()  # what the kernel says this process may use

    if own_machine and hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
    else:
        try:
            cpus = _cpu_list((sysfs / "online").read_text())
        except OSError:
            cpus = list(range(os.cpu_count() or 1))
    logical = len(cpus)

    if platform.system() == "Darwin" and own_machine:
        return _detect_macos(machine, logical)

    sibling_cores = _physical_from_siblings(sysfs, cpus)
    physical = min(logical, sibling_cores or physical or logical)
    threads_per_core = max(1, logical // max(physical, 1))

    capacities = core_capacities(sysfs, cpus)
    performance = efficiency = 0
    if capacities and len(set(capacities.values())) > 1:
        # big.LITTLE / P+E: every core faster than the slowest cluster counts (big and prime
        # cores together beat the prime core alone; little cores slow a synchronous matmul down).
        slowest = min(capacities.values())
        big = [c for c, cap in capacities.items() if cap > 1.1 * slowest]
        performance = max(1, len(big) // threads_per_core)
        efficiency = max(0, physical - performance)
    else:
        performance = physical

    names = _ARM_FEATURES if is_arm else _X86_FEATURES
    features = tuple(sorted({name for flag, name in names.items() if flag in flags}))
    return CpuInfo(
        machine=machine,
        model=model or platform.processor() or machine,
        logical_cpus=logical,
        physical_cores=physical,
        performance_cores=performance,
        efficiency_cores=efficiency,
        features=features,
        total_memory_mb=total_memory_mb() if own_machine else None,
        core_capacities=capacities,
        core_types=core_types(cpuinfo_text) if is_arm else (),
    )


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _detect_macos(machine: str, logical: int) -> CpuInfo:
    perf = int(_sysctl("hw.perflevel0.physicalcpu") or 0)
    eff = int(_sysctl("hw.perflevel1.physicalcpu") or 0)
    physical = int(_sysctl("hw.physicalcpu") or logical)
    features = ["NEON"] if machine == "arm64" else []
    if _sysctl("hw.optional.arm.FEAT_DotProd") == "1":
        features.append("DOTPROD")
    if _sysctl("hw.optional.arm.FEAT_I8MM") == "1":
        features.append("I8MM")
    return CpuInfo(
        machine=machine, model=_sysctl("machdep.cpu.brand_string") or machine, logical_cpus=logical,
        physical_cores=physical, performance_cores=perf or physical, efficiency_cores=eff,
        features=tuple(sorted(features)), total_memory_mb=total_memory_mb(),
    )


def total_memory_mb() -> int | None:
    """Physical memory in MiB, if it can be read."""
    try:
        text = Path("/proc/meminfo").read_text()
        match = re.search(r"MemTotal:\s+(\d+) kB", text)
        if match:
            return int(match.group(1)) // 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return None


def available_memory_mb() -> int | None:
    """Memory available to new allocations in MiB (Linux MemAvailable)."""
    try:
        match = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return int(match.group(1)) // 1024 if match else None
    except OSError:
        return None
