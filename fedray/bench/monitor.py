"""Process-tree measurements: CPU seconds and peak PSS of a process and its descendants.

PSS (proportional set size) splits shared pages, such as TensorFlow's 400+ MB of
shared libraries mapped by every worker, between the processes that map them, so the
sum over a tree counts each page once. Summing RSS would count them once per process.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any


def _tree(root: Any) -> list[Any]:
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and all its live descendants."""
    import psutil

    total = 0.0
    for p in _tree(psutil.Process(pid)):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def tree_pss_bytes(pid: int | None = None) -> int:
    """Sum of PSS over a process and all its live descendants."""
    import psutil

    total = 0
    for p in _tree(psutil.Process(pid)):
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total


class PeakPSS:
    """Samples the tree's PSS in a background thread and keeps the peak.

    One sample of a Ray + TensorFlow tree reads every process's smaps and costs about
    50 ms of CPU, so the default interval is 1 s (~5 % of one core).
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakPSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, tree_pss_bytes())
        self._stop.set()
        self._thread.join()
