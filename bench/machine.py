"""The reference figure every benchmark prints: how fast this machine runs plain Python.

Machines here differ by 3x or more in CPU speed, and a shared one is noisy, so a
figure means little alone. Each benchmark prints the CPU time of a fixed pure-Python
loop next to its results; docs/performance.md quotes it, so a reader can tell a slower
machine from a slower program.
"""

from __future__ import annotations

import os
import time

LOOP = 1_000_000


def reference_ns() -> float:
    """CPU nanoseconds per iteration of an empty `for` loop, best of five (thread CPU time, not wall)."""
    best = float("inf")
    for _ in range(5):
        c0 = time.thread_time()
        for _ in range(LOOP):
            pass
        best = min(best, time.thread_time() - c0)
    return best * 1e9 / LOOP


def reference_line() -> str:
    """One line for a benchmark's header: the reference loop and the load average when it ran."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"# machine reference: an empty `for` loop takes {reference_ns():.1f} ns CPU per iteration; load average {load}; {os.cpu_count()} cores"
