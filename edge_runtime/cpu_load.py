"""How much CPU other processes use, and how many generation threads leave them room.

llama.cpp's threads meet at a barrier after every operation and spin while they
wait. When another process holds a core, a spinning thread waits for one that is
not running and generation collapses. Measured on this 2-core VM (Gemma 3 270M,
`tools/bench_threads.py`): alone, 2 threads give 81 tok/s and 1 thread 55; beside
one busy process, 2 threads give 31-41 and 1 thread 57; beside a second 2-thread
generation, 0.4 tok/s against 52 with 1 thread each. Real-time audio capture and
VAD (an assistant's load, about 1% of a core) does not hurt: 78 with 2 threads.

So the thread count follows the load: each core other processes keep busy takes
one thread away, re-checked while generating.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Headroom before a core counts as taken: light periodic work (audio, a UI) must not cost a thread.
_SLACK = 0.35


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy seconds of all CPUs, seconds this process used), or None off Linux."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat", "rb") as f:
            mine = f.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / _TICK, (int(mine[11]) + int(mine[12])) / _TICK  # utime + stime


@dataclass
class LoadSample:
    others: float  # cores busy with other processes over the last interval
    threads: int  # threads chosen for it


class ThreadGovernor:
    """Chooses the generation thread count from the other processes' recent CPU use."""

    def __init__(self, max_threads: int, *, cpus: int | None = None, interval_s: float = 0.25) -> None:
        self.max_threads = max(1, max_threads)
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.cpus = cpus
        self.interval_s = interval_s
        self._last = (time.monotonic(), _cpu_seconds())
        self.sample = LoadSample(0.0, self.max_threads)

    def threads(self) -> int:
        """The thread count to use now (re-measured at most every `interval_s`)."""
        now = time.monotonic()
        then, before = self._last
        if before is None or now - then < self.interval_s:
            return self.sample.threads
        after = _cpu_seconds()
        if after is None:
            return self.sample.threads
        self._last = (now, after)
        others = max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / (now - then))
        free = int(self.cpus - others + _SLACK)
        self.sample = LoadSample(round(others, 2), max(1, min(self.max_threads, free)))
        return self.sample.threads
