"""Wall time as the messages carry it: integer microseconds since the Unix epoch."""

from __future__ import annotations

import time


def now_us() -> int:
    return time.time_ns() // 1000
