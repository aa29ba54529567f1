"""The bridge's one Redis pub/sub connection and the channels subscribed on it.

`sync` makes the subscriptions equal to the channels the listener (the hub) wants:
it sends SUBSCRIBE / UNSUBSCRIBE on the connection, waits for Redis to confirm the
new ones, then fetches their last values (MGET of the book keys, LRANGE of the
whole trades lists the ingestor keeps; delta channels have none) so that nothing
published after the fetch can be missed. `listen` hands every payload to the listener as received, in
batches. `connect` replaces the connection and forgets what the old one had; the
bus (bridge.bus) decides when, and how long to wait between attempts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 5.0  # seconds Redis has to confirm a SUBSCRIBE
MAX_BATCH = 512  # messages read before the listener gets them, at most


class ChannelListener(Protocol):
    """What the subscriptions tell their owner about channels (bridge.hub.Hub)."""

    def wanted(self) -> Collection[bytes]:
        """The channels some local socket wants now."""

    def unprimed(self) -> Collection[bytes]:
        """Wanted book and trades channels whose last value was not fetched since their topic was made."""

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """(channel, payload) pairs as received, oldest first: everything that had arrived when the bus read."""

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        """The last value of a book channel just subscribed (None: no key)."""

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        """The recent trades of a trades channel just subscribed: the whole list, newest first as Redis keeps it."""

    def resubscribing(self) -> None:
        """The pub/sub connection was replaced: every channel will be subscribed and fetched again."""


class Subscriptions:
    """`pubsub` carries the subscriptions, `redis` the fetches of last values; channels whose
    name starts with `book_prefix` (`{prefix}:book:`) are books, `{prefix}:delta:` deltas,
    the others trades."""

    def __init__(self, pubsub: PubSub, redis: Redis, listener: ChannelListener, book_prefix: bytes) -> None:
        self._pubsub = pubsub
        self._redis = redis
        self._listener = listener
        self._book_prefix = book_prefix
        self._delta_prefix = book_prefix[: -len(b"book:")] + b"delta:"
        self._subscribed: set[bytes] = set()  # channels SUBSCRIBE was sent for on the current connection
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        self._generation = 0  # counts connections; a sync begun on an older one gives up
        self._lock = asyncio.Lock()  # one user of the PubSub connection's commands at a time

    @property
    def count(self) -> int:
        """Channels subscribed on the current connection."""
        return len(self._subscribed)

    async def connect(self) -> None:
        """Open a new connection in place of the old one, which is forgotten with what it had subscribed."""
        async with self._lock:
            await self._pubsub.aclose()
            self._generation += 1
            self._subscribed.clear()
            for fut in self._confirming.values():
                if not fut.done():
                    fut.set_result(None)  # wakes a sync waiting on the old connection; it sees the new generation
            self._confirming.clear()
            self._listener.resubscribing()
            await self._pubsub.connect()

    async def aclose(self) -> None:
        for fut in self._confirming.values():
            fut.cancel()
        await self._pubsub.aclose()

    async def listen(self) -> None:
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

    async def sync(self) -> None:
        """Make the subscriptions match what the listener wants, then fetch last values for the new ones.

        Raises Redis's errors, and asyncio.TimeoutError when Redis does not confirm in time;
        what was not confirmed and fetched is subscribed and fetched again by the next sync.
        """
        wanted = self._listener.wanted()
        waits: list[asyncio.Future[None]] = []
        async with self._lock:
            generation = self._generation
            drop = [c for c in self._subscribed if c not in wanted]
            add = [c for c in wanted if c not in self._subscribed]
            # Left by its last socket and wanted again before this sync: still subscribed, its topic new.
            again = [c for c in self._listener.unprimed() if c in self._subscribed and c not in drop]
            if drop:
                await self._pubsub.unsubscribe(*drop)
                self._subscribed.difference_update(drop)
            if add:
                loop = asyncio.get_running_loop()
                for c in add:
                    fut = self._confirming.get(c)
                    if fut is None or fut.done():
                        fut = self._confirming[c] = loop.create_future()
                    waits.append(fut)
                await self._pubsub.subscribe(*add)
                self._subscribed.update(add)
        if drop or add:
            log.debug("subscriptions: +%d -%d, now %d", len(add), len(drop), len(self._subscribed))
        if again and generation == self._generation:
            await self._fetch(again)
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
        trades = [c for c in channels if not c.startswith((self._book_prefix, self._delta_prefix))]
        if books:
            values = await self._redis.mget(books)  # a channel's last-value key has the channel's name
            wanted = self._listener.wanted()
            for channel, value in zip(books, values):
                if channel in wanted:
                    self._listener.fetched_book(channel, value)
        if trades:
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel in trades:
                    # The whole list: the ingestor trims it to its --trades-history, the one bound there is.
                    pipe.lrange(channel, 0, -1)
                histories = await pipe.execute()
            wanted = self._listener.wanted()
            for channel, history in zip(trades, histories):
                if channel in wanted:
                    self._listener.fetched_trades(channel, history)
