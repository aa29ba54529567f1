"""The bridge's Redis side: one pub/sub connection kept alive, the feed state, the instrument list.

`Bus` runs three tasks. The reader keeps the pub/sub connection (bridge.subscriptions)
up: if it drops, it reconnects with capped exponential backoff and jitter, resubscribes
everything and fetches the last values again; meanwhile the feed state says so, and
sockets stay open. The syncer makes the subscriptions follow what the listener (the
hub) wants whenever that changes. The poller reads the ingestor's heartbeat about once
a second (bridge.feed_state) and reloads the instrument list (bridge.instrument_list)
every few seconds. Verified books arriving also count as news of the feed
(`books_flowing`): a feed that comes back is live at once, not at the next poll.

With settings.redis_cluster the commands go through a cluster client (RedisCluster,
which routes each key to its slot's primary) and the subscriptions are sharded
(bridge.shards: a connection per primary, each healing by itself when its primary
dies or a slot moves); the feed state is the same, and one shard's outage alone does
not make the feed down while the heartbeat and the other shards' books come.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from bridge import control
from bridge.feed_state import Feed, FeedState
from bridge.instrument_list import InstrumentList
from bridge.metrics import Stats
from bridge.shards import Shards
from bridge.subscriptions import ChannelListener, Subscriptions
from bridge.tasks import spawn, stop
from marketdata.backoff import Backoff
from marketdata.clock import now_us
from marketdata.errors import UnknownInstrument
from marketdata.instruments import Instrument
from marketdata.logs import redact
from marketdata.schema import Keys
from marketdata.settings import BridgeSettings
from marketdata.slots import node_url

log = logging.getLogger(__name__)

INSTRUMENTS_EVERY = 10.0  # seconds between refreshes of the instrument list
MISS_EVERY = 1.0  # at most one refresh a second for unknown ids
BACKOFF_BASE = 0.1  # seconds before the first reconnect attempt, half of it jittered
BACKOFF_CAP = 5.0
ROUTES_EVERY = 5.0  # cluster: seconds between reads of the slot map that check every channel is on its slot's primary
SYNC_RETRY_CAP = 1.0  # cluster: at most a second between syncs that fail (a dead primary's channels wait for its successor)
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


class Listener(ChannelListener, Protocol):
    """What the bus tells its owner (bridge.hub.Hub): the channel news, and the feed state."""

    def feed_changed(self, feed: Feed) -> None:
        """The feed state changed."""


@dataclass(frozen=True, slots=True)
class Wiring:
    """How a Bus reaches the world; tests pass a fake Redis, a seeded rng and a fixed clock.

    `redis` replaces the two clients made from settings.redis_url (a RedisCluster or
    its fake with settings.redis_cluster); `open_pubsub(host, port)` replaces the
    pub/sub clients of a cluster's primaries; `rng` jitters the backoff; `clock` gives
    wall time in µs since the epoch.
    """

    redis: Any = None
    open_pubsub: Callable[[str, int], PubSub] | None = None
    rng: random.Random | None = None
    clock: Callable[[], int] = now_us


def reconnect_backoff(rng: random.Random) -> Backoff:
    """The delays between reconnect attempts: 0.05-0.1 s first, doubling, at most 5 s."""
    return Backoff(BACKOFF_BASE, BACKOFF_CAP, rng)


class Bus:
    """Redis for one bridge; use as `async with Bus(settings, stats, listener) as bus`."""

    def __init__(self, settings: BridgeSettings, stats: Stats, listener: Listener, wiring: Wiring | None = None) -> None:
        wiring = wiring or Wiring()
        self.settings = settings
        self._stats = stats
        self._listener = listener
        self._keys = Keys(settings.prefix, cluster=settings.redis_cluster)
        self._given = wiring.redis
        self._open_pubsub = wiring.open_pubsub or self._node_pubsub
        self._rng = wiring.rng or random.Random()
        self._reconnect = reconnect_backoff(self._rng)
        # Classic: a first attempt's delay between failed syncs, every time; cluster: growing to a second.
        self._sync_retry = Backoff(BACKOFF_BASE, SYNC_RETRY_CAP if settings.redis_cluster else BACKOFF_BASE, self._rng)
        self._clock = wiring.clock
        self._state = FeedState(settings.stale_after, wiring.clock, listener.feed_changed)
        self._connected_once = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifetime ----------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        url = self.settings.redis_url
        cluster = self.settings.redis_cluster
        self._pubsub_client: Redis | None = None
        if self._given is not None:
            self._redis = self._given
            self._pubsub_client = None if cluster else self._given
        else:
            # Commands retry once (a pooled connection may be dead after a Redis restart); the
            # pub/sub connection never retries by itself: losing it is this class's business.
            # RESP2 for pub/sub: its push parsing is the faster one in redis-py.
            retry_once = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 1)
            client = RedisCluster if cluster else Redis
            self._redis = client.from_url(url, retry=retry_once, socket_connect_timeout=2, socket_timeout=5)
            if not cluster:
                self._pubsub_client = Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2, protocol=2)
        book_prefix = Keys(self.settings.prefix).book("").encode()  # `md:book:`, in both forms of the names
        self._subs: Subscriptions | Shards
        if self._pubsub_client is not None:
            self._subs = Subscriptions(self._pubsub_client.pubsub(), self._redis, self._listener, book_prefix)
        else:
            self._subs = Shards(self._redis, self._listener, book_prefix, self._open_pubsub, self.changed)
        self.instruments = InstrumentList(self._redis, self._keys.instruments, asyncio.get_running_loop().time)
        self._dirty = asyncio.Event()
        try:
            self._state.holding = True  # one feed state after the first poll and connect, not one per step
            await self._poll_once()
            if self._state.redis_ok:
                try:
                    await self._connect()  # start live when Redis is there; else the reader keeps trying
                except REDIS_ERRORS:
                    pass
            self._state.holding = False
            self._state.update()
            for name, job in (("read", self._read), ("sync", self._sync), ("poll", self._poll)):
                self._tasks.append(spawn(job(), f"bridge-bus-{name}"))
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        await stop(self._tasks)
        self._tasks.clear()
        await self._subs.aclose()
        if self._given is None:
            if self._pubsub_client is not None:
                await self._pubsub_client.aclose()
            await self._redis.aclose()

    def _node_pubsub(self, host: str, port: int) -> PubSub:
        """A pub/sub client of one cluster node, with the credentials and options of settings.redis_url."""
        return Redis.from_url(node_url(self.settings.redis_url, host, port), retry=Retry(NoBackoff(), 0), socket_connect_timeout=2, protocol=2).pubsub()

    # -- what the hub asks -----------------------------------------------------------

    def changed(self) -> None:
        """The set of wanted channels changed; subscriptions follow shortly."""
        self._dirty.set()

    @property
    def feed(self) -> Feed:
        return self._state.feed

    @property
    def up(self) -> bool:
        return self._state.bus_up

    @property
    def subscriptions(self) -> int:
        return self._subs.count

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)

    async def last_value(self, channel: bytes) -> bytes | None:
        """The last-value key of a book channel (it has the channel's name): one GET."""
        return await self._redis.get(channel)

    def instrument(self, instrument_id: str) -> Instrument | None:
        """The listed instrument of that id (its tick and lot sizes verify its books), None if not listed."""
        return self.instruments.get(instrument_id)

    def books_flowing(self) -> None:
        """Verified live books arrive: the feed is live now, whatever the last poll saw (bridge.feed_state)."""
        self._state.books_arrived()

    async def lookup(self, instrument: str) -> None:
        """Return if `instrument` is listed; raise UnknownInstrument if not (after a refresh, at most one a second)."""
        if instrument in self.instruments:
            return
        if len(instrument) <= control.MAX_ID_LENGTH and self.instruments.due(MISS_EVERY):
            try:
                await self.instruments.load()
            except REDIS_ERRORS as exc:
                log.debug("instrument list not refreshed: %s", exc)
            if instrument in self.instruments:
                return
        raise UnknownInstrument(instrument)

    @property
    def instruments_json(self) -> bytes:
        """The instrument list as the ingestor published it (a JSON array)."""
        return self.instruments.json

    async def refresh_instruments(self) -> None:
        """Reload the list now unless it was loaded within the last second."""
        if self.instruments.due(MISS_EVERY):
            await self.instruments.load()

    # -- the tasks -------------------------------------------------------------------

    async def _read(self) -> None:
        """Keep the pub/sub connection up and read it."""
        backoff = self._reconnect
        while True:
            if not self._state.bus_up:
                try:
                    await self._connect()
                except REDIS_ERRORS as exc:
                    self._state.connected(False)
                    delay = backoff.next()
                    log.warning("redis pub/sub at %s unreachable (%s); retrying in %.1f s", redact(self.settings.redis_url), exc, delay)
                    await asyncio.sleep(delay)
                    continue
            backoff.reset()
            try:
                await self._subs.listen()
            except REDIS_ERRORS as exc:
                self._state.connected(False)
                delay = backoff.next()
                log.warning("redis pub/sub connection lost (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        await self._subs.connect()
        if self._connected_once:
            self._stats.redis_reconnects += 1
            log.info("redis pub/sub reconnected; resubscribing %d channels", len(self._listener.wanted()))
        self._connected_once = True
        self._state.connected(True)
        self._dirty.set()

    async def _sync(self) -> None:
        """Make the subscriptions follow what the listener wants, each time that changes."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self._state.bus_up:
                continue  # the reader sets _dirty again once it has reconnected
            try:
                await self._subs.sync()
            except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
                log.warning("could not update redis subscriptions (%s); will retry", exc)
                if self._state.bus_up:
                    await asyncio.sleep(self._sync_retry.next())
                    self._dirty.set()
            else:
                self._sync_retry.reset()

    async def _poll(self) -> None:
        interval = min(1.0, self.settings.stale_after / 2)
        loop = asyncio.get_running_loop()
        routes_checked = loop.time()
        while True:
            await asyncio.sleep(interval)
            await self._poll_once()
            if isinstance(self._subs, Shards) and loop.time() - routes_checked >= ROUTES_EVERY:
                routes_checked = loop.time()
                try:
                    await self._subs.recheck()
                except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
                    log.debug("slot map not read again: %s", exc)

    async def _poll_once(self) -> None:
        """Read the heartbeat (and the instrument list when due); the feed state hears either way."""
        state = self._state
        asked = self._clock()  # books that arrive after this moment are newer news than the answer
        try:
            heartbeat = await self._redis.get(self._keys.heartbeat)
            if self.instruments.due(INSTRUMENTS_EVERY):
                await self.instruments.load()
        except REDIS_ERRORS as exc:
            if state.redis_ok or state.holding:
                log.warning("redis at %s unreachable: %s", redact(self.settings.redis_url), exc)
            state.unreachable()
        else:
            if not state.redis_ok:
                log.info("redis at %s reachable", redact(self.settings.redis_url))
            state.polled(heartbeat, asked)
