"""The hub: one Redis subscription per channel some local socket wants, fanned out to them.

Narrow interface: `attach`/`detach` a socket, `want`/`unwant` an instrument for
it, and `deliver` a payload that arrived on a channel. The hub owns the local
sockets and, through its `Bus` (bridge.bus), the Redis subscriptions: the first
socket that wants a channel makes the bus subscribe, the last one to leave makes
it unsubscribe, whatever the number of sockets in between.

Payloads are never decoded: `schema.peek_seq` reads the sequence number where the
encoder puts it, the bytes are framed once (`sockets.Message`) and every socket's
`Outbox` gets that one object. The hub keeps the newest book of every subscribed
instrument, so a new socket and /api/book need no round trip once it is warm.

Ordering: the bus subscribes, waits for Redis to confirm, then fetches the last
value. Live messages that raced ahead of the fetch are newer or older; an older
one (seq at or below what the hub holds) is dropped, and so is a stray old message
later. Only when RESET_AFTER live messages in a row go back does the hub take it
as a restarted sequence (a restarted simulator counts from 0 again): that message
is taken, marked `reset`, and sockets take it too, so a restart never freezes the
stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from bridge import protocol
from bridge.bus import Bus, Feed, report_crash, stop
from bridge.metrics import Gauges, Stats
from bridge.sockets import Message, text_frame
from marketdata.errors import MessageError
from marketdata.logs import Throttled
from marketdata.schema import MAX_MESSAGE_BYTES, TRADES_HISTORY, Keys, peek_seq
from marketdata.settings import BridgeSettings

log = logging.getLogger(__name__)

PROVISIONAL = 2.0  # seconds a fetched last value outranks older live messages still in flight
RESET_AFTER = 3  # consecutive live messages behind the newest one that mean the feed restarted its sequence


class Sink(Protocol):
    """What the hub needs of a local socket (bridge.sockets.Outbox is the real one)."""

    stuck_since: float | None

    def offer(self, key: bytes, msg: Message) -> None: ...
    def offer_trade(self, key: bytes, msg: Message) -> None: ...
    def offer_feed(self, msg: Message) -> None: ...
    def forget(self, key: bytes) -> None: ...
    def close_slow(self) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


@dataclass(slots=True, eq=False)
class Topic:
    """One Redis channel some local socket wants, and what the hub knows of it."""

    channel: bytes  # also the key of the sockets' slot for it
    trades: bool
    sinks: dict[Sink, None] = field(default_factory=dict)
    fanout: tuple[Sink, ...] = ()  # sinks, frozen for the hot loop
    latest: Message | None = None  # book channels: the newest snapshot
    provisional_until: float = 0.0  # loop time until which `latest` came from a fetch and may be ahead of live
    recent: deque[Message] = field(default_factory=lambda: deque(maxlen=TRADES_HISTORY))  # trades, oldest first
    early: deque[Message] = field(default_factory=lambda: deque(maxlen=TRADES_HISTORY))  # live trades before the fetch
    primed: bool = False  # last value (or trade history) fetched since the subscription began
    behind: int = 0  # consecutive live messages older than the newest; RESET_AFTER of them is a restart


class Hub:
    """Local sockets and the Redis channels they want; use as `async with Hub(settings, stats) as hub`.

    `redis`, `rng` and `clock` go to the Bus (tests pass a fake Redis and a fixed clock).
    """

    def __init__(
        self,
        settings: BridgeSettings,
        stats: Stats,
        *,
        redis: Redis | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._stats = stats
        self._keys = Keys(settings.prefix)
        self._topics: dict[bytes, Topic] = {}
        self._interest: dict[Sink, set[bytes]] = {}  # every attached socket and the channels it wants
        self._names: dict[str, tuple[bytes, bytes]] = {}
        self._bus = Bus(settings, stats, self, redis=redis, rng=rng, clock=clock)
        self._feed_msg = self._feed_message(self._bus.feed, 0.0)
        self._bad = Throttled(log)
        self._resets = Throttled(log)
        self._slow = Throttled(log, 1.0)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Hub:
        self._loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self._bus)
            watch = asyncio.create_task(self._watch(), name="bridge-hub-watch")
            watch.add_done_callback(report_crash)
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

    def want(self, sink: Sink, instrument: str, trades: bool = False) -> None:
        """`sink` wants the books of `instrument` (and its trades when `trades`): the latest first, then live.

        The caller checked the id with `lookup`.
        """
        book, trade = self._channels(instrument)
        self._join(sink, book, trades=False)
        if trades:
            self._join(sink, trade, trades=True)
        else:
            self._leave(sink, trade)

    def unwant(self, sink: Sink, instrument: str) -> None:
        book, trade = self._channels(instrument)
        self._leave(sink, book)
        self._leave(sink, trade)

    def _channels(self, instrument: str) -> tuple[bytes, bytes]:
        names = self._names.get(instrument)
        if names is None:
            names = self._names[instrument] = (self._keys.book(instrument).encode(), self._keys.trades(instrument).encode())
        return names

    def _join(self, sink: Sink, channel: bytes, trades: bool) -> None:
        mine = self._interest.setdefault(sink, set())
        if channel in mine:
            return
        mine.add(channel)
        topic = self._topics.get(channel)
        if topic is None:
            topic = self._topics[channel] = Topic(channel, trades)
            self._bus.changed()
        topic.sinks[sink] = None
        topic.fanout = tuple(topic.sinks)
        if trades:
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

    # -- the hot path: what the bus delivers ----------------------------------------

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Messages as the bus read them, oldest first; of several books of one channel only the newest goes on.

        Books are states: when the bridge falls behind, the older ones in a batch are
        already superseded, so they are counted (conflated) and skipped. Trades are
        events and all go on, in order.
        """
        if len(batch) == 1:
            self.deliver(*batch[0])
            return
        topics = self._topics
        newest: dict[bytes, int] = {}
        for i, (channel, _) in enumerate(batch):
            topic = topics.get(channel)
            if topic is not None and not topic.trades:
                newest[channel] = i
        stats = self._stats
        for i, (channel, payload) in enumerate(batch):
            if newest.get(channel, i) != i:
                stats.messages_in += 1
                stats.bus_conflated += 1
                continue
            self.deliver(channel, payload)

    def deliver(self, channel: bytes, payload: bytes) -> None:
        """A payload arrived on `channel`: check it, keep it, hand it to every socket that wants it."""
        self._stats.messages_in += 1
        topic = self._topics.get(channel)
        if topic is None:
            return  # in flight when the last socket left
        if topic.trades:
            self._on_trade(topic, payload)
        else:
            self._on_book(topic, payload, fetched=False)

    def _seq(self, channel: bytes, payload: bytes) -> int | None:
        """The payload's seq, or None (counted, logged) when it is not a message we can forward."""
        try:
            if len(payload) > MAX_MESSAGE_BYTES:
                raise MessageError(f"{len(payload)} bytes, more than {MAX_MESSAGE_BYTES}")
            seq = peek_seq(payload)
            if not payload.endswith(b"}"):
                raise MessageError("truncated (no closing brace)")
            if not payload.isascii():
                payload.decode()  # a text frame must be UTF-8
            return seq
        except (MessageError, UnicodeDecodeError, TypeError, AttributeError) as exc:
            self._stats.bad_messages += 1
            self._bad(logging.WARNING, "dropped a bad message on %s: %s", channel.decode(errors="replace"), exc)
            return None

    def _on_book(self, topic: Topic, payload: bytes, fetched: bool) -> None:
        seq = self._seq(topic.channel, payload)
        if seq is None:
            return
        now = self._loop.time()
        latest = topic.latest
        reset = False
        if latest is not None and seq <= latest.seq:
            if not self._restarted(topic, seq, latest.seq, fetched or now < topic.provisional_until):
                return
            reset = True
        topic.behind = 0
        msg = Message(seq, payload, text_frame(payload), now, reset)
        topic.latest = msg
        topic.provisional_until = now + PROVISIONAL if fetched else 0.0
        self._fan_out(topic, msg, trade=False)

    def _on_trade(self, topic: Topic, payload: bytes) -> None:
        seq = self._seq(topic.channel, payload)
        if seq is None:
            return
        msg = Message(seq, payload, text_frame(payload), self._loop.time())
        if not topic.primed:
            topic.early.append(msg)  # merged with the history once it is fetched
            return
        recent = topic.recent
        if recent and seq <= recent[-1].seq:
            if not self._restarted(topic, seq, recent[-1].seq, False):
                return
            msg.reset = True
        topic.behind = 0
        recent.append(msg)
        self._fan_out(topic, msg, trade=True)

    def _restarted(self, topic: Topic, seq: int, newest: int, racing: bool) -> bool:
        """A message at or below the newest seq: dropped (False), or the RESET_AFTER-th in a row (True)."""
        if racing or seq == newest:
            self._stats.stale += 1
            return False
        topic.behind += 1
        if topic.behind < RESET_AFTER:
            self._stats.stale += 1
            return False
        self._resets(logging.WARNING, "%s: sequence went back from %d to %d; taking it as a restarted feed", topic.channel.decode(), newest, seq)
        return True

    def _fan_out(self, topic: Topic, msg: Message, trade: bool) -> None:
        fanout = topic.fanout
        if not fanout:
            return
        key = topic.channel
        if trade:
            for sink in fanout:
                try:
                    sink.offer_trade(key, msg)
                except Exception:  # a bug in one socket must not starve the others
                    self._broken(sink, key)
        else:
            for sink in fanout:
                try:
                    sink.offer(key, msg)
                except Exception:
                    self._broken(sink, key)
        # The last socket of a fan-out waited this long; sockets that were not ready record their own wait.
        self._stats.latency.observe(self._loop.time() - msg.received)

    def _broken(self, sink: Sink, key: bytes) -> None:
        log.exception("a socket failed to take a message on %s; closing it", key.decode())
        sink.close_slow()

    # -- the rest of what the bus tells (bus.Listener) -----------------------------------

    def wanted(self) -> Collection[bytes]:
        return self._topics.keys()

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        topic = self._topics.get(channel)
        if topic is None:
            return
        if payload is not None:
            self._on_book(topic, payload, fetched=True)
        topic.primed = True

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        """Recent trades, oldest first, then the live ones that came meanwhile, without repeats."""
        topic = self._topics.get(channel)
        if topic is None:
            return
        now = self._loop.time()
        last = topic.recent[-1].seq if topic.recent else -1
        fresh: list[Message] = []
        for payload in reversed(history):
            seq = self._seq(channel, payload)
            if seq is not None and seq > last:
                fresh.append(Message(seq, payload, text_frame(payload), now))
                last = seq
        for msg in topic.early:
            if msg.seq > last:
                fresh.append(msg)
                last = msg.seq
        topic.early.clear()
        topic.recent.extend(fresh)
        topic.primed = True
        for msg in fresh:
            self._fan_out(topic, msg, trade=True)

    def resubscribing(self) -> None:
        for topic in self._topics.values():
            topic.primed = False

    def feed_changed(self, feed: Feed) -> None:
        self._feed_msg = msg = self._feed_message(feed, self._loop.time())
        for sink in list(self._interest):
            sink.offer_feed(msg)

    @staticmethod
    def _feed_message(feed: Feed, now: float) -> Message:
        return Message.of(protocol.feed(feed.live, feed.since, feed.reason), received=now)

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
        if raw is None or self._seq(channel, raw) is None:
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

