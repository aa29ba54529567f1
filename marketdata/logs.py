"""What may go into a log line: rate-limited lines for events that repeat per message, and URLs without passwords."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit, urlunsplit


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


def redact(url: str) -> str:
    """The URL with any password hidden, fit for a log line or an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unparsable ("redis://[x"), so where a password would be is unknown
        return "(an unparsable URL)"
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"  # host:port as written, even a bad port
    return urlunsplit(parts._replace(netloc=netloc))
