"""The ARM check (tools/arm_check.sh): llama.cpp cross-built for the Pi 4 and Pi 5, our code run under
qemu-aarch64 as a Cortex-A72 and a Cortex-A76 with an arm64 Debian Python, compared with this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_arm_builds_run_our_code_under_emulation():
    proc = subprocess.run(["bash", str(ROOT / "tools" / "arm_check.sh"), "all"], capture_output=True, text=True,
                          timeout=3000, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[pi")]
    print("\n".join(lines))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # every combination ran and reported; the Pi 5 build on a Cortex-A72 was refused by our check, not by SIGILL
    for combo in ("pi4 on cortex-a72", "pi4 on cortex-a76", "pi5 on cortex-a76"):
        assert any(line.startswith(f"[{combo}] {{") for line in lines), combo
    assert any(line.startswith("[pi5 on cortex-a72] refused as it should be") for line in lines)
    assert not any("FAIL" in line for line in lines)
