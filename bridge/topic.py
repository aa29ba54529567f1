"""One Redis channel some local sockets want, and what the hub knows of it; and what a socket is to the hub.

A book channel's topic keeps the newest snapshot, so a new socket gets it with no
round trip to Redis. A trades channel's topic keeps the recent trades, as many as
the ingestor's list held when the bridge read it (its --trades-history).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from bridge.frames import Message

MIN_REPLAY = 50  # recent trades a topic keeps at least: the ingestor's list may still be filling when read


class Sink(Protocol):
    """What the hub needs of a local socket (bridge.latest_slot.LatestSlot is the real one)."""

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
    recent: deque[Message] = field(default_factory=lambda: deque(maxlen=MIN_REPLAY))  # trades, oldest first
    early: deque[Message] = field(default_factory=lambda: deque(maxlen=MIN_REPLAY))  # live trades before the fetch
    primed: bool = False  # last value (or trade history) fetched since the subscription began
    behind: int = 0  # consecutive live messages older than the newest; RESET_AFTER of them is a restart

    def keep_recent(self, count: int) -> None:
        """Keep the `count` newest trades from now on (at least MIN_REPLAY)."""
        count = max(count, MIN_REPLAY)
        if self.recent.maxlen != count:
            self.recent = deque(self.recent, maxlen=count)
