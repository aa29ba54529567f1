"""The hub: one Redis subscription per channel some local socket wants, fanned out to them.

Narrow interface: `attach`/`detach` a socket, `want`/`unwant` an instrument for
it, and `deliver` a payload that arrived on a channel. The hub owns the local
sockets and, through its `Bus` (bridge.bus), the Redis subscriptions: the first
socket that wants a channel makes the bus subscribe, the last one to leave makes
it unsubscribe, whatever the number of sockets in between. What arrives goes
through bridge.fanout: verified, ordered by (epoch, seq), kept in the channel's
`Topic`, and handed to every socket of it. A socket that wants deltas also joins the
instrument's delta channel, subscribed while some socket wants it; `resync` gives a
socket the newest snapshot again, at once, when it asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack, asynccontextmanager

from bridge import control
from bridge.bus import Bus, Wiring
from bridge.fanout import Fanout
from bridge.feed_state import Feed
from bridge.frames import Message
from bridge.metrics import Gauges, Stats
from bridge.tasks import spawn, stop
from bridge.topic import Sink, Topic
from bridge.verify import Rejected, verify_book
from marketdata.logs import Throttled
from marketdata.schema import Keys
from marketdata.settings import BridgeSettings

log = logging.getLogger(__name__)


class Hub:
    """Local sockets and the Redis channels they want; use as `async with Hub(settings, stats) as hub`.

    `wiring` goes to the Bus (tests pass a fake Redis and a fixed clock).
    """

    _fanout: Fanout  # made when the hub starts, on the running loop

    def __init__(self, settings: BridgeSettings, stats: Stats, wiring: Wiring | None = None) -> None:
        self.settings = settings
        self._stats = stats
        self._keys = Keys(settings.prefix, cluster=settings.redis_cluster)
        self._topics: dict[bytes, Topic] = {}
        self._interest: dict[Sink, set[bytes]] = {}  # every attached socket and the channels it wants
        self._names: dict[str, tuple[bytes, bytes, bytes]] = {}  # instrument -> its book, trades and delta channels
        self._bus = Bus(settings, stats, self, wiring)
        self._feed_msg = self._feed_message(self._bus.feed, 0.0)
        self._slow = Throttled(log, 1.0)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Hub:
        self._loop = asyncio.get_running_loop()
        self._fanout = Fanout(self._topics, self._stats, self._loop, self._bus)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self._bus)
            stack.push_async_callback(self._fanout.aclose)  # checks in flight stop before the bus closes
            watch = spawn(self._watch(), "bridge-hub-watch")
            stack.push_async_callback(stop, (watch,))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # -- sockets -----------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """A new local socket: it gets the feed state now and every change of it."""
        self._interest.setdefault(sink, set())
        sink.offer_feed(self._feed_msg)

    def detach(self, sink: Sink) -> None:
        """The socket is gone: drop its interests (and the subscriptions nobody else wants)."""
        for channel in list(self._interest.get(sink, ())):
            self._leave(sink, channel)
        self._interest.pop(sink, None)

    @asynccontextmanager
    async def session(self, sink: Sink) -> AsyncIterator[None]:
        """attach on entry, detach on exit, whatever happens in between."""
        self.attach(sink)
        try:
            yield
        finally:
            self.detach(sink)

    def want(self, sink: Sink, instrument: str, trades: bool = False, deltas: bool = False) -> None:
        """`sink` wants the books of `instrument` (and its trades when `trades`): the latest first, then live.

        With `deltas`, after that snapshot it gets deltas where they apply to what it holds,
        snapshots where they do not. The caller checked the id with `lookup`.
        """
        book, trade, delta = self._channels(instrument)
        self._join(sink, book, instrument, None)
        if trades:
            self._join(sink, trade, instrument, book)
        else:
            self._leave(sink, trade)
        if deltas:
            self._join(sink, delta, instrument, book, deltas=True)
        else:
            self._leave(sink, delta)

    def unwant(self, sink: Sink, instrument: str) -> None:
        for channel in self._channels(instrument):
            self._leave(sink, channel)

    def resync(self, sink: Sink, instrument: str) -> bool:
        """`sink` asks for a snapshot of `instrument` again: the newest forwarded goes at once. False if it has no such books."""
        book = self._channels(instrument)[0]
        topic = self._topics.get(book)
        if topic is None or sink not in topic.sinks:
            return False
        sink.resync(book, topic.latest)
        return True

    def _channels(self, instrument: str) -> tuple[bytes, bytes, bytes]:
        names = self._names.get(instrument)
        if names is None:
            keys = self._keys
            names = (keys.book(instrument).encode(), keys.trades(instrument).encode(), keys.deltas(instrument).encode())
            self._names[instrument] = names
        return names

    def _join(self, sink: Sink, channel: bytes, instrument: str, book_channel: bytes | None, deltas: bool = False) -> None:
        """`sink` joins `channel`: the book channel of `instrument`, or its trades (or deltas) when `book_channel` is given."""
        mine = self._interest.setdefault(sink, set())
        if channel in mine:
            return
        mine.add(channel)
        trades = book_channel is not None and not deltas
        topic = self._topics.get(channel)
        if topic is None:
            topic = self._topics[channel] = Topic(channel, trades, instrument, book_channel or b"", deltas)
            self._bus.changed()
        topic.sinks[sink] = None
        topic.fanout = tuple(topic.sinks)
        if deltas:
            pass  # what it holds comes from the books; the deltas follow it
        elif trades:
            if topic.primed:
                for msg in topic.recent:
                    sink.offer_trade(channel, msg)
        elif topic.latest is not None:
            sink.offer(channel, topic.latest)

    def _leave(self, sink: Sink, channel: bytes) -> None:
        mine = self._interest.get(sink)
        if mine is None or channel not in mine:
            return
        mine.discard(channel)
        sink.forget(channel)
        topic = self._topics.get(channel)
        if topic is None or sink not in topic.sinks:
            return
        del topic.sinks[sink]
        topic.fanout = tuple(topic.sinks)
        if not topic.sinks:
            del self._topics[channel]
            self._bus.changed()

    async def close_sockets(self, code: int, reason: str) -> None:
        """Close every local socket (shutdown: 1001)."""
        sinks = list(self._interest)
        if sinks:
            log.info("closing %d sockets (%d %s)", len(sinks), code, reason)
            await asyncio.gather(*(sink.close(code, reason) for sink in sinks))

    async def _watch(self) -> None:
        """Close sockets stuck in one send longer than settings.send_timeout: no per-message timers."""
        limit = self.settings.send_timeout
        interval = min(1.0, limit / 4)
        while True:
            await asyncio.sleep(interval)
            now = self._loop.time()
            for sink in list(self._interest):
                since = sink.stuck_since
                if since is not None and now - since > limit:
                    self._slow(logging.INFO, "closing a slow consumer: stuck %.1f s in one send", now - since)
                    sink.close_slow()

    # -- what the bus tells (bus.Listener) -----------------------------------------------

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        self._fanout.deliver_batch(batch)

    def deliver(self, channel: bytes, payload: bytes) -> None:
        self._fanout.deliver(channel, payload)

    def wanted(self) -> Collection[bytes]:
        return self._topics.keys()

    def unprimed(self) -> Collection[bytes]:
        return [c for c, topic in self._topics.items() if not topic.primed and not topic.deltas]

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        self._fanout.fetched_book(channel, payload)

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        self._fanout.fetched_trades(channel, history)

    def resubscribing(self, channels: Collection[bytes] | None = None) -> None:
        topics = self._topics
        for topic in topics.values() if channels is None else filter(None, map(topics.get, channels)):
            topic.primed = False

    def feed_changed(self, feed: Feed) -> None:
        self._feed_msg = msg = self._feed_message(feed, self._loop.time())
        for sink in list(self._interest):
            sink.offer_feed(msg)

    @staticmethod
    def _feed_message(feed: Feed, now: float) -> Message:
        return Message.of(control.feed(feed.live, feed.since, feed.reason), received=now)

    # -- what the routes ask -------------------------------------------------------

    async def lookup(self, instrument: str) -> None:
        """Return if `instrument` is listed; raise UnknownInstrument if not."""
        await self._bus.lookup(instrument)

    @property
    def instruments_json(self) -> bytes:
        return self._bus.instruments_json

    async def refresh_instruments(self) -> None:
        await self._bus.refresh_instruments()

    async def book(self, instrument: str) -> bytes | None:
        """The newest book of a listed instrument: from memory when subscribed, else one GET."""
        channel = self._channels(instrument)[0]
        topic = self._topics.get(channel)
        if topic is not None and topic.latest is not None:
            return topic.latest.payload
        raw = await self._bus.get(channel.decode())
        if raw is None:
            return None
        try:
            verify_book(raw, instrument, self._bus.instrument(instrument))
        except Rejected as exc:
            log.debug("not serving the book of %s: %s", instrument, exc)
            return None
        return raw

    @property
    def feed(self) -> Feed:
        return self._bus.feed

    @property
    def ready(self) -> tuple[bool, str]:
        """(True, "live") when Redis is reachable and the heartbeat fresh, else (False, why)."""
        feed = self._bus.feed
        return feed.live, feed.reason

    @property
    def sockets(self) -> int:
        return len(self._interest)

    @property
    def subscriptions(self) -> int:
        """Channels subscribed on Redis right now."""
        return self._bus.subscriptions

    def topic(self, channel: bytes) -> Topic | None:
        return self._topics.get(channel)

    def gauges(self) -> Gauges:
        return Gauges(len(self._interest), self._bus.subscriptions, self._bus.feed.live, self._bus.up)
