"""The hot path: a payload from Redis verified, ordered, kept, and handed to every socket that wants it.

Once per message, never per socket, a book must prove itself (bridge.verify: it decodes,
names its channel's instrument, its checksum matches its own levels) and move forward in
its instrument's order, (epoch, seq). One that does not is dropped, counted by reason in
bridge_books_rejected_total and logged at most once a second. What goes on is the bytes
as published, framed once (bridge.frames.Message) and shared by every socket's slot.

The order of one instrument:

- Same epoch as the one adopted: a book goes on only if its seq is higher than the last
  one forwarded; otherwise it is dropped and counted `stale`. A book further ahead than
  the feed could have gone since the last one (JUMP_FLOOR seqs plus JUMP_PACE a second)
  is checked against Redis first, as a new epoch is: a checksum covers the levels, not
  the seq, so a real book re-sent with a huge seq would pass every other check and hold
  back every real book after it.
- Another epoch, larger or smaller (epochs are never compared by size: a forged huge one
  gains nothing, a clock stepped back still works): a reset, adopted only if the book
  verifies and the instrument's last-value key (`md:book:{instrument}`) holds a book of
  that epoch. The ingestor SETs the key and PUBLISHes in one script, so a real new epoch
  is in the key before anyone reads it on the channel; a PUBLISH-only forgery and a late
  message of the old run are not. One GET, at most one in flight per instrument: while
  it is, newer books of the candidate are held (latest only) and judged when it answers,
  books of a third epoch are dropped (`order`), and an epoch the key did not hold is
  refused for REFUSE_FOR seconds without asking again. The key's book goes on marked
  `reset`, so sockets (and browsers, which see the epoch) replace what they had instead
  of comparing seqs across epochs.
- Trades follow the epoch adopted for the instrument's books: a trade of another epoch
  is dropped (`stale`), and within it seq only moves forward.

The last value fetched when a channel is subscribed (bridge.subscriptions) is a read of
the key itself: with no epoch adopted yet, its epoch is adopted at once, and live books
that came before it wait for it. A verified live book also tells the feed state that
data flows (bridge.feed_state), so sockets hear "live" at once, not at the next poll.

Deltas (for the sockets that asked): the ingestor publishes each just before its
snapshot. One goes on only if it starts at the book forwarded last and, applied to its
levels, gives its checksum (bridge.verify), into the slot of the instrument's books,
taken only on top of exactly the book a socket holds (bridge.latest_slot). Any other is
dropped and the snapshot right behind it serves instead; a bus read that conflates a
channel's books skips the deltas before its newest book too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from bridge.bus import REDIS_ERRORS
from bridge.frames import Message, text_frame
from bridge.metrics import Stats
from bridge.tasks import spawn, stop
from bridge.topic import Sink, Topic
from bridge.verify import MALFORMED, ORDER, Rejected, checked_book, verify_delta, verify_trade
from marketdata.instruments import Instrument
from marketdata.logs import Throttled

log = logging.getLogger(__name__)

JUMP_FLOOR = 1_000  # seqs a book may run ahead of the last one forwarded without a check against Redis
JUMP_PACE = 100_000  # more seqs allowed per second since that book: far above any feed's events/s per instrument
REFUSE_FOR = 1.0  # seconds an epoch the key did not hold is refused without another check


class Upstream(Protocol):
    """What the fanout asks of the bus (bridge.bus.Bus)."""

    def instrument(self, instrument_id: str) -> Instrument | None:
        """The listed instrument of that id, None if it is not listed."""

    async def last_value(self, channel: bytes) -> bytes | None:
        """The last-value key of a book channel (one GET; raises Redis's errors)."""

    def books_flowing(self) -> None:
        """Verified live books are arriving now."""


class Fanout:
    """Delivery into the hub's `topics` (shared with the hub, which adds and drops them) and out to their sinks."""

    def __init__(self, topics: dict[bytes, Topic], stats: Stats, loop: asyncio.AbstractEventLoop, upstream: Upstream) -> None:
        self._topics = topics
        self._stats = stats
        self._loop = loop
        self._upstream = upstream
        self._checks: set[asyncio.Task[None]] = set()
        self._bad = Throttled(log, 1.0)
        self._rejected = Throttled(log, 1.0)
        self._adopted = Throttled(log, 1.0)
        self.deltas_forwarded = 0  # deltas that went on to their sockets
        self.deltas_unchained = 0  # deltas not starting at the book forwarded last: their snapshot serves instead

    async def aclose(self) -> None:
        """Stop the checks in flight."""
        await stop(self._checks)

    # -- what arrives on the channels ------------------------------------------------

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Messages as the bus read them, oldest first; of several books of one channel only the newest goes on.

        Books are states: when the bridge falls behind, the older ones in a batch are
        already superseded, so they are counted (conflated) and skipped, unless the
        newer ones are dropped (deltas before the newest go with them). Trades all go on, in order.
        """
        if len(batch) == 1:
            self.deliver(*batch[0])
            return
        topics = self._topics
        newest: dict[bytes, int] = {}
        books: dict[bytes, list[bytes]] = {}
        deltas: dict[int, bytes] = {}  # position of a delta -> its book channel
        for i, (channel, payload) in enumerate(batch):
            topic = topics.get(channel)
            if topic is not None and topic.deltas:
                deltas[i] = topic.book_channel
            elif topic is not None and not topic.trades:
                newest[channel] = i
                books.setdefault(channel, []).append(payload)
        for i, (channel, payload) in enumerate(batch):
            last = newest.get(channel)
            if last is None:
                book_channel = deltas.get(i)
                if book_channel is not None and i < newest.get(book_channel, -1) and len(books[book_channel]) > 1:
                    self._stats.messages_in += 1
                    self._stats.bus_conflated += 1  # the newest book of the read goes to the delta sockets instead
                    continue
                self.deliver(channel, payload)
            elif last == i:
                self._newest_book(topics[channel], books[channel])

    def _newest_book(self, topic: Topic, payloads: list[bytes]) -> None:
        """Books of one channel read at once, oldest first: the newest that goes on supersedes the others."""
        stats = self._stats
        stats.messages_in += len(payloads)
        for k in range(len(payloads) - 1, -1, -1):
            if self._on_book(topic, payloads[k]):
                stats.bus_conflated += k
                return

    def deliver(self, channel: bytes, payload: bytes) -> None:
        """A payload arrived on `channel`: check it, keep it, hand it to every socket that wants it."""
        self._stats.messages_in += 1
        topic = self._topics.get(channel)
        if topic is None:
            return  # in flight when the last socket left
        if topic.trades:
            self._on_trade(topic, payload)
        elif topic.deltas:
            self._on_delta(topic, payload)
        else:
            self._on_book(topic, payload)

    # -- books ---------------------------------------------------------------------------

    def _on_book(self, topic: Topic, payload: bytes) -> bool:
        """True when the book went on or waits for a check (it supersedes older ones)."""
        msg = self._verified(topic, payload)
        return msg is not None and self._order(topic, msg)

    def _verified(self, topic: Topic, payload: bytes) -> Message | None:
        """The book as a Message if it proves itself; else None, counted and logged."""
        try:
            book = checked_book(payload, topic.instrument, self._upstream.instrument(topic.instrument))
        except Rejected as exc:
            self._reject(topic, exc.reason, exc.detail)
            return None
        return Message(book.seq, payload, text_frame(payload), self._loop.time(), False, book.epoch, book=book)

    def _reject(self, topic: Topic, reason: str, detail: str) -> None:
        self._stats.books_rejected[reason] += 1
        if reason == MALFORMED:
            self._stats.bad_messages += 1
        self._rejected(logging.WARNING, "dropped a book on %s (%s): %s", topic.channel.decode(), reason, detail)

    def _order(self, topic: Topic, msg: Message, from_key: bool = False) -> bool:
        """Forward `msg` if it moves its instrument's order forward; hold it for a check if that needs Redis."""
        if msg.epoch == topic.epoch:
            latest = topic.latest
            if latest is not None:
                if msg.seq <= latest.seq:
                    self._stats.stale += 1
                    return False
                allowed = JUMP_FLOOR + JUMP_PACE * max(0.0, msg.received - latest.received)
                if not from_key and msg.seq - latest.seq > allowed:
                    return self._suspect(topic, msg)
            self._take(topic, msg, live=not from_key)
            return True
        if from_key and topic.epoch is None:
            self._adopt(topic, msg, live=False)  # the first read of the key is the check
            return True
        return self._suspect(topic, msg)

    def _suspect(self, topic: Topic, msg: Message) -> bool:
        """A book that needs the key's word (another epoch, or a jump): held, latest only, while one check runs."""
        held = topic.candidate
        if held is not None:
            if held.epoch != msg.epoch:
                self._reject(topic, ORDER, f"epoch {msg.epoch} while epoch {held.epoch} is being checked")
                return False
            if msg.seq <= held.seq:
                self._stats.stale += 1
                return False
            topic.candidate = msg
            self._stats.bus_conflated += 1  # the one held before it
            return True
        if msg.epoch == topic.refused and self._loop.time() < topic.refused_until:
            self._reject(topic, ORDER, f"epoch {msg.epoch}, which the last-value key did not hold")
            return False
        topic.candidate = msg
        if topic.primed or topic.epoch is not None:  # else the fetch of the last value, under way, decides
            topic.checking = True
            task = spawn(self._check(topic), f"bridge-check-{topic.instrument}")
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
        return True

    async def _check(self, topic: Topic) -> None:
        """One GET of the instrument's last-value key, then the verdict on the book held meanwhile."""
        try:
            value = await self._upstream.last_value(topic.channel)
        except REDIS_ERRORS as exc:
            topic.checking = False
            held, topic.candidate = topic.candidate, None
            if held is not None:  # unconfirmed, not refused: the next book of its epoch asks again
                self._reject(topic, ORDER, f"epoch {held.epoch} seq {held.seq} not confirmed: {exc}")
            return
        topic.checking = False
        held, topic.candidate = topic.candidate, None
        if held is None or self._topics.get(topic.channel) is not topic:
            return
        key = self._verified(topic, value) if value is not None else None
        if key is None or key.epoch != held.epoch:
            if held.epoch != topic.epoch:
                topic.refused, topic.refused_until = held.epoch, self._loop.time() + REFUSE_FOR
            found = "no book" if key is None else f"epoch {key.epoch}"
            self._reject(topic, ORDER, f"epoch {held.epoch} seq {held.seq} not confirmed: the last-value key holds {found}")
            return
        if key.epoch != topic.epoch:
            self._adopt(topic, key, live=True)
        elif topic.latest is None or key.seq > topic.latest.seq:
            self._take(topic, key, live=True)
        if held.seq > key.seq + JUMP_FLOOR:
            self._reject(topic, ORDER, f"seq {held.seq} is ahead of the last-value key's {key.seq}")
        elif held.seq > key.seq:
            self._order(topic, held)  # published after the GET: an ordinary book of the epoch now adopted

    def _adopt(self, topic: Topic, msg: Message, live: bool) -> None:
        """Take `msg` as the first book of a new epoch: a reset for everyone who had the old one."""
        old = topic.epoch
        topic.epoch = msg.epoch
        topic.latest = None
        topic.refused = None
        if old is not None:
            msg.reset = True
            self._adopted(logging.INFO, "%s: epoch %d adopted (was %d), confirmed by the last-value key", topic.instrument, msg.epoch, old)
        self._take(topic, msg, live)

    def _take(self, topic: Topic, msg: Message, live: bool) -> None:
        topic.latest = msg
        topic.book, msg.book = msg.book, None
        if live:
            self._upstream.books_flowing()
        self._fan_out(topic, msg, trade=False)

    # -- deltas --------------------------------------------------------------------------

    def _on_delta(self, topic: Topic, payload: bytes) -> None:
        """A delta: on to the delta sockets if it proves itself on top of the book forwarded last."""
        books = self._topics.get(topic.book_channel)
        if books is None or books.latest is None or not topic.fanout:
            return
        try:
            d = verify_delta(payload, topic.instrument, self._upstream.instrument(topic.instrument), books.book)
        except Rejected as exc:
            self._reject(topic, exc.reason, exc.detail)
            return
        if d is None:
            self.deltas_unchained += 1
            return
        self.deltas_forwarded += 1
        msg = Message(d.seq, payload, text_frame(payload), self._loop.time(), False, d.epoch, prev_seq=d.prev_seq,
                      cap=len(books.latest.payload))
        self._fan_out(topic, msg, trade=False)

    # -- trades --------------------------------------------------------------------------

    def _on_trade(self, topic: Topic, payload: bytes) -> None:
        msg = self._trade(topic, payload)
        if msg is None:
            return
        if not topic.primed:
            topic.early.append(msg)  # merged with the history once it is fetched
            return
        if not self._next_trade(topic, msg, topic.recent[-1] if topic.recent else None):
            self._stats.stale += 1
            return
        topic.recent.append(msg)
        self._fan_out(topic, msg, trade=True)

    def _trade(self, topic: Topic, payload: bytes) -> Message | None:
        try:
            epoch, seq = verify_trade(payload, topic.instrument)
        except Rejected as exc:
            self._stats.bad_messages += 1
            self._bad(logging.WARNING, "dropped a bad message on %s: %s", topic.channel.decode(), exc)
            return None
        return Message(seq, payload, text_frame(payload), self._loop.time(), False, epoch)

    def _next_trade(self, topic: Topic, msg: Message, last: Message | None) -> bool:
        """Whether trade `msg` goes on after `last`: of the epoch adopted for the instrument's books, and newer.

        The first trade of a newly adopted epoch is marked `reset`.
        """
        books = self._topics.get(topic.book_channel)
        if books is None or msg.epoch != books.epoch:
            return False
        if last is None or last.epoch != msg.epoch:
            msg.reset = last is not None
            return True
        return msg.seq > last.seq

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
        elif topic.deltas:
            key = topic.book_channel  # a delta goes where it applies: the slot of the instrument's books
            for sink in fanout:
                try:
                    sink.offer_delta(key, msg)
                except Exception:
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
        """The last value read after the channel was subscribed (None: no key); live books held for it go after."""
        topic = self._topics.get(channel)
        if topic is None:
            return
        held = None
        if topic.candidate is not None and not topic.checking:
            held, topic.candidate = topic.candidate, None
        if payload is not None:
            msg = self._verified(topic, payload)
            if msg is not None:
                self._order(topic, msg, from_key=True)
        topic.primed = True
        if held is not None:
            self._order(topic, held)

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        """Recent trades, oldest first, then the live ones that came meanwhile, without repeats.

        `history` is the whole list the ingestor keeps: its length is the ingestor's
        --trades-history once the list is full, and the topic keeps as many from now on.
        Only trades of the epoch adopted for the instrument's books are kept.
        """
        topic = self._topics.get(channel)
        if topic is None:
            return
        last = topic.recent[-1] if topic.recent else None
        fresh: list[Message] = []
        for payload in reversed(history):
            msg = self._trade(topic, payload)
            if msg is not None and self._next_trade(topic, msg, last):
                fresh.append(msg)
                last = msg
        for msg in topic.early:
            if self._next_trade(topic, msg, last):
                fresh.append(msg)
                last = msg
        topic.early.clear()
        topic.keep_recent(len(history))
        topic.recent.extend(fresh)
        topic.primed = True
        for msg in fresh:
            self._fan_out(topic, msg, trade=True)
