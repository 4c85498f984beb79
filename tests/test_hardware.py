"""CPU detection from /proc/cpuinfo and sysfs, on this machine and on recorded ARM layouts."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.hardware import detect_cpu
from edge_runtime.settings import RuntimeSettings, resolve

PI5_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
    f"cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\n"
    for i in range(4)
) + "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
PI4_CPUINFO = "".join(
    f"processor\t: {i}\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n\n" for i in range(4)
)
PHONE_CPUINFO = "".join(
    f"processor\t: {i}\nFeatures\t: fp asimd asimddp i8mm sve sve2 bf16\n\n" for i in range(8)
)

# A phone-class SoC (Snapdragon 888-like): 4 Cortex-A55, 3 Cortex-A78, 1 Cortex-X1. The kernel lists the
# features every core has: dotprod, no i8mm (the A55 lacks it).
SOC_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
    f"cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU variant\t: 0x1\n"
    f"CPU part\t: {'0xd05' if i < 4 else '0xd41' if i < 7 else '0xd44'}\nCPU revision\t: 0\n\n"
    for i in range(8)
)


def sysfs(tmp_path: Path, capacities: list[int], key: str = "cpu_capacity") -> Path:
    root = tmp_path / "cpu"
    root.mkdir(parents=True)
    (root / "online").write_text(f"0-{len(capacities) - 1}\n")
    for i, cap in enumerate(capacities):
        d = root / f"cpu{i}"
        (d / "topology").mkdir(parents=True)
        (d / "topology" / "thread_siblings_list").write_text(f"{i}\n")
        target = d / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{cap}\n")
    return root


def test_raspberry_pi_5(tmp_path):
    cpu = detect_cpu(PI5_CPUINFO, sysfs(tmp_path, [1024] * 4), machine="aarch64")
    assert cpu.physical_cores == 4 and cpu.performance_cores == 4 and cpu.efficiency_cores == 0
    assert {"NEON", "DOTPROD", "FP16"} <= set(cpu.features)
    assert resolve(RuntimeSettings(), trained_ctx=32768, cpu=cpu).n_threads == 4


def test_raspberry_pi_4_has_no_dotprod(tmp_path):
    cpu = detect_cpu(PI4_CPUINFO, sysfs(tmp_path, [1024] * 4), machine="aarch64")
    assert "NEON" in cpu.features and "DOTPROD" not in cpu.features


def test_big_little_phone_uses_only_big_cores(tmp_path):
    # 4 little (capacity 325), 3 big (850), 1 prime (1024): big and prime cores are used, little ones not.
    cpu = detect_cpu(PHONE_CPUINFO, sysfs(tmp_path, [325] * 4 + [850] * 3 + [1024]), machine="aarch64")
    assert cpu.physical_cores == 8
    assert cpu.performance_cores == 4 and cpu.efficiency_cores == 4
    assert {"DOTPROD", "I8MM", "SVE", "SVE2"} <= set(cpu.features)
    cpu = detect_cpu(PHONE_CPUINFO, sysfs(tmp_path / "b", [446] * 6 + [1024] * 2), machine="aarch64")
    assert cpu.performance_cores == 2 and cpu.efficiency_cores == 6
    settings = resolve(RuntimeSettings(), trained_ctx=8192, cpu=cpu)
    assert settings.n_threads == 2 and "efficiency" in settings.reasons["n_threads"]


def test_hybrid_x86_by_max_frequency(tmp_path):
    cpuinfo = "".join(f"processor\t: {i}\nflags\t\t: fpu sse3 avx avx2 fma f16c avx_vnni\n\n" for i in range(6))
    cpu = detect_cpu(cpuinfo, sysfs(tmp_path, [4700000] * 2 + [3300000] * 4, key="cpufreq/cpuinfo_max_freq"), machine="x86_64")
    assert cpu.performance_cores == 2 and cpu.efficiency_cores == 4
    assert {"AVX2", "AVX-VNNI", "FMA"} <= set(cpu.features)


def test_this_machine():
    cpu = detect_cpu()
    assert 1 <= cpu.performance_cores <= cpu.physical_cores <= cpu.logical_cpus
    assert cpu.total_memory_mb and cpu.total_memory_mb > 256


def test_explicit_settings_override_the_machine():
    cpu = detect_cpu()
    s = resolve(RuntimeSettings(n_threads=1, n_ctx=1024, n_batch=128, kv_cache_type="q8_0"), trained_ctx=32768, cpu=cpu)
    assert (s.n_threads, s.n_ctx, s.n_batch, s.n_ubatch) == (1, 1024, 128, 128)
    assert s.flash_attn is True and "q8_0" in s.reasons["flash_attn"]


def test_core_types_and_features_of_recorded_boards(tmp_path):
    pi5 = detect_cpu(PI5_CPUINFO, sysfs(tmp_path / "5", [1024] * 4), machine="aarch64")
    pi4 = detect_cpu(PI4_CPUINFO, sysfs(tmp_path / "4", [1024] * 4), machine="aarch64")
    phone = detect_cpu(SOC_CPUINFO, sysfs(tmp_path / "p", [325] * 4 + [850] * 3 + [1024]), machine="aarch64")
    assert pi5.core_types == ("4x Cortex-A76",) and pi4.core_types == ("4x Cortex-A72",)
    assert phone.core_types == ("4x Cortex-A55", "3x Cortex-A78", "1x Cortex-X1")
    assert (phone.performance_cores, phone.efficiency_cores) == (4, 4)
    assert {"NEON", "DOTPROD", "FP16"} <= set(phone.features) and not {"I8MM", "SVE"} & set(phone.features)


def test_a_build_for_a_newer_cpu_is_refused_with_the_right_build(tmp_path):
    import pytest

    from edge_runtime.backend.cpu_build import build_features, check_build
    from edge_runtime.errors import UnsupportedBuildError

    pi5_build = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | REPACK = 1 | "
    pi4_build = "CPU : NEON = 1 | ARM_FMA = 1 | LLAMAFILE = 1 | REPACK = 1 | "
    assert build_features(pi5_build) == {"DOTPROD", "FP16"} and build_features(pi4_build) == set()
    pi4 = detect_cpu(PI4_CPUINFO, sysfs(tmp_path / "4", [1024] * 4), machine="aarch64")
    pi5 = detect_cpu(PI5_CPUINFO, sysfs(tmp_path / "5", [1024] * 4), machine="aarch64")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "edge-runtime-build.json").write_text('{"march": "armv8.2-a+dotprod+fp16"}')
    with pytest.raises(UnsupportedBuildError) as err:
        check_build(pi4, pi5_build, lib)
    text = str(err.value)
    assert "built with -march=armv8.2-a+dotprod+fp16" in text and "DOTPROD, FP16" in text
    assert "-DGGML_CPU_ARM_ARCH=armv8-a " in text and "Raspberry Pi 4" in text
    check_build(pi5, pi5_build, lib)  # the right board
    check_build(pi5, pi4_build, lib)  # an older build runs on a newer core
    check_build(detect_cpu(), "CPU : SSE3 = 1 | AVX2 = 1 |")  # this machine and an x86 baseline build
