"""Alerts an operator expects, over a sliding window: slow first tokens (p95), slow generation (median
tokens/s), memory, success rate (answers that are not 5xx or 429). `GET /v1/alerts` shows them; a watcher
thread logs each alert when it starts and stops firing, and can export the metrics as JSON periodically.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.server.metrics import rss_bytes

log = logging.getLogger("edge_runtime.server.alerts")


@dataclass(frozen=True)
class AlertRules:
    window_s: float = 300.0
    max_ttft_s: float | None = None  # p95 time to first token above this fires
    min_tps: float | None = None  # median generation tokens/s below this fires
    max_rss_mb: float | None = None  # process resident memory above this fires
    min_success: float | None = None  # share of requests answered (not 5xx, not 429) below this fires

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.max_ttft_s, self.min_tps, self.max_rss_mb, self.min_success))


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Alerts:
    """Windowed samples and the rules over them. Thread-safe."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self._lock = threading.Lock()
        self._requests: collections.deque[tuple[float, bool]] = collections.deque()
        self._generations: collections.deque[tuple[float, float, float]] = collections.deque()
        self._firing: dict[str, float] = {}

    def observe_request(self, status: int) -> None:
        with self._lock:
            self._requests.append((time.monotonic(), status < 500 and status != 429))

    def observe_generation(self, ttft_s: float, tps: float) -> None:
        with self._lock:
            self._generations.append((time.monotonic(), ttft_s, tps))

    def evaluate(self) -> list[dict]:
        now, r = time.monotonic(), self.rules
        with self._lock:
            for q in (self._requests, self._generations):
                while q and q[0][0] < now - r.window_s:
                    q.popleft()
            ok = [good for _, good in self._requests]
            ttft = [t for _, t, _ in self._generations if t]
            tps = [s for _, _, s in self._generations if s]
        checks = []
        if r.max_ttft_s is not None:
            value = _percentile(ttft, 0.95) if ttft else None
            checks.append(("ttft_p95_seconds", value, r.max_ttft_s, value is not None and value > r.max_ttft_s))
        if r.min_tps is not None:
            value = _percentile(tps, 0.5) if tps else None
            checks.append(("median_tokens_per_second", value, r.min_tps, value is not None and value < r.min_tps))
        if r.max_rss_mb is not None:
            value = rss_bytes() / 2**20
            checks.append(("resident_memory_mb", value, r.max_rss_mb, value > r.max_rss_mb))
        if r.min_success is not None:
            value = sum(ok) / len(ok) if ok else None
            checks.append(("success_rate", value, r.min_success, value is not None and value < r.min_success))
        out = []
        with self._lock:
            for name, value, threshold, firing in checks:
                if firing and name not in self._firing:
                    self._firing[name] = time.time()
                    log.warning("alert firing: %s = %.4g (threshold %g, over the last %.0f s)", name, value,
                                threshold, r.window_s)
                elif not firing and name in self._firing:
                    del self._firing[name]
                    log.warning("alert resolved: %s", name)
                out.append({"name": name, "firing": firing, "value": None if value is None else round(value, 4),
                            "threshold": threshold, "window_s": r.window_s, "since": self._firing.get(name)})
        return out


class Watcher:
    """Evaluates the alerts every `interval` seconds (so they are logged without anyone asking) and writes
    the metrics snapshot to `json_path` (atomically) when given."""

    def __init__(self, alerts: Alerts, snapshot, interval: float = 15.0, json_path: str | None = None) -> None:
        self.alerts, self.snapshot, self.interval, self.json_path = alerts, snapshot, interval, json_path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edge-runtime-alerts")

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        alerts = self.alerts.evaluate()
        if self.json_path:
            path = Path(self.json_path)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"time": time.time(), "metrics": self.snapshot(), "alerts": alerts}))
            os.replace(tmp, path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
