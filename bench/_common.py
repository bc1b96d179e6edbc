"""Helpers shared by the bench scripts: machine description, peak memory, the package on sys.path.

psutil comes with Snakemake (a pinned requirement), so it is always there
in the project's venv.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "workflow") not in sys.path:
    sys.path.insert(0, str(REPO / "workflow"))
# The tests' stand-in models (tests/factories.py), so benches build theirs the same way.
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))


def machine() -> str:
    """One line naming the machine and its load, printed beside every figure."""
    load = os.getloadavg()[0]
    cpu = platform.processor() or platform.machine()
    return f"cpus={os.cpu_count()} load1={load:.1f} mem_gb={psutil.virtual_memory().total / 2**30:.0f} cpu={cpu}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process or the largest child it waited for, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process and the children it waited for.

    Beside wall time on a loaded machine: it counts the work done, not the
    time spent waiting for a core (but a busy machine still inflates it a
    little through cache and memory-bandwidth contention).
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class TreeMemorySampler:
    """Samples the summed RSS of a process and all its descendants; keeps the peak.

    ru_maxrss only gives the largest single process, but a Snakemake run
    holds several jobs at once, so their sum is what a machine must hold.
    """

    def __init__(self, pid: int, interval: float = 0.2):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


class Stopwatch:
    """Wall seconds and CPU seconds (this process and waited-for children) of a block."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.cpu_start = cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu = cpu_seconds() - self.cpu_start
