"""Rate-limited log lines, for events that can repeat per message (garbage on a channel, slow clients)."""

from __future__ import annotations

import logging
import time


class Throttled:
    """Logs through `logger` at most once every `every` seconds, counting the lines held back."""

    __slots__ = ("_log", "_every", "_next", "_held")

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._log = logger
        self._every = every
        self._next = 0.0
        self._held = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            msg += " (and %d more like it since the last report)"
            args = (*args, self._held)
        self._held = 0
        self._next = now + self._every
        self._log.log(level, msg, *args)
