"""The hot path: a payload from Redis checked, ordered, kept, and handed to every socket that wants it.

Payloads are never decoded: `schema.peek_seq` reads the sequence number where the
encoder puts it, the bytes are framed once (bridge.frames.Message) and every
socket's slot gets that one object.

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

from bridge.frames import Message, text_frame
from bridge.metrics import Stats
from bridge.topic import Sink, Topic
from marketdata.errors import MessageError
from marketdata.logs import Throttled
from marketdata.schema import MAX_MESSAGE_BYTES, peek_seq

log = logging.getLogger(__name__)

PROVISIONAL = 2.0  # seconds a fetched last value outranks older live messages still in flight
RESET_AFTER = 3  # consecutive live messages behind the newest one that mean the feed restarted its sequence


class Fanout:
    """Delivery into the hub's `topics` (shared with the hub, which adds and drops them) and out to their sinks."""

    def __init__(self, topics: dict[bytes, Topic], stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self._topics = topics
        self._stats = stats
        self._loop = loop
        self._bad = Throttled(log)
        self._resets = Throttled(log)

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

    def check(self, channel: bytes, payload: bytes) -> int | None:
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
        seq = self.check(topic.channel, payload)
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
        seq = self.check(topic.channel, payload)
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

    # -- last values fetched by the bus ----------------------------------------------

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        topic = self._topics.get(channel)
        if topic is None:
            return
        if payload is not None:
            self._on_book(topic, payload, fetched=True)
        topic.primed = True

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        """Recent trades, oldest first, then the live ones that came meanwhile, without repeats.

        `history` is the whole list the ingestor keeps: its length is the ingestor's
        --trades-history once the list is full, and the topic keeps as many from now on.
        """
        topic = self._topics.get(channel)
        if topic is None:
            return
        now = self._loop.time()
        last = topic.recent[-1].seq if topic.recent else -1
        fresh: list[Message] = []
        for payload in reversed(history):
            seq = self.check(channel, payload)
            if seq is not None and seq > last:
                fresh.append(Message(seq, payload, text_frame(payload), now))
                last = seq
        for msg in topic.early:
            if msg.seq > last:
                fresh.append(msg)
                last = msg.seq
        topic.early.clear()
        topic.keep_recent(len(history))
        topic.recent.extend(fresh)
        topic.primed = True
        for msg in fresh:
            self._fan_out(topic, msg, trade=True)
