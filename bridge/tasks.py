"""The bridge's background tasks: stopped for sure at shutdown, and loud when one dies of a bug."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)


def spawn(job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run `job` in the background; if it ever dies of an exception, the log says so at once."""
    task = asyncio.create_task(job, name=name)
    task.add_done_callback(report_crash)
    return task


async def stop(tasks: Iterable[asyncio.Task[None]], patience: float = 5.0) -> None:
    """Cancel `tasks` and wait for them to end.

    Cancels again every half second: a library awaiting Python 3.11's asyncio.wait_for
    can swallow one cancellation (fakeredis does), and shutdown must not hang on it.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + patience
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending and time.monotonic() > deadline:
            log.warning("%d background tasks ignored cancellation: %s", len(pending), ", ".join(t.get_name() for t in pending))
            return


def report_crash(task: asyncio.Task[None]) -> None:
    """Done callback of a background task: a task that dies of a bug says so."""
    if not task.cancelled() and task.exception() is not None:
        log.error("bridge task %s died; the bridge is degraded", task.get_name(), exc_info=task.exception())
