"""Does the loaded llama.cpp fit this CPU? A build made for a newer core (a Pi 5 build on a Pi 4) would die
by an illegal instruction at its first matrix product; this check refuses it first, naming the right build.

llama.cpp reports the instruction sets it was compiled for in `llama_print_system_info()` ("DOTPROD = 1");
the CPU's own are in `CpuInfo.features` (the kernel's HWCAP on ARM).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edge_runtime.errors import UnsupportedBuildError
from edge_runtime.hardware import CpuInfo

# llama.cpp's system-info names -> CpuInfo feature names (only features both sides know).
BUILD_FEATURES = {
    "DOTPROD": "DOTPROD", "FP16_VA": "FP16", "MATMUL_INT8": "I8MM", "SVE": "SVE", "SME": "SME",
    "SSE3": "SSE3", "SSSE3": "SSSE3", "AVX": "AVX", "AVX2": "AVX2", "F16C": "F16C", "FMA": "FMA",
    "AVX_VNNI": "AVX-VNNI", "AVX512": "AVX-512", "AVX512_VNNI": "AVX-512-VNNI", "AVX512_BF16": "AVX-512-BF16",
    "AMX_INT8": "AMX-INT8",
}
SKIP_ENV = "EDGE_RUNTIME_SKIP_CPU_CHECK"

# -march for each Raspberry Pi class (platforms/raspberry-pi/install.sh uses the same table).
ARM_BUILDS = (
    ({"DOTPROD", "FP16", "I8MM"}, "armv8.6-a+dotprod+fp16+i8mm", "phones with Cortex-A78/X1 or newer"),
    ({"DOTPROD", "FP16"}, "armv8.2-a+dotprod+fp16", "Raspberry Pi 5 (Cortex-A76)"),
    (set(), "armv8-a", "Raspberry Pi 4 and 3 (Cortex-A72/A53)"),
)


def build_features(system_info: str) -> set[str]:
    """The CPU features a llama.cpp build requires, from its system info."""
    flags = set(re.findall(r"\b([A-Z0-9_]+) = 1\b", system_info))
    return {BUILD_FEATURES[f] for f in flags if f in BUILD_FEATURES}


def build_record(lib_dir: Path) -> dict:
    """What our build scripts note beside the libraries they build (`edge-runtime-build.json`)."""
    try:
        return json.loads((lib_dir / "edge-runtime-build.json").read_text())
    except (OSError, ValueError):
        return {}


def right_build(cpu: CpuInfo) -> tuple[str, str]:
    """The -march and board class this CPU can run."""
    for needs, march, what in ARM_BUILDS:
        if needs <= set(cpu.features):
            return march, what
    return ARM_BUILDS[-1][1:]


def rebuild_hint(cpu: CpuInfo) -> str:
    if cpu.is_arm:
        march, what = right_build(cpu)
        return (f'install the build for this CPU ({what}): CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH={march} '
                '-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36 '
                "(platforms/raspberry-pi/install.sh picks it on a Pi)")
    return ('build llama-cpp-python on this machine: CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_RPC=on" pip install '
            "--force-reinstall --no-cache-dir llama-cpp-python==0.3.36")


def check_build(cpu: CpuInfo, system_info: str, lib_dir: Path | None = None) -> None:
    """Raise UnsupportedBuildError when the build needs an instruction set this CPU lacks."""
    if os.environ.get(SKIP_ENV) == "1" or not cpu.features:
        return  # nothing known about the CPU: nothing to compare
    missing = sorted(build_features(system_info) - set(cpu.features))
    if not missing:
        return
    record = build_record(lib_dir) if lib_dir else {}
    built = f" (built with -march={record['march']})" if record.get("march") else ""
    raise UnsupportedBuildError(
        f"the installed llama.cpp{built} uses {', '.join(missing)}, which this CPU ({cpu.model}) does not have: "
        f"it would stop with an illegal instruction. {rebuild_hint(cpu)}. ({SKIP_ENV}=1 skips this check)")
