"""`GET /metrics` in Prometheus' text format (0.0.4), named by Prometheus conventions.

Counters and histograms are kept here as plain numbers (no registry, no global state): the server records
each request as it ends and each generation as it finishes; gauges (queue, busy slots, KV cells, RSS) are
read when scraped.
"""

from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass, field

PREFIX = "edge_runtime_"


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, cumulative = [], 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{suffix} {self.total:.6g}")
        out.append(f"{name}_count{suffix} {self.n}")
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ServerMetrics:
    """What /metrics reports. Thread-safe: requests end on the event loop, generations in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration = Histogram((0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.ttft = Histogram((0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.tps = Histogram((1, 2, 5, 10, 20, 50, 100, 200, 500))
        self.prompt_tokens = 0
        self.generated_tokens = 0

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        # only known routes as labels: a scan of random paths must not grow the label set without bound
        route = path if path.startswith(("/v1/", "/health", "/metrics")) and len(path) < 64 else "other"
        with self._lock:
            key = (method, route, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.duration.observe(seconds)

    def observe_generation(self, metrics) -> None:
        with self._lock:
            if metrics.ttft_s:
                self.ttft.observe(metrics.ttft_s)
            if metrics.gen_tps:
                self.tps.observe(metrics.gen_tps)
            self.prompt_tokens += metrics.prompt_tokens
            self.generated_tokens += metrics.generated_tokens

    def snapshot(self) -> dict:
        """The counters and histograms as JSON-ready numbers (`serve --metrics-json`)."""
        with self._lock:
            return {"requests": [{"method": m, "route": r, "status": int(st), "count": n}
                                 for (m, r, st), n in sorted(self.requests.items())],
                    "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                    "histograms": {name: {"buckets": list(h.buckets), "counts": list(h.counts), "sum": h.total,
                                          "count": h.n}
                                   for name, h in (("request_duration_seconds", self.duration),
                                                   ("time_to_first_token_seconds", self.ttft),
                                                   ("generation_tokens_per_second", self.tps))},
                    "process_resident_memory_bytes": rss_bytes()}

    def render(self, *, queue: int, busy: int, slots: int, kv_cells: int, kv_size: int) -> str:
        p = PREFIX
        lines = [f"# HELP {p}requests_total HTTP requests by method, route and status.",
                 f"# TYPE {p}requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'{p}requests_total{{method="{_escape(method)}",route="{_escape(route)}",'
                             f'status="{status}"}} {n}')
            hist = [("request_duration_seconds", "Time from a request's start to its response's end.", self.duration),
                    ("time_to_first_token_seconds", "Time from a generation's start to its first token.", self.ttft),
                    ("generation_tokens_per_second", "Decode speed of each generation.", self.tps)]
            for name, help_text, h in hist:
                lines += [f"# HELP {p}{name} {help_text}", f"# TYPE {p}{name} histogram", *h.lines(p + name)]
            counters = [("prompt_tokens_total", "Prompt tokens evaluated or reused.", self.prompt_tokens),
                        ("generated_tokens_total", "Tokens generated.", self.generated_tokens)]
        for name, help_text, value in counters:
            lines += [f"# HELP {p}{name} {help_text}", f"# TYPE {p}{name} counter", f"{p}{name} {value}"]
        gauges = [("queue_depth", "Requests waiting for the model.", queue),
                  ("busy_slots", "Generations running now.", busy),
                  ("slots", "Generations the model runs at once (--parallel).", slots),
                  ("kv_cells_used", "KV cache cells holding tokens.", kv_cells),
                  ("kv_cells_total", "KV cache cells (the context window).", kv_size),
                  ("process_resident_memory_bytes", "Resident memory of the server process.", rss_bytes())]
        for name, help_text, value in gauges:
            lines += [f"# HELP {p}{name} {help_text}", f"# TYPE {p}{name} gauge", f"{p}{name} {value}"]
        return "\n".join(lines) + "\n"
