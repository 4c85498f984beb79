"""Conversion interrupted (Ctrl-C, SIGTERM, SIGKILL), on a full disk or into a read-only folder:
clear errors, exit codes 130/143, and no temporary file left behind (or cleaned by the next run)."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convert_support import real_gemma_checkpoint, tiny_checkpoint


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_gemma_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, "gemma3")


def start(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_runtime", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def wait_for(predicate, what: str, proc: subprocess.Popen, limit: float = 300) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before: {what}\n{proc.stderr.read()}")
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def scratch_written(folder: Path) -> bool:
    return any(p.name.endswith(".f16.tmp") and p.stat().st_size > 0 for p in folder.iterdir())


def test_ctrl_c_during_quantization_stops_at_once_and_leaves_nothing(real, tmp_path):
    proc = start("convert", str(real), "-o", str(tmp_path / "out.gguf"), "--outtype", "Q4_K_M", "--no-progress")
    wait_for(lambda: children(proc.pid), "the quantizer process started", proc)
    quantizer = children(proc.pid)[0]
    time.sleep(0.5)  # well inside llama_model_quantize
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Exception ignored" not in err and "Traceback" not in err
    assert not Path(f"/proc/{quantizer}").exists() or "zombie" in Path(f"/proc/{quantizer}/status").read_text()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_is_handled_like_ctrl_c(real, tmp_path):
    proc = start("convert", str(real), "-o", str(tmp_path / "out.gguf"), "--outtype", "Q4_K_M", "--no-progress")
    wait_for(lambda: scratch_written(tmp_path), "the f16 scratch file is being written", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert list(tmp_path.iterdir()) == []


def test_files_left_by_a_killed_run_are_removed_by_the_next(real, tiny, tmp_path, caplog):
    out = tmp_path / "out.gguf"
    proc = start("convert", str(real), "-o", str(out), "--outtype", "Q4_K_M", "--no-progress")
    wait_for(lambda: scratch_written(tmp_path), "the f16 scratch file is being written", proc)
    proc.kill()
    proc.wait()
    stale = leftovers(tmp_path)
    assert stale and all(f".out.gguf.{proc.pid}." in name for name in stale)
    from edge_runtime.conversion import convert_checkpoint

    convert_checkpoint(tiny, out, "Q4_K_M", progress=False)
    assert leftovers(tmp_path) == [] and out.is_file()
    assert "left by an interrupted run" in caplog.text


def test_a_quantizer_whose_parent_is_killed_stops_and_removes_its_output(real, tmp_path):
    proc = start("convert", str(real), "-o", str(tmp_path / "out.gguf"), "--outtype", "Q4_K_M", "--no-progress")
    wait_for(lambda: children(proc.pid), "the quantizer process started", proc)
    quantizer = children(proc.pid)[0]
    output = tmp_path / f".out.gguf.{proc.pid}.tmp"  # the atomic write's temporary, filled by the quantizer
    wait_for(lambda: output.exists() and output.stat().st_size > 0, "the quantizer is writing its output", proc)
    proc.kill()
    proc.wait()
    end = time.monotonic() + 10
    while Path(f"/proc/{quantizer}").exists() and "zombie" not in Path(f"/proc/{quantizer}/status").read_text():
        assert time.monotonic() < end, "the quantizer ran on after its parent was killed"
        time.sleep(0.05)
    assert not output.exists()  # the killed parent's scratch copy stays: the next run removes it (test above)


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_that_fills_up_mid_write_is_a_clear_error(tiny, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(tiny), "-o", str(tmp_path / "o.gguf"),
                           "--outtype", "f32", "--no-progress"], capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(8 << 20))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "disk filled up" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root on ext4)")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_folders_are_refused_before_any_work(tiny, default_model_path, read_only_dir):
    for args in (["convert", str(tiny), "-o", str(read_only_dir / "o.gguf")],
                 ["unpack", str(default_model_path), str(read_only_dir / "hf")]):
        proc = subprocess.run([sys.executable, "-m", "edge_runtime", *args, "--no-progress"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1 and "cannot write to" in proc.stderr and "Traceback" not in proc.stderr
        assert list(read_only_dir.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_unpack_into_too_small_a_place_is_refused_first_and_leaves_no_folder(default_model_path, small_disk):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "unpack", str(default_model_path),
                           str(small_disk / "hf"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "not enough disk space" in proc.stderr, proc.stderr
    assert list(small_disk.iterdir()) == []
    print(f"refused after {time.monotonic() - t0:.1f} s")


def test_a_library_script_without_a_main_guard_quantizes(tiny, tmp_path):
    """The quantizer's child process is `python -m ...`, never a re-run of the caller's script
    (multiprocessing's spawn re-imports __main__: a script from stdin could not even start it)."""
    out = tmp_path / "q.gguf"
    script = (f"from edge_runtime.conversion import convert_checkpoint\n"
              f"print('top level ran')\n"
              f"convert_checkpoint({str(tiny)!r}, {str(out)!r}, 'Q4_K_M', progress=False)\n")
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("top level ran") == 1 and out.is_file()
