"""Real `edge-runtime rpc-worker` processes on 127.0.0.1 for the RPC tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def need_rpc() -> None:
    from edge_runtime.backend.rpc import REBUILD_HINT, rpc_available

    if not rpc_available():
        pytest.fail("llama.cpp was built without RPC; " + REBUILD_HINT)


class Worker:
    """`edge-runtime rpc-worker --port PORT ...` in its own process."""

    def __init__(self, *args: str, port: int = 0) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "rpc-worker", "--port", str(port),
                                      "--threads", "1", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("rpc-worker ended: " + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"rpc-worker at (\S+),", line)
            if m:
                self.endpoint = m.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise RuntimeError("rpc-worker did not start")

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
