"""The Raspberry Pi service: scripts pass shellcheck, the units pass `systemd-analyze verify`, the board
is recognised, and the install script runs end to end in a Debian root on this machine (chroot), with the
llama.cpp build step pointed at a prebuilt wheel."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "platforms" / "raspberry-pi" / "install.sh"
CACHE = Path(os.environ.get("EDGE_RUNTIME_CACHE", Path.home() / ".cache" / "edge-runtime"))
RPC_WHEELS = CACHE / "wheels" / "llama-cpp-python-0.3.36-rpc"
BASE_ROOT = CACHE / "pi-root" / "bookworm-amd64"
PACKAGES = "python3,python3-venv,systemd,passwd,procps,libportaudio2,libsndfile1,ca-certificates"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: bash tools/install_test_deps.sh installs it")
    return path


def test_every_shell_script_passes_shellcheck():
    scripts = [str(ROOT / ".ci" / "run"), *glob.glob(str(ROOT / "**" / "*.sh"), recursive=True)]
    scripts = [s for s in scripts if "/.cache/" not in s]
    assert len(scripts) >= 4
    proc = subprocess.run([_tool("shellcheck"), *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("model, cpu_part, board, march", [
    ("Raspberry Pi 5 Model B Rev 1.0", "", "pi5", "armv8.2-a+dotprod+fp16"),
    ("Raspberry Pi 4 Model B Rev 1.5", "", "pi4", "armv8-a"),
    ("", "0xd0b", "pi5", "armv8.2-a+dotprod+fp16"),  # no device tree: the CPU part decides
    ("", "0xd08", "pi4", "armv8-a"),
    ("", "", "native", None),
])
def test_the_board_picks_the_build(tmp_path, model, cpu_part, board, march):
    (tmp_path / "model").write_bytes(model.encode() + b"\0")
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nCPU part\t: {cpu_part}\n" if cpu_part else "processor\t: 0\n")
    env = {**os.environ, "DT_MODEL": str(tmp_path / "model") if model else "/nonexistent",
           "CPUINFO": str(tmp_path / "cpuinfo")}
    out = subprocess.run(["bash", str(INSTALL), "print-build"], capture_output=True, text=True, env=env, check=True)
    got_board, flags = out.stdout.split(" ", 1)
    assert got_board == board and "-DGGML_RPC=on" in flags
    assert (f"-DGGML_CPU_ARM_ARCH={march} " in flags) if march else "-DGGML_NATIVE=ON" in flags


def test_units_pass_systemd_analyze_verify(tmp_path):
    venv = tmp_path / "prefix" / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "edge-runtime").symlink_to(shutil.which("edge-runtime") or "/bin/true")
    units = tmp_path / "units"
    subprocess.run(["bash", str(INSTALL), "--prefix", str(tmp_path / "prefix"), "--board", "pi4", "render-units",
                    str(units)], check=True)
    files = sorted(units.glob("*.service"))
    assert [f.name for f in files] == ["edge-runtime-assistant.service", "edge-runtime-rpc-worker.service",
                                       "edge-runtime-serve.service"]
    proc = subprocess.run([_tool("systemd-analyze"), "verify", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr  # verify reports problems on stderr
    mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) * 80 // 100 // 1024
    serve = (units / "edge-runtime-serve.service").read_text()
    assert f"MemoryMax={mem_mb}M" in serve and "Restart=on-failure" in serve and "User=edge-runtime" in serve
    assistant = (units / "edge-runtime-assistant.service").read_text()
    assert "SupplementaryGroups=audio" in assistant
    assert "--key-file /etc/edge-runtime/rpc.key" in (units / "edge-runtime-rpc-worker.service").read_text()
    # the check can fail: a broken unit is reported
    (tmp_path / "bad.service").write_text(serve.replace("Restart=on-failure", "Restart=sometimes"))
    bad = subprocess.run([_tool("systemd-analyze"), "verify", str(tmp_path / "bad.service")], capture_output=True,
                         text=True)
    assert "bad.service:13" in bad.stderr and "sometimes" in bad.stderr


def _debian_root() -> Path:
    """A minimal Debian bookworm root (cached) like the one Raspberry Pi OS is built on."""
    if not (BASE_ROOT / "usr" / "bin" / "python3").exists():
        tmp = BASE_ROOT.with_name(BASE_ROOT.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([_tool("debootstrap"), "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(tmp),
                        "http://deb.debian.org/debian"], check=True, capture_output=True)
        tmp.rename(BASE_ROOT)
    return BASE_ROOT


def test_install_script_end_to_end_in_a_debian_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    wheels = sorted(RPC_WHEELS.glob("llama_cpp_python-0.3.36-*.whl"))
    assert wheels, f"no prebuilt llama-cpp-python wheel in {RPC_WHEELS}: run bash tools/install_test_deps.sh"
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(_debian_root()), str(root)], check=True)
    # the project as a user would copy it, the wheel standing in for the 25-minute build
    src = root / "src"
    src.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        target = src / f.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f.decode(), target)
    (root / "wheels").mkdir()
    shutil.copy(wheels[0], root / "wheels")
    pip_cache = Path.home() / ".cache" / "pip"
    # this machine's network as a container on it would get it: DNS, the CA bundle its HTTPS proxy needs
    mounts = [("/proc", "proc"), ("/dev", "dev"), ("/etc/resolv.conf", "etc/resolv.conf"),
              ("/etc/ssl/certs/ca-certificates.crt", "etc/ssl/certs/ca-certificates.crt"),
              (str(pip_cache), "root/.cache/pip")]
    mounted = []
    try:
        for host, inside in mounts:
            target = root / inside
            if Path(host).is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.touch()
            subprocess.run(["mount", "--bind", host, str(target)], check=True)
            mounted.append(target)

        def chroot(*cmd: str, **kw) -> subprocess.CompletedProcess:
            return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, timeout=1200, **kw)

        run = chroot("/src/platforms/raspberry-pi/install.sh", "--wheel", f"/wheels/{wheels[0].name}",
                     "--services", "serve rpc-worker")
        assert run.returncode == 0, run.stderr[-3000:]
        assert "board: native" in run.stderr and "done." in run.stderr
        # the user, in the audio group, and its files
        assert "audio" in chroot("id", "-nG", "edge-runtime").stdout.split()
        key = root / "etc" / "edge-runtime" / "rpc.key"
        assert oct(key.stat().st_mode & 0o777) == "0o640"
        # units installed, the chosen ones enabled, all verified inside the root (their ExecStart exists there)
        wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
        assert sorted(p.name for p in wants.glob("edge-runtime-*")) == ["edge-runtime-rpc-worker.service",
                                                                        "edge-runtime-serve.service"]
        verify = chroot("systemd-analyze", "verify", "/etc/systemd/system/edge-runtime-serve.service",
                        "/etc/systemd/system/edge-runtime-assistant.service",
                        "/etc/systemd/system/edge-runtime-rpc-worker.service")
        assert verify.returncode == 0 and "edge-runtime" not in verify.stderr, verify.stderr
        # the service user runs the model with what was installed
        gen = chroot("runuser", "-u", "edge-runtime", "--", "env", "HOME=/var/lib/edge-runtime",
                     "/opt/edge-runtime/venv/bin/edge-runtime", "generate", "January, February,", "-n", "4",
                     "--temperature", "0")
        assert gen.returncode == 0 and "March" in gen.stdout, gen.stderr[-2000:]
        # a second run changes nothing the user set
        conf = root / "etc" / "edge-runtime" / "serve.env"
        conf.write_text('EDGE_RUNTIME_SERVE_ARGS="--port 9000"\n')
        again = chroot("/src/platforms/raspberry-pi/install.sh", "--wheel", f"/wheels/{wheels[0].name}", "--no-apt")
        assert again.returncode == 0, again.stderr[-2000:]
        assert conf.read_text() == 'EDGE_RUNTIME_SERVE_ARGS="--port 9000"\n' and key.read_bytes()
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
