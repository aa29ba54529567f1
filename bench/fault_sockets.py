"""The fault suite's observers: many WebSocket sockets and a tap on the Redis bus, each checking every message.

`Fleet` runs on an asyncio loop of its own thread (the caller's main thread keeps
starting and killing processes: see marketdata/processes.py on why children
are spawned from it). Each socket is a picows client of one bridge that follows one
instrument (`/ws/market_data/{id}`) or several (`/ws`, subscribed on connect), and
reconnects when its connection ends, after a backoff (0.1 s doubling to 1 s, 50-100 % of
it): a `sticky` socket to the same bridge (a page reconnecting to its origin), the others
to the next bridge (a balancer routing around a dead replica). The cap is lower than the
dashboard's (web/static/feed.js: 0.5 s doubling to 10 s), so that the time to heal
measures the system, not the client's wait until its next attempt. Every book is verified (bench.fault_checks.Verifier)
and ordered per instrument across reconnections (`Order`); every violation is kept
with the socket's name. The bus tap reads `md:book:*` straight from Redis with the
same checks, so a message that the bridges would drop (a fenced-off leader's, say)
is still seen.

The main thread talks to the loop through `Fleet.call`: `mark` starts a
`bench.fault_checks.Watch` on every socket just before a fault, `collect` takes them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from bench.fault_checks import ORDER, OTHER, Order, Verifier, Violations, Watch
from bench.fault_tap import BusTap, ShardTap
from marketdata.backoff import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")
BOOK_HEAD = b'{"v":1,"type":"book"'
CONNECT_TIMEOUT = 5.0
RECONNECT_BASE, RECONNECT_CAP = 0.1, 1.0  # seconds (see the module docstring)


@dataclass(frozen=True, slots=True)
class SocketPlan:
    """One logical socket: where it starts, what it follows, how it reconnects."""

    index: int
    home: int  # index of the bridge it first connects to
    instruments: tuple[str, ...]  # one: /ws/market_data/{id}; several: /ws, subscribed on connect
    sticky: bool

    @property
    def name(self) -> str:
        return f"s{self.index:03d}"

    @property
    def label(self) -> str:
        route = f"/ws/market_data/{self.instruments[0]}" if len(self.instruments) == 1 else f"/ws {'+'.join(self.instruments)}"
        return f"{self.name} ({route}, {'sticky' if self.sticky else 'fails over'})"


def plan_sockets(n: int, bridges: int, instruments: Sequence[str]) -> list[SocketPlan]:
    """`n` sockets alternating over the bridges; every fourth follows two instruments on /ws; half reconnect sticky."""
    plans = []
    for i in range(n):
        first = (i // bridges) % len(instruments)
        follows = (instruments[first],) if i % 4 != 3 or len(instruments) < 2 else (instruments[first], instruments[(first + 1) % len(instruments)])
        plans.append(SocketPlan(i, i % bridges, follows, sticky=(i // 4) % 2 == 0))
    return plans


class _Connection(WSListener):
    """One WebSocket connection of a socket; a reconnection is a new one."""

    def __init__(self, owner: Socket, bridge: int) -> None:
        self.owner = owner
        self.bridge = bridge
        self.close_code: int | None = None
        self.close_reason = ""
        self.gone = asyncio.Event()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.owner.connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            self.owner.message(frame.get_payload_as_bytes())
        elif kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = code.value if isinstance(code, WSCloseCode) else int(code)
            self.close_reason = frame.get_close_reason() or ""
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.owner.disconnected(self)
        self.gone.set()


class Socket:
    """A logical socket: its connections one after another, its checks, its watch of the current fault."""

    def __init__(self, plan: SocketPlan, fleet: Fleet) -> None:
        self.plan = plan
        self.fleet = fleet
        self.orders = {i: Order() for i in plan.instruments}
        self.violations = Violations()
        self.watch: Watch | None = None
        self.live: bool | None = None  # the feed state the current connection last reported
        self.connection: _Connection | None = None
        self.first: set[str] = set()  # instruments with no book yet on this connection
        self.connections = 0
        self.books = 0
        self.last_book_at = 0.0
        self.longest_gap = 0.0  # seconds between two books, the longest seen
        self.closing = False

    # -- picows callbacks (on the loop) ----------------------------------------------

    def connected(self, connection: _Connection) -> None:
        self.connection = connection
        self.connections += 1
        self.first = set(self.plan.instruments)
        if len(self.plan.instruments) > 1:
            request = {"op": "subscribe", "instruments": list(self.plan.instruments), "trades": False}
            connection.transport.send(WSMsgType.TEXT, orjson.dumps(request))  # type: ignore[union-attr]

    def disconnected(self, connection: _Connection) -> None:
        if self.connection is connection:
            self.connection = None
        self.live = None
        if self.closing or self.watch is None:
            return
        if connection.close_code is not None:
            how = f"closed {connection.close_code} {connection.close_reason}".strip()
        else:
            how = "dropped without a close frame"
        self.watch.closed(f"{how} by bridge-{connection.bridge + 1}", time.monotonic())

    def message(self, payload: bytes) -> None:
        now = time.monotonic()
        if payload.startswith(BOOK_HEAD):
            self._book(payload, now)
            return
        try:
            msg = orjson.loads(payload)
            kind = msg.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            self.violations.add(OTHER, f"{self.plan.label}: not a JSON object: {payload[:80]!r}")
            return
        if kind == "feed":
            self.live = bool(msg.get("live"))
            if self.watch is not None:
                self.watch.feed(self.live, str(msg.get("reason")), now)
        elif kind == "error":
            self.violations.add(OTHER, f"{self.plan.label}: error answer {msg.get('error')}: {msg.get('message')}")
        elif kind not in ("subscribed", "trade", "pong"):
            self.violations.add(OTHER, f"{self.plan.label}: unexpected message {payload[:120]!r}")

    def _book(self, payload: bytes, now: float) -> None:
        book = self.fleet.verifier.book(payload)
        if book.problem is not None:
            self.violations.add(book.kind, f"{self._where()}: {book.problem}")
            return
        order = self.orders.get(book.instrument)
        if order is None:
            self.violations.add(OTHER, f"{self._where()}: a book of {book.instrument}, which it does not follow")
            return
        first = book.instrument in self.first
        if first:
            self.first.discard(book.instrument)
        why = order.check(book.epoch, book.seq, first)
        if why is not None:
            self.violations.add(ORDER, f"{self._where()}: {book.instrument} {why}")
            return
        if self.books:
            self.longest_gap = max(self.longest_gap, now - self.last_book_at)
        self.books += 1
        self.last_book_at = now
        if self.watch is not None:
            self.watch.book(book, now)

    def _where(self) -> str:
        return f"{self.plan.label} on bridge-{self.connection.bridge + 1 if self.connection else '?'}"

    # -- its life -----------------------------------------------------------------

    async def run(self, urls: Sequence[str], rng: random.Random) -> None:
        """Connect, read until the connection ends, reconnect after a backoff; until the fleet stops."""
        backoff = Backoff(RECONNECT_BASE, RECONNECT_CAP, rng)
        bridge = self.plan.home
        while not self.closing:
            connection = _Connection(self, bridge)
            try:
                await asyncio.wait_for(
                    ws_connect(lambda c=connection: c, self._url(urls[bridge]), websocket_handshake_timeout=CONNECT_TIMEOUT,
                               max_frame_size=1 << 20),
                    CONNECT_TIMEOUT + 1,
                )
            except (OSError, asyncio.TimeoutError, EOFError, ValueError, WSError):
                pass  # refused (the bridge is down) or timed out: try again after the backoff
            else:
                backoff.reset()
                await connection.gone.wait()
            if self.closing:
                return
            await asyncio.sleep(backoff.next())
            if not self.plan.sticky:
                bridge = (bridge + 1) % len(urls)

    def _url(self, base: str) -> str:
        if len(self.plan.instruments) == 1:
            return f"{base}/ws/market_data/{self.plan.instruments[0]}"
        return f"{base}/ws"

    def close(self) -> None:
        self.closing = True
        connection = self.connection
        if connection is not None and connection.transport is not None and not connection.transport.is_disconnected:
            connection.transport.send_close(WSCloseCode.OK)
            connection.transport.disconnect()


@dataclass(frozen=True, slots=True)
class Seen:
    """What `Fleet.collect` hands back for one socket."""

    plan: SocketPlan
    watch: Watch | None
    live: bool | None
    violations: list[str]
    counts: dict[str, int]  # bad messages by kind


class Fleet:
    """The sockets and the bus tap on a loop of their own thread; use as a context manager."""

    def __init__(self, plans: Sequence[SocketPlan], urls: Sequence[str], redis_url: str, verifier: Verifier, seed: int,
                 shard_channels: Sequence[str] | None = None) -> None:
        """`shard_channels`: in a Redis Cluster, the book channels the tap SSUBSCRIBEs (else it PSUBSCRIBEs `md:book:*`)."""
        self.verifier = verifier
        self.urls = tuple(urls)
        self.sockets = [Socket(p, self) for p in plans]
        self.tap = BusTap(redis_url, "md:book:*", verifier) if shard_channels is None else ShardTap(redis_url, shard_channels, verifier)
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-fleet", daemon=True)
        self._tasks: list[asyncio.Task[None]] = []

    def __enter__(self) -> Fleet:
        self._thread.start()

        async def start() -> None:
            for s in self.sockets:
                self._tasks.append(asyncio.create_task(s.run(self.urls, random.Random(self._rng.random()))))
            self._tasks.append(asyncio.create_task(self.tap.run(random.Random(self._rng.random()))))

        self.call(start)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for s in self.sockets:
                s.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0.05)  # let the close frames leave

        try:
            self.call(stop, timeout=15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run `fn` (plain or coroutine function) on the fleet's loop and return its result."""

        async def runner() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(runner(), self._loop)
        return future.result(timeout)

    # -- asked from the main thread --------------------------------------------------

    def mark(self, new_epoch: bool) -> tuple[float, dict[int, int | None]]:
        """Start a watch on every socket now (monotonic time returned) and say which bridge each one is on."""

        def start() -> tuple[float, dict[int, int | None]]:
            t0 = time.monotonic()
            homes: dict[int, int | None] = {}
            for s in self.sockets:
                before = {i: o.epoch for i, o in s.orders.items()} if new_epoch else None
                s.watch = Watch(t0, set(s.plan.instruments), epoch_before=before)
                homes[s.plan.index] = s.connection.bridge if s.connection is not None else None
            return t0, homes

        return self.call(start)

    def fresh_after(self, after_us: int) -> None:
        """Books published from `after_us` (wall µs) on count as fresh (the fault has happened by then)."""

        def apply() -> None:
            for s in self.sockets:
                if s.watch is not None:
                    s.watch.after_us = after_us

        self.call(apply)

    def unhealed(self) -> int:
        """Sockets whose watch has not seen fresh books on every instrument yet."""
        return self.call(lambda: sum(1 for s in self.sockets if s.watch is not None and s.watch.fresh_at is None))

    def unsettled(self, within: float) -> str | None:
        """Why the sockets are not all settled (connected, feed live, a book within `within` s), or None."""

        def check() -> str | None:
            now = time.monotonic()
            for s in self.sockets:
                if s.connection is None:
                    return f"{s.plan.label} is not connected"
                if s.live is not True:
                    return f"{s.plan.label}'s feed is {'unknown' if s.live is None else 'stale'}"
                if now - s.last_book_at > within:
                    return f"{s.plan.label} had no book for {now - s.last_book_at:.1f} s"
            return None

        return self.call(check)

    def collect(self) -> tuple[list[Seen], tuple[list[str], dict[str, int]]]:
        """Every socket's watch (ended) and its violations since the last collect; the bus tap's violations."""

        def take() -> tuple[list[Seen], list[str]]:
            seen = []
            for s in self.sockets:
                w = s.watch
                copy = None if w is None else replace(w, pending=set(w.pending), epoch_before=dict(w.epoch_before or {}) or None)
                seen.append(Seen(s.plan, copy, s.live, *s.violations.take()))
                s.watch = None
            return seen, self.tap.violations.take()

        return self.call(take)

    def totals(self) -> dict[str, Any]:
        """Counters for the report: books read by the sockets and by the tap, connections, the longest silence."""

        def count() -> dict[str, Any]:
            return {
                "socket_books": sum(s.books for s in self.sockets),
                "bus_books": self.tap.books,
                "connections": sum(s.connections for s in self.sockets),
                "longest_gap_s": round(max((s.longest_gap for s in self.sockets), default=0.0), 3),
            }

        return self.call(count)
