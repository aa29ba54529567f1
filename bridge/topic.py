"""One Redis channel some local sockets want, and what the hub knows of it; and what a socket is to the hub.

A book channel's topic keeps the newest snapshot, so a new socket gets it with no
round trip to Redis, its levels (the base the next delta applies to), and the place in
the order it has reached: the epoch adopted and, while one is checked against Redis,
the newest book waiting for that check (bridge.fanout says when). A trades channel's
topic keeps the recent trades, as many as the ingestor's list held when the bridge read
it (its --trades-history), and follows the epoch of its instrument's book topic. A
delta channel's topic holds only its sockets: deltas go into the slot of the
instrument's books (`book_channel`), which is where they apply.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from bridge.frames import Message
from bridge.verify import Book

MIN_REPLAY = 50  # recent trades a topic keeps at least: the ingestor's list may still be filling when read


class Sink(Protocol):
    """What the hub needs of a local socket (bridge.latest_slot.LatestSlot is the real one)."""

    stuck_since: float | None

    def offer(self, key: bytes, msg: Message) -> None: ...
    def offer_delta(self, key: bytes, msg: Message) -> None: ...
    def resync(self, key: bytes, latest: Message | None) -> None: ...
    def offer_trade(self, key: bytes, msg: Message) -> None: ...
    def offer_feed(self, msg: Message) -> None: ...
    def forget(self, key: bytes) -> None: ...
    def close_slow(self) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


@dataclass(slots=True, eq=False)
class Topic:
    """One Redis channel some local socket wants, and what the hub knows of it."""

    channel: bytes  # also the key of the sockets' slot for it (a delta channel: book_channel is)
    trades: bool
    instrument: str = ""  # the id every message on the channel must name
    book_channel: bytes = b""  # trades and delta channels: the channel of the instrument's books, whose epoch they follow
    deltas: bool = False  # a delta channel
    sinks: dict[Sink, None] = field(default_factory=dict)
    fanout: tuple[Sink, ...] = ()  # sinks, frozen for the hot loop
    latest: Message | None = None  # book channels: the newest snapshot forwarded
    book: Book | None = None  # book channels: the levels of `latest`, the base of the next delta
    epoch: int | None = None  # book channels: the epoch adopted (None: none yet)
    candidate: Message | None = None  # book channels: the newest book waiting to be checked against Redis
    checking: bool = False  # a check of `candidate` is in flight (at most one per instrument)
    refused: int | None = None  # an epoch whose check failed, not checked again before `refused_until` (loop time)
    refused_until: float = 0.0
    recent: deque[Message] = field(default_factory=lambda: deque(maxlen=MIN_REPLAY))  # trades, oldest first
    early: deque[Message] = field(default_factory=lambda: deque(maxlen=MIN_REPLAY))  # live trades before the fetch
    primed: bool = False  # last value (or trade history) fetched since the subscription began

    def keep_recent(self, count: int) -> None:
        """Keep the `count` newest trades from now on (at least MIN_REPLAY)."""
        count = max(count, MIN_REPLAY)
        if self.recent.maxlen != count:
            self.recent = deque(self.recent, maxlen=count)
