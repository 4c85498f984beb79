"""An RPC-backed model's generation, run in a child process.

llama.cpp ends the process that loses a worker mid-run (GGML_ABORT). So a `Model` loaded with `--rpc` keeps
only its vocabulary here (tokenizing, chat templates) and runs the weights in a child process
(`python -m edge_runtime.rpc.remote`): token lists and settings go in, text pieces and results come out. When
the child dies, the stream ends with an `RpcError` naming the worker that stopped answering, and the next
request starts a new child (probing the workers again), so a chat, a server or an assistant lives on.
"""

from __future__ import annotations

import collections
import os
import pickle
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterator, Sequence

from edge_runtime.errors import EdgeRuntimeError, InvalidArgumentError, RpcError
from edge_runtime.generate import CancelToken, GenerationSettings, Stream
from edge_runtime.prompt_plan import PromptPlan
from edge_runtime.rpc.probe import probe


class RemoteGenerator:
    """The `Generator` interface (`stream`, `reset()`) over a child process holding the weights."""

    def __init__(self, path: Path, settings) -> None:
        self.path, self.settings = path, settings
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.loaded: dict = {}
        self._start()

    # child lifecycle
    def _start(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env["GGML_NO_BACKTRACE"] = "1"  # llama.cpp would attach gdb to print one when a worker is lost
        self._proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.rpc.remote", str(child.fileno())],
                                      pass_fds=[child.fileno()], stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      env=env, start_new_session=True)  # Ctrl-C reaches us, not the child
        child.close()
        self._conn = Connection(parent.detach())
        threading.Thread(target=self._pump_stderr, args=(self._proc,), daemon=True).start()
        self._conn.send((str(self.path), self.settings))
        kind, value = self._recv()
        if kind == "error":
            self._stop()
            raise value
        self.loaded = value

    def _pump_stderr(self, proc: subprocess.Popen) -> None:
        for raw in proc.stderr:  # llama.cpp's and the child's messages, passed on
            line = raw.decode(errors="replace")
            self._stderr_tail.append(line.rstrip())
            sys.stderr.write(line)

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("close",))
                    self._proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._stop()

    def _lost(self) -> RpcError:
        """The child died: name the worker(s) that no longer answer."""
        code = self._proc.wait() if self._proc is not None else None
        self._stop()
        dead = []
        for ep in self.settings.rpc.endpoints:
            try:
                probe(ep, self.settings.rpc.key)
            except EdgeRuntimeError:
                dead.append(ep)
        why = "; ".join(line for line in self._stderr_tail if "RPC" in line or "abort" in line.lower())[-300:]
        who = f"the RPC worker{'s' if len(dead) > 1 else ''} at {', '.join(dead)} stopped answering" if dead else \
            "an RPC worker connection broke"
        return RpcError(f"{who} during generation (the model process ended with code {code}"
                        f"{': ' + why if why else ''}); the reply is incomplete. Restart the worker: the next "
                        "request loads the model again")

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._lost() from None

    def _ensure(self) -> None:
        if self._conn is None:
            self._start()

    def _call(self, *msg):
        with self._lock:
            self._ensure()
            self._conn.send(msg)
            kind, value = self._recv()
            if kind == "error":
                raise value
            return value

    def reset(self) -> None:
        self._call("reset")

    def logits(self, tokens: list[int]):
        return self._call("logits", tokens)

    # the Generator interface
    def stream(self, prompt: Sequence[int] | PromptPlan, settings: GenerationSettings,
               cancel: CancelToken | None = None) -> Stream:
        if isinstance(prompt, PromptPlan):
            if prompt.span_ranges():
                raise InvalidArgumentError("images and audio are not supported with --rpc yet: run the model locally")
            prompt = [t for run in prompt.runs for t in run]
        cancel = cancel or CancelToken()
        stream = Stream(iter(()), cancel)
        stream._pieces = self._pieces(list(prompt), settings, stream)
        return stream

    def _pieces(self, tokens: list[int], settings: GenerationSettings, stream: Stream) -> Iterator[str]:
        with self._lock:
            self._ensure()
            self._conn.send(("stream", tokens, settings))
            sent_cancel = done = False
            try:
                while True:
                    while True:
                        if stream.cancel_token.cancelled and not sent_cancel:
                            self._conn.send(("cancel",))
                            sent_cancel = True
                        if self._conn.poll(0.05):
                            break
                        if self._proc.poll() is not None and not self._conn.poll(0):
                            done = True
                            raise self._lost()
                    kind, value = self._recv()
                    if kind == "piece":
                        yield value
                    elif kind in ("result", "error"):
                        done = True
                        if kind == "error":
                            raise value
                        stream.result = value
                        return
            finally:
                if not done and self._conn is not None:  # the caller stopped reading: stop the child, drain
                    self._drain(sent_cancel)

    def _drain(self, sent_cancel: bool) -> None:
        try:
            if not sent_cancel:
                self._conn.send(("cancel",))
            while self._conn.recv()[0] not in ("result", "error"):
                pass
        except (EOFError, OSError):
            self._stop()


# --- the child --------------------------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    from edge_runtime.model import Model
    from edge_runtime.rpc.cluster import RpcCluster

    path, settings = conn.recv()
    try:
        cluster = RpcCluster(settings.rpc)
        model = Model(path, settings.replace(rpc=None, parallel=1), _rpc_cluster=cluster)  # one stream at a time
    except EdgeRuntimeError as exc:
        conn.send(("error", exc))
        return
    conn.send(("ready", {"n_ctx": model.n_ctx, "n_params": model.info.n_params, "n_layer": model.info.n_layer,
                         "n_embd": model.info.n_embd, "split": cluster.split.as_dict(model.info.n_layer),
                         "settings": model.settings}))
    inbox: collections.deque = collections.deque()
    current: list[CancelToken] = []
    wake = threading.Condition()

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("close",)
            with wake:
                if msg[0] == "cancel":
                    for token in current:
                        token.cancel()
                else:
                    inbox.append(msg)
                    wake.notify()
            if msg[0] == "close":
                return

    threading.Thread(target=read, daemon=True).start()
    while True:
        with wake:
            while not inbox:
                wake.wait()
            msg = inbox.popleft()
        if msg[0] == "close":
            break
        try:
            if msg[0] == "reset":
                model.reset()
                conn.send(("ok", None))
            elif msg[0] == "logits":
                conn.send(("ok", model.logits(msg[1])))
            elif msg[0] == "stream":
                token = CancelToken()
                current[:] = [token]
                stream = model.generator.stream(msg[1], msg[2], token)
                for piece in stream:
                    conn.send(("piece", piece))
                conn.send(("result", stream.result))
                current.clear()
        except EdgeRuntimeError as exc:
            conn.send(("error", exc))
    model.close()


def main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    conn = Connection(int(sys.argv[1]))
    try:
        _serve(conn)
    except (EOFError, BrokenPipeError, pickle.PicklingError):
        pass


if __name__ == "__main__":
    main()
