"""The output of `marketdata up`, and what happens when nobody reads it any more.

`up | head -1` or `up 2>&1 | tee log` whose tee dies leaves `up` writing into a pipe
without a reader. A plain program dies of SIGPIPE (or of BrokenPipeError in Python) on
its next write and leaves its children running; a supervisor that ignores the error
spins on it. Here, the moment a reader of stdout or stderr goes away (noticed at once for
pipes, at the next write otherwise), `on_lost` is called once so that `up` stops in
order, and the stream is pointed at /dev/null so that the stopping itself, and the
children's last lines, write without error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


class Output:
    """stdout and stderr of this process, watched for a reader that goes away."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[], None]) -> None:
        self._loop = loop
        self._on_lost = on_lost
        self._lost = False
        self._watched: dict[int, int] = {}  # our fd -> private duplicate watched by the loop
        for fd in (1, 2):
            try:
                is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
            except OSError:
                continue
            if is_pipe:
                # The write end of a pipe polls "readable" (an error, really) only once the
                # read end is closed: a reader callback fires exactly then, never while it works.
                dup = os.dup(fd)
                self._watched[fd] = dup
                loop.add_reader(dup, self._gone, fd)

    @property
    def lost(self) -> bool:
        return self._lost

    def print(self, text: str) -> None:
        """Write `text` to stdout (the banner)."""
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._gone(1)

    def line(self, data: bytes) -> None:
        """Write one line of a child's log to stderr."""
        out = sys.stderr.buffer
        try:
            out.write(data)
            out.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._gone(2)

    def _gone(self, fd: int) -> None:
        self._unwatch(fd)
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        if not self._lost:
            self._lost = True
            log.warning("%s was closed; stopping", "stdout" if fd == 1 else "stderr")
            self._on_lost()

    def _unwatch(self, fd: int) -> None:
        dup = self._watched.pop(fd, None)
        if dup is not None:
            self._loop.remove_reader(dup)
            os.close(dup)

    def close(self) -> None:
        for fd in list(self._watched):
            self._unwatch(fd)
