"""The bridge's Redis side: one pub/sub connection, last values, the instrument list, the heartbeat.

`Bus` keeps the subscriptions equal to the channels its listener (the hub) wants:
after a change it sends SUBSCRIBE / UNSUBSCRIBE on the one PubSub connection,
waits for Redis to confirm the new ones, then fetches their last values (MGET of
the book keys, LRANGE of the trades lists) so that nothing published after the
fetch can be missed. The reader task hands every payload to the listener as
received. If the connection drops, the reader reconnects with capped exponential
backoff and jitter, resubscribes everything and fetches the last values again;
meanwhile the feed state says so, and sockets stay open.

The feed state combines Redis reachability (polled about once a second with the
heartbeat key) and the pub/sub connection with the age of the ingestor's heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from bridge import protocol
from bridge.metrics import Stats
from marketdata.errors import MessageError, UnknownInstrument
from marketdata.logs import Throttled
from marketdata.schema import TRADES_HISTORY, Keys, decode_instruments, heartbeat_ts
from marketdata.settings import BridgeSettings

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 5.0  # seconds Redis has to confirm a SUBSCRIBE
INSTRUMENTS_EVERY = 10.0  # seconds between refreshes of the instrument list
MISS_EVERY = 1.0  # at most one refresh a second for unknown ids
BACKOFF_BASE = 0.1
BACKOFF_CAP = 5.0
REDIS_ERRORS = (RedisError, OSError)
MAX_BATCH = 512  # messages read before the listener gets them, at most


@dataclass(frozen=True, slots=True)
class Feed:
    """Whether the feed is live, since when (µs since the epoch), and why not."""

    live: bool
    since: int
    reason: str


class Listener(Protocol):
    """What the bus tells its owner (bridge.hub.Hub)."""

    def wanted(self) -> Collection[bytes]:
        """The channels some local socket wants now."""

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """(channel, payload) pairs as received, oldest first: everything that had arrived when the bus read."""

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        """The last value of a book channel just subscribed (None: no key)."""

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        """The recent trades of a trades channel just subscribed, newest first as Redis keeps them."""

    def resubscribing(self) -> None:
        """The pub/sub connection was replaced: every channel will be subscribed and fetched again."""

    def feed_changed(self, feed: Feed) -> None:
        """The feed state changed."""


def feed_reason(redis_ok: bool, bus_up: bool, heartbeat: bytes | None, now_us: int, stale_after: float) -> str | None:
    """Why the feed is not live, or None when it is."""
    if not redis_ok:
        return "redis unreachable"
    if not bus_up:
        return "redis pub/sub not connected"
    if heartbeat is None:
        return "no heartbeat from the ingestor"
    try:
        ts = heartbeat_ts(heartbeat)
    except MessageError:
        return None  # unreadable, but the key lives only while the ingestor refreshes it
    if now_us - ts > stale_after * 1_000_000:
        return "heartbeat stale"
    return None


def backoff(attempt: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds before reconnect attempt `attempt` (0-based): capped exponential, half of it jittered."""
    ceiling = min(cap, base * 2 ** min(attempt, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Bus:
    """Redis for one bridge; use as `async with Bus(settings, stats, listener) as bus`.

    `redis` replaces the two clients made from settings.redis_url (tests pass a
    fake); `rng` jitters the backoff; `clock` gives wall time in seconds.
    """

    def __init__(
        self,
        settings: BridgeSettings,
        stats: Stats,
        listener: Listener,
        *,
        redis: Redis | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._stats = stats
        self._listener = listener
        self._keys = Keys(settings.prefix)
        self._book_prefix = self._keys.book("").encode()
        self._given = redis
        self._rng = rng or random.Random()
        self._clock = clock
        self._subscribed: set[bytes] = set()  # channels SUBSCRIBE was sent for on the current connection
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        self._generation = 0  # counts pub/sub connections; a sync begun on an older one gives up
        self._instruments: frozenset[str] = frozenset()
        self._instruments_json = b"[]"
        self._instruments_at = -math.inf
        self._redis_ok = False
        self._up = False
        self._connected_once = False
        self._heartbeat: bytes | None = None
        self._starting = False
        self.feed = Feed(False, self._now_us(), "starting")
        self._bad = Throttled(log)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifetime ----------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        self._loop = asyncio.get_running_loop()
        url = self.settings.redis_url
        if self._given is not None:
            self._redis = self._pubsub_client = self._given
        else:
            # Commands retry once (a pooled connection may be dead after a Redis restart); the
            # pub/sub connection never retries by itself: losing it is this class's business.
            # RESP2 for pub/sub: its push parsing is the faster one in redis-py.
            retry_once = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 1)
            self._redis = Redis.from_url(url, retry=retry_once, socket_connect_timeout=2, socket_timeout=5)
            self._pubsub_client = Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2, protocol=2)
        self._pubsub: PubSub = self._pubsub_client.pubsub()
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()  # one user of the PubSub connection's commands at a time
        try:
            self._starting = True  # one feed state after the first poll and connect, not one per step
            await self._poll_once()
            if self._redis_ok:
                try:
                    await self._connect()  # start live when Redis is there; else the reader keeps trying
                except REDIS_ERRORS:
                    pass
            self._starting = False
            self._update_feed()
            for name, job in (("read", self._read), ("sync", self._sync), ("poll", self._poll)):
                task = asyncio.create_task(job(), name=f"bridge-bus-{name}")
                task.add_done_callback(report_crash)
                self._tasks.append(task)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        await stop(self._tasks)
        self._tasks.clear()
        for fut in self._confirming.values():
            fut.cancel()
        await self._pubsub.aclose()
        if self._given is None:
            await self._pubsub_client.aclose()
            await self._redis.aclose()

    # -- what the hub asks -----------------------------------------------------------

    def changed(self) -> None:
        """The set of wanted channels changed; subscriptions follow shortly."""
        self._dirty.set()

    @property
    def up(self) -> bool:
        return self._up

    @property
    def subscriptions(self) -> int:
        return len(self._subscribed)

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)

    async def lookup(self, instrument: str) -> None:
        """Return if `instrument` is listed; raise UnknownInstrument if not (after a refresh, at most one a second)."""
        if instrument in self._instruments:
            return
        if len(instrument) <= protocol.MAX_ID_LENGTH and self._loop.time() - self._instruments_at >= MISS_EVERY:
            try:
                await self._load_instruments()
            except REDIS_ERRORS as exc:
                log.debug("instrument list not refreshed: %s", exc)
            if instrument in self._instruments:
                return
        raise UnknownInstrument(instrument)

    @property
    def instruments_json(self) -> bytes:
        """The instrument list as the ingestor published it (a JSON array)."""
        return self._instruments_json

    async def refresh_instruments(self) -> None:
        """Reload the list now unless it was loaded within the last second."""
        if self._loop.time() - self._instruments_at >= MISS_EVERY:
            await self._load_instruments()

    # -- the pub/sub connection ----------------------------------------------------------

    async def _read(self) -> None:
        attempt = 0
        while True:
            if not self._up:
                try:
                    await self._connect()
                except REDIS_ERRORS as exc:
                    self._set_up(False)
                    delay = backoff(attempt, self._rng)
                    attempt += 1
                    log.warning("redis pub/sub at %s unreachable (%s); retrying in %.1f s", self._where(), exc, delay)
                    await asyncio.sleep(delay)
                    continue
            attempt = 1
            try:
                await self._listen()
            except REDIS_ERRORS as exc:
                self._set_up(False)
                delay = backoff(0, self._rng)
                log.warning("redis pub/sub connection lost (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        async with self._lock:
            await self._pubsub.aclose()  # forget the old connection and what it had subscribed
            self._generation += 1
            self._subscribed.clear()
            for fut in self._confirming.values():
                if not fut.done():
                    fut.set_result(None)  # wakes a sync waiting on the old connection; it sees the new generation
            self._confirming.clear()
            self._listener.resubscribing()
            await self._pubsub.connect()
        if self._connected_once:
            self._stats.redis_reconnects += 1
            log.info("redis pub/sub reconnected; resubscribing %d channels", len(self._listener.wanted()))
        self._connected_once = True
        self._set_up(True)
        self._dirty.set()

    async def _listen(self) -> None:
        """Read messages in batches: all that has arrived, up to MAX_BATCH, goes to the listener at once.

        Under load the bridge reads less often than Redis publishes; a batch then holds
        several books of one channel, and the listener sends only the newest (conflation
        at the bus). The backlog thus stays in this process, bounded, instead of piling
        up unconflated in Redis's output buffer for this connection.
        """
        get = self._pubsub.get_message
        # A get with timeout 0 that finds nothing costs ~90 µs (it arms a timeout); asking
        # the connection whether a reply is buffered costs ~5.
        pending = self._pubsub.connection.can_read  # type: ignore[union-attr]
        listener = self._listener
        confirming = self._confirming
        while True:
            m = await get(timeout=None)
            batch: list[tuple[bytes, bytes]] = []
            while m is not None:
                kind = m["type"]
                if kind == "message":
                    batch.append((m["channel"], m["data"]))
                    if len(batch) >= MAX_BATCH:
                        break
                elif kind == "subscribe":
                    fut = confirming.pop(m["channel"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                m = await get(timeout=0.0) if await pending() else None
            if batch:
                listener.deliver_batch(batch)

    async def _sync(self) -> None:
        """Make the subscriptions match what the listener wants, then fetch last values for the new ones."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self._up:
                continue  # the reader sets _dirty again once it has reconnected
            try:
                await self._sync_once()
            except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
                log.warning("could not update redis subscriptions (%s); will retry", exc)
                if self._up:
                    await asyncio.sleep(backoff(0, self._rng))
                    self._dirty.set()

    async def _sync_once(self) -> None:
        wanted = self._listener.wanted()
        waits: list[asyncio.Future[None]] = []
        async with self._lock:
            generation = self._generation
            drop = [c for c in self._subscribed if c not in wanted]
            add = [c for c in wanted if c not in self._subscribed]
            if drop:
                await self._pubsub.unsubscribe(*drop)
                self._subscribed.difference_update(drop)
            if add:
                for c in add:
                    fut = self._confirming.get(c)
                    if fut is None or fut.done():
                        fut = self._confirming[c] = self._loop.create_future()
                    waits.append(fut)
                await self._pubsub.subscribe(*add)
                self._subscribed.update(add)
        if drop or add:
            log.debug("subscriptions: +%d -%d, now %d", len(add), len(drop), len(self._subscribed))
        if not add:
            return
        try:
            # Fetch last values only once Redis confirms: nothing published after the fetch is missed.
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation.
            _, unconfirmed = await asyncio.wait(waits, timeout=CONFIRM_TIMEOUT)
            if unconfirmed:
                raise asyncio.TimeoutError(f"redis did not confirm {len(unconfirmed)} subscriptions in {CONFIRM_TIMEOUT:.0f} s")
            if generation == self._generation:
                await self._fetch(add)
        except BaseException:
            if generation == self._generation:
                self._subscribed.difference_update(add)  # subscribe (idempotent) and fetch again next time
            raise

    async def _fetch(self, channels: list[bytes]) -> None:
        """The last book of new book channels, the recent trades of new trades channels."""
        books = [c for c in channels if c.startswith(self._book_prefix)]
        trades = [c for c in channels if not c.startswith(self._book_prefix)]
        if books:
            values = await self._redis.mget(books)  # a channel's last-value key has the channel's name
            wanted = self._listener.wanted()
            for channel, value in zip(books, values):
                if channel in wanted:
                    self._listener.fetched_book(channel, value)
        if trades:
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel in trades:
                    pipe.lrange(channel, 0, TRADES_HISTORY - 1)
                histories = await pipe.execute()
            wanted = self._listener.wanted()
            for channel, history in zip(trades, histories):
                if channel in wanted:
                    self._listener.fetched_trades(channel, history)

    # -- polling: heartbeat and instruments --------------------------------------------

    async def _poll(self) -> None:
        interval = min(1.0, self.settings.stale_after / 2)
        while True:
            await asyncio.sleep(interval)
            await self._poll_once()

    async def _poll_once(self) -> None:
        try:
            heartbeat = await self._redis.get(self._keys.heartbeat)
            if self._loop.time() - self._instruments_at >= INSTRUMENTS_EVERY:
                await self._load_instruments()
        except REDIS_ERRORS as exc:
            if self._redis_ok or self._starting:
                log.warning("redis at %s unreachable: %s", self._where(), exc)
            self._redis_ok = False
        else:
            if not self._redis_ok:
                log.info("redis at %s reachable", self._where())
            self._redis_ok = True
            self._heartbeat = heartbeat
        self._update_feed()

    async def _load_instruments(self) -> None:
        self._instruments_at = self._loop.time()
        raw = await self._redis.get(self._keys.instruments)
        if raw is None or raw == self._instruments_json:
            return  # none published yet (or Redis restarted empty): keep what we had
        try:
            listed = decode_instruments(raw)
        except MessageError as exc:
            self._bad(logging.WARNING, "ignored a bad instrument list in %s: %s", self._keys.instruments, exc)
            return
        self._instruments = frozenset(i.id for i in listed)
        self._instruments_json = raw
        log.info("instruments: %s", ", ".join(i.id for i in listed) or "none")

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._update_feed()

    def _update_feed(self) -> None:
        if self._starting:
            return
        now_us = self._now_us()
        reason = feed_reason(self._redis_ok, self._up, self._heartbeat, now_us, self.settings.stale_after)
        live = reason is None
        reason = reason or "live"
        if live == self.feed.live and reason == self.feed.reason:
            return
        was_live = self.feed.live
        self.feed = Feed(live, now_us, reason)
        if live:
            log.info("feed live")
        else:
            log.log(logging.WARNING if was_live else logging.INFO, "feed not live: %s", reason)
        self._listener.feed_changed(self.feed)

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def _where(self) -> str:
        return self.settings.redis_url.rsplit("@", 1)[-1]  # never log a password


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
