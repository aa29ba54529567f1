"""Helpers the tests share: waiting on conditions (the supervisor's deadlines, failing as tests do), and async servers on a background loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from marketdata.processes import ProcessError, wait_until, wait_until_async

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    try:
        return wait_until(predicate, timeout, what, interval=interval)
    except ProcessError as exc:
        raise AssertionError(str(exc)) from None


async def async_wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """The asyncio twin of wait_for; `predicate` may be a coroutine function."""
    try:
        return await wait_until_async(predicate, timeout, what, interval=interval)
    except ProcessError as exc:
        raise AssertionError(str(exc)) from None


class BackgroundLoop:
    """An asyncio loop on its own thread, so sync tests can host async servers.

    `start(factory)` runs `await factory()` on the loop and returns its result;
    `call(coro_fn)` runs a coroutine there and waits for it.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        async def runner() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(drain)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
