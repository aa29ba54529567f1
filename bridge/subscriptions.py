"""One Redis pub/sub connection and the channels subscribed on it.

`sync` makes the subscriptions equal to the channels the listener (the hub) wants:
it sends SUBSCRIBE / UNSUBSCRIBE on the connection, waits for Redis to confirm the
new ones, then fetches their last values (MGET of the book keys, LRANGE of the
whole trades lists the ingestor keeps; delta channels have none) so that nothing
published after the fetch can be missed. `listen` hands every payload to the listener as received, in
batches. `connect` replaces the connection and forgets what the old one had; the
bus (bridge.bus) decides when, and how long to wait between attempts.

The same class serves Redis Cluster (`SHARDED`): one instance per primary
(bridge.shards) sends SSUBSCRIBE / SUNSUBSCRIBE, one command per slot (the server
refuses a command whose channels span slots), reads `smessage`, and fetches last
values with a GET per book key (MGET would span slots). A `sunsubscribe` the server
pushes for a channel still subscribed (its slot moved away) goes to `dropped`; an
error reply (MOVED: the slot is not this node's) fails the subscriptions awaiting
confirmation, so the sync raises and the owner routes them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio.client import PubSub
from redis.exceptions import ResponseError

from marketdata.logs import Throttled
from marketdata.slots import key_slot

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

    def resubscribing(self, channels: Collection[bytes] | None = None) -> None:
        """These channels (None: every one) lost their subscription: they will be subscribed and fetched again."""


@dataclass(frozen=True, slots=True)
class Mode:
    """Classic pub/sub or sharded (Redis Cluster): the PubSub methods and the message types of each."""

    subscribe: str
    unsubscribe: str
    message: str  # a payload
    confirmed: str  # the reply to a subscribe
    dropped: str  # the reply to an unsubscribe, or the server's word that it dropped a channel
    per_slot: bool  # one command per slot


CLASSIC = Mode("subscribe", "unsubscribe", "message", "subscribe", "unsubscribe", per_slot=False)
SHARDED = Mode("ssubscribe", "sunsubscribe", "smessage", "ssubscribe", "sunsubscribe", per_slot=True)


class Subscriptions:
    """`pubsub` carries the subscriptions, `redis` the fetches of last values; channels whose
    name starts with `book_prefix` (`{prefix}:book:`) are books, `{prefix}:delta:` deltas,
    the others trades. `dropped` hears the channels the server unsubscribed by itself."""

    def __init__(
        self,
        pubsub: PubSub,
        redis: Any,  # redis.asyncio.Redis, or a RedisCluster in SHARDED mode
        listener: ChannelListener,
        book_prefix: bytes,
        mode: Mode = CLASSIC,
        dropped: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self._pubsub = pubsub
        self._redis = redis
        self._listener = listener
        self._book_prefix = book_prefix
        self._delta_prefix = book_prefix[: -len(b"book:")] + b"delta:"
        self._mode = mode
        self._dropped = dropped
        self._refused_log = Throttled(log)
        self._subscribed: set[bytes] = set()  # channels SUBSCRIBE was sent for on the current connection
        self._confirming: dict[bytes, asyncio.Future[BaseException | None]] = {}  # a result: the subscribe was refused
        self._leaving: Counter[bytes] = Counter()  # unsubscribes sent and not yet answered, per channel
        self._generation = 0  # counts connections; a sync begun on an older one gives up
        self._lock = asyncio.Lock()  # one user of the PubSub connection's commands at a time

    @property
    def count(self) -> int:
        """Channels subscribed on the current connection."""
        return len(self._subscribed)

    @property
    def subscribed(self) -> frozenset[bytes]:
        """The channels subscribed on the current connection."""
        return frozenset(self._subscribed)

    async def connect(self) -> None:
        """Open a new connection in place of the old one, which is forgotten with what it had subscribed."""
        async with self._lock:
            await self._pubsub.aclose()
            self._generation += 1
            self._subscribed.clear()
            self._leaving.clear()
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
        is_message, is_confirmed, is_dropped = self._mode.message, self._mode.confirmed, self._mode.dropped
        while True:
            batch: list[tuple[bytes, bytes]] = []
            gone: list[bytes] = []
            try:
                m = await get(timeout=None)
                while m is not None:
                    kind = m["type"]
                    if kind == is_message:
                        batch.append((m["channel"], m["data"]))
                        if len(batch) >= MAX_BATCH:
                            break
                    elif kind == is_confirmed:
                        fut = confirming.pop(m["channel"], None)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                    elif kind == is_dropped:
                        self._unsubscribed(m["channel"], gone)
                    m = await get(timeout=0.0) if await pending() else None
            except ResponseError as exc:  # an error reply; the connection itself is fine
                self._refused(exc)
            if batch:
                listener.deliver_batch(batch)
            if gone and self._dropped is not None:
                self._dropped(gone)

    def _unsubscribed(self, channel: bytes, gone: list[bytes]) -> None:
        """The answer to an unsubscribe we sent, or the server's word that it dropped `channel` (added to `gone`)."""
        leaving = self._leaving
        if leaving[channel] > 0:
            leaving[channel] -= 1
            if not leaving[channel]:
                del leaving[channel]
        elif channel in self._subscribed and self._dropped is not None:
            self._subscribed.discard(channel)
            gone.append(channel)

    def _refused(self, exc: ResponseError) -> None:
        """An error reply to a subscribe: fail every one awaiting confirmation (the sync raises it)."""
        self._refused_log(logging.WARNING, "redis refused a subscription (%s)", exc)
        for fut in self._confirming.values():
            if not fut.done():
                fut.set_result(exc)
        self._confirming.clear()

    async def sync(self) -> None:
        """Make the subscriptions match what the listener wants, then fetch last values for the new ones.

        Raises Redis's errors, and asyncio.TimeoutError when Redis does not confirm in time;
        what was not confirmed and fetched is subscribed and fetched again by the next sync.
        """
        wanted = self._listener.wanted()
        waits: list[asyncio.Future[BaseException | None]] = []
        async with self._lock:
            generation = self._generation
            drop = [c for c in self._subscribed if c not in wanted]
            add = [c for c in wanted if c not in self._subscribed]
            # Left by its last socket and wanted again before this sync: still subscribed, its topic new.
            again = [c for c in self._listener.unprimed() if c in self._subscribed and c not in drop]
            if drop:
                self._subscribed.difference_update(drop)
                self._leaving.update(drop)
                for group in self._groups(drop):
                    await getattr(self._pubsub, self._mode.unsubscribe)(*group)
            if add:
                loop = asyncio.get_running_loop()
                for c in add:
                    fut = self._confirming.get(c)
                    if fut is None or fut.done():
                        fut = self._confirming[c] = loop.create_future()
                    waits.append(fut)
                self._subscribed.update(add)
                for group in self._groups(add):
                    await getattr(self._pubsub, self._mode.subscribe)(*group)
        if drop or add:
            log.debug("subscriptions: +%d -%d, now %d", len(add), len(drop), len(self._subscribed))
        if again and generation == self._generation:
            await self._fetch(again)
        if not add:
            return
        try:
            # Fetch last values only once Redis confirms: nothing published after the fetch is missed.
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation.
            done, unconfirmed = await asyncio.wait(waits, timeout=CONFIRM_TIMEOUT)
            if unconfirmed:
                raise asyncio.TimeoutError(f"redis did not confirm {len(unconfirmed)} subscriptions in {CONFIRM_TIMEOUT:.0f} s")
            for fut in done:
                if fut.cancelled():
                    raise ConnectionError("the pub/sub connection closed before redis confirmed")
                if (refused := fut.result()) is not None:
                    raise refused
            if generation == self._generation:
                await self._fetch(add)
        except BaseException:
            if generation == self._generation:
                self._subscribed.difference_update(add)  # subscribe (idempotent) and fetch again next time
            raise

    def _groups(self, channels: list[bytes]) -> Iterable[list[bytes]]:
        """The commands' channel lists: all at once, or one list per slot (SHARDED)."""
        if not self._mode.per_slot:
            return (channels,)
        by_slot: dict[int, list[bytes]] = {}
        for c in channels:
            by_slot.setdefault(key_slot(c), []).append(c)
        return by_slot.values()

    async def _fetch(self, channels: list[bytes]) -> None:
        """The last book of new book channels, the recent trades of new trades channels."""
        books = [c for c in channels if c.startswith(self._book_prefix)]
        trades = [c for c in channels if not c.startswith((self._book_prefix, self._delta_prefix))]
        if not books and not trades:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            if books and not self._mode.per_slot:
                pipe.mget(books)  # a channel's last-value key has the channel's name
            else:
                for channel in books:
                    pipe.get(channel)  # a cluster pipeline sends each to its slot's node
            for channel in trades:
                # The whole list: the ingestor trims it to its --trades-history, the one bound there is.
                pipe.lrange(channel, 0, -1)
            replies = await pipe.execute()
        if books and not self._mode.per_slot:
            replies = replies[0] + replies[1:]
        wanted = self._listener.wanted()
        for channel, value in zip(books, replies):
            if channel in wanted:
                self._listener.fetched_book(channel, value)
        for channel, history in zip(trades, replies[len(books):]):
            if channel in wanted:
                self._listener.fetched_trades(channel, history)
