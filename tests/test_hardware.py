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
